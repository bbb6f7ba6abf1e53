"""Stand-ins for the job's stages, for the unit tests of the pipeline's own logic (markers,
resume, the report). tests/integration and tests/e2e run the real stages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2v import image_import, preflight, stages
from p2v.errors import StreamError
from p2v.job import ALL_STAGES
from p2v.jobplan import JobPlan, PlannedDisk
from p2v.model import Inventory
from p2v.target.request import RegisterResult

# What register returns (its register.json, as read back): a real RegisterResult's JSON.
_DOMAIN = json.loads(json.dumps(RegisterResult(
    name="web01", uuid="6f1c1c52-3f0e-4c1e-9d2b-0b7f2d3e4a51", output="libvirt",
    domain_type="kvm", firmware="bios", disk_bus="virtio", nic_model="virtio",
    disks=("/var/lib/p2v/jobs/web01/web01-sda.qcow2",),
    nics=({"mac": "52:54:00:00:00:01", "network": "default", "source_nic": "eth0"},),
    uri="qemu:///system").to_dict()))


class FakeStages:
    """Stands in for the stages: records which ran; `fail` names one to break once.

    Each fake returns (and each fake loader reloads) a value of the stage's own type, so the
    pipeline's hand-over between stages and its report are the real ones.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: str | None = None) -> None:
        self.ran: list[str] = []
        self.fail = fail
        for stage in ALL_STAGES:
            module, attr = stage_function(stage)
            monkeypatch.setattr(module, attr, self._make(stage))
            loader_module = image_import if stage == "import" else stages
            monkeypatch.setattr(loader_module, LOADERS[stage],
                                lambda wd, s=stage: fake_value(s))

    def _make(self, stage: str) -> Any:
        def run(*args: Any) -> Any:
            self.ran.append(stage)
            if stage == self.fail:
                self.fail = None
                raise StreamError(host="web01", device="/dev/sda", detail="connection reset")
            return fake_value(stage)
        return run


LOADERS = {"import": "load", "inspect": "load_inventory", "preflight": "load_plan",
           "copy": "load_disks", "sync": "load_sync", "fix": "load_caps", "verify": "load_verdict",
           "register": "load_domain"}


def stage_function(stage: str) -> tuple[Any, str]:
    """Where the pipeline finds the stage's function (module, attribute)."""
    if stage == "import":
        return image_import, "run"
    return (preflight, "run") if stage == "preflight" else (stages, stage)


def fake_value(stage: str) -> Any:
    if stage == "import":
        return fake_value("inspect"), fake_value("preflight"), fake_value("copy")
    return {"inspect": Inventory(hostname="web01"),
            "preflight": JobPlan(disks=(PlannedDisk("/dev/sda", "sda", True, 1 << 30, None),),
                                 pins=(), firmware="bios", disk_choice="copying sda",
                                 not_carried_over=()),
            "copy": (), "sync": {"downtime_s": None}, "fix": None, "verify": None,
            "register": dict(_DOMAIN)}[stage]
