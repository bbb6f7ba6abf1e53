"""The JSON Schemas in p2v/schemas (docs/user/schemas.md): valid schemas, in step with the code,
and true to the documents the real code paths build. The integration and e2e tests check
the documents of real runs the same way (tests/schema_check.py)."""

from __future__ import annotations

import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from schema_check import assert_valid, problems

from p2v import schemas
from p2v.batch import manifest as manifest_module
from p2v.errors import StreamError
from p2v.fix.linux.fixer import caps_document as linux_caps
from p2v.fix.linux.inspect import GuestReport, KernelInfo
from p2v.fix.linux.network import NicPin
from p2v.fix.windows.fixer import caps_document as windows_caps
from p2v.fix.windows.inspect import WindowsReport
from p2v.fix.windows.plan import WindowsPlan
from p2v.job import ALL_STAGES, CUTOVER_STAGES, JobSpec
from p2v.model import DiskBus, Firmware, GuestCaps, NicModel
from p2v.report import DiskReport, JobValues, StageTime, build_report
from p2v.source.inventory import build_inventory
from p2v.target.request import RegisterResult
from p2v.transfer.copy import MAX_PARALLEL
from p2v.verify.boot import BootVerdict
from p2v.verify.console import FAILURES, Interface

REPO = Path(__file__).parents[2]
BAD_MANIFESTS = REPO / "tests" / "unit" / "bad_manifests"
RECORDED = REPO / "tests" / "unit" / "source" / "data"
# Bad manifests whose problem lies beyond structure: p2v finds it (files, the source's
# parse, uniqueness across servers), the schema cannot.
BEYOND_THE_SCHEMA = {
    "13-duplicate-name", "14-source-not-ssh", "15-source-with-password",
    "16-source-port-out-of-range", "17-duplicate-source", "28-identity-missing",
    "29-known-hosts-missing", "36-ssh-config-missing",
}


# ------------------------------------------------------------------ the schemas themselves
@pytest.mark.parametrize("name", schemas.NAMES)
def test_each_schema_is_a_valid_2020_12_schema(name: str) -> None:
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")


def test_every_schema_file_is_shipped_as_package_data() -> None:
    shipped = sorted(p.name for p in (REPO / "p2v" / "schemas").glob("*.json"))
    assert shipped == sorted(schemas.filename(n) for n in schemas.NAMES)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["package-data"]["p2v.schemas"] == ["*.schema.json"]
    assert any(d.startswith("jsonschema") for d in project["project"]["optional-dependencies"]
               ["dev"])
    with pytest.raises(KeyError, match="one of events"):
        schemas.load("nonsense")


def _emitted_event_names() -> set[str]:
    """Every `{"event": "NAME"` p2v's code builds (consumers compare, they do not build)."""
    found: set[str] = set()
    for path in (REPO / "p2v").rglob("*.py"):
        found |= set(re.findall(r'\{"event": "([a-z-]+)"', path.read_text()))
    return found


def test_every_event_p2v_builds_has_its_schema_and_no_schema_is_for_none() -> None:
    events = schemas.load("events")
    names = set(events["properties"]["event"]["enum"])
    assert names == _emitted_event_names()
    assert names <= set(events["$defs"])
    assert [r["$ref"] for r in events["oneOf"]] == [f"#/$defs/{n}" for n in
                                                    events["properties"]["event"]["enum"]]


def test_stage_names_are_the_jobs() -> None:
    assert schemas.load("events")["$defs"]["stage"]["enum"] == list(ALL_STAGES)
    assert schemas.load("report")["$defs"]["stage"]["enum"] == list(ALL_STAGES)


def test_caps_and_domain_values_are_the_models() -> None:
    caps = schemas.load("caps")["properties"]
    assert caps["disk_bus"]["enum"] == list(typing.get_args(DiskBus))
    assert caps["nic_model"]["enum"] == list(typing.get_args(NicModel))
    assert caps["firmware"]["enum"] == list(typing.get_args(Firmware))
    verdict = schemas.load("report")["$defs"]["verdict"]["properties"]
    assert set(verdict["reason"]["enum"]) == {None, "timeout", "qemu-exited",
                                              *(reason for reason, _ in FAILURES)}


def test_manifest_keys_are_the_ones_p2v_takes() -> None:
    schema = schemas.load("manifest")
    m = manifest_module
    assert set(schema["properties"]) == set(m._TOP_KEYS)
    assert set(schema["properties"]["server"]["items"]["properties"]) == set(m._SERVER_FIELDS)
    assert set(schema["properties"]["defaults"]["properties"]) == (
        set(m._DEFAULT_FIELDS) | set(m._BATCH_KEYS))
    assert set(schema["properties"]["hosts"]["additionalProperties"]["properties"]) == set(
        m._HOST_KEYS)
    assert schema["$defs"]["parallel"]["maximum"] == MAX_PARALLEL
    assert schema["properties"]["server"]["items"]["properties"]["name"]["pattern"] == (
        "^" + m.NAME_RE.pattern + "$")


# ------------------------------------------------------------------ the manifest
def _doc_manifests() -> list[tuple[str, str]]:
    """The manifests the docs show in full (a block with [[server]])."""
    found = []
    for doc in ("batch.md", "fleet.md"):
        text = (REPO / "docs" / "user" / doc).read_text()
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", text, re.S)):
            if "[[server]]" in block:
                found.append((f"{doc}#{i}", block))
    return found


@pytest.mark.parametrize("where,text", _doc_manifests(), ids=lambda v: str(v)[:20])
def test_the_docs_manifests_are_valid(where: str, text: str) -> None:
    assert_valid(tomllib.loads(text), "manifest")


def test_a_manifest_p2v_takes_with_every_key_is_valid(tmp_path: Path) -> None:
    for name in ("id_ed25519", "known_hosts", "ssh_config"):
        (tmp_path / name).write_text("")
    (tmp_path / "fleet.toml").write_text("""
output_dir = "jobs"
jobs = 3
[defaults]
connect = "qemu:///system"
identity = "id_ed25519"
known_hosts = "known_hosts"
accept_new_host_key = true
ssh_config = "ssh_config"
networks = ["default"]
verify = true
verify_timeout = 120.5
start = false
new_macs = true
full = false
compress = true
parallel = 4
bandwidth_limit = "50MiB/s"
[hosts.conv1]
output_dir = "/data/p2v"
[hosts."10.0.0.6"]
connect = "qemu+ssh://root@10.0.0.6/system"
[[server]]
name = "web01"
source = "ssh://root@web01.example.net"
[[server]]
name = "db01"
source = "ssh://admin@db01.example.net:2222"
disks = ["/dev/sda", "/dev/sdb"]
memory = 8192
vcpus = 4
networks = ["eth0=prod", "52:54:00:00:00:02:backup"]
bridges = ["br0"]
pool = "p2v-images"
bandwidth_limit = 1048576
""")
    manifest_module.load_manifest(tmp_path / "fleet.toml")      # p2v takes it
    assert_valid(tomllib.loads((tmp_path / "fleet.toml").read_text()), "manifest")


BAD = sorted(p for p in BAD_MANIFESTS.glob("*.toml") if p.stem != "01-toml-syntax")


@pytest.mark.parametrize("case", BAD, ids=[c.stem for c in BAD])
def test_a_structurally_bad_manifest_is_refused_by_the_schema_too(case: Path) -> None:
    found = problems(tomllib.loads(case.read_text()), "manifest")
    if case.stem in BEYOND_THE_SCHEMA:
        assert found == [], f"{case.stem} is refused by the schema: move it out of the list"
    else:
        assert found, f"{case.stem}: p2v refuses it, the schema does not"


# ------------------------------------------------------------------ inventory
def _cut(text: str, section: str) -> str:
    return text[: text.index(f"@@p2v {section}@@") + 40]


@pytest.mark.parametrize("output", [
    pytest.param(lambda: (RECORDED / "bios-live.txt").read_text(), id="bios"),
    pytest.param(lambda: (RECORDED / "uefi-live.txt").read_text(), id="uefi"),
    pytest.param(lambda: _cut((RECORDED / "bios-live.txt").read_text(), "sysnet"), id="cut-off"),
    pytest.param(lambda: "\n@@p2v hostname@@\nlonely\n@@p2v-rc 0@@\n", id="hostname-only"),
    pytest.param(lambda: "@@p2v sysblock@@\nsda\tsize\tbanana\n\x00\xff\n@@p2v-rc 0@@\n",
                 id="garbage"),
])
def test_the_inventory_of_recorded_and_degraded_sources_is_valid(output: Any) -> None:
    inv = build_inventory(output())
    assert_valid(inv.to_dict(), "inventory")


def test_the_inventory_docs_show_is_valid() -> None:
    """docs/user/inventory.md's example, its // comments taken out."""
    page = (REPO / "docs" / "user" / "inventory.md").read_text()
    (block,) = re.findall(r"```jsonc\n(.*?)```", page, re.S)
    assert_valid(json.loads(re.sub(r"\s+//.*$", "", block, flags=re.M)), "inventory")


def test_the_inventory_schema_refuses_another_version_and_a_missing_key() -> None:
    data = build_inventory((RECORDED / "bios-live.txt").read_text()).to_dict()
    assert problems({**data, "schema": "p2v.inventory/2"}, "inventory")
    del data["disks"][0]["boot"]
    assert "boot" in problems(data, "inventory")[0]


# ------------------------------------------------------------------ caps
def test_a_linux_guests_caps_document_is_valid() -> None:
    report = GuestReport(root="/dev/sda1", os_type="linux", distro="debian", version="12",
                         product="Debian GNU/Linux 12 (bookworm)", family="debian",
                         firmware="bios", bootloader="grub2", grub_cfg="/boot/grub/grub.cfg")
    kernel = KernelInfo("6.1.0-18-amd64", "/boot/initrd.img-6.1.0-18-amd64",
                        {"virtio_blk": True, "virtio_pci": True}, (), ("virtio_blk",))
    caps = GuestCaps(disk_bus="virtio", nic_model="virtio", firmware="bios")
    doc = linux_caps(caps, report, [NicPin("eth0", "52:54:00:12:34:56")], [kernel])
    assert_valid(doc, "caps")
    assert problems({**doc, "disk_bus": "ide"}, "caps")
    assert problems({**doc, "drivers": []}, "caps")       # a Windows key on a Linux guest


def test_a_windows_guests_caps_document_is_valid() -> None:
    report = WindowsReport(root="/dev/sda2", product="Windows Server 2019 Standard", major=10,
                           minor=0, build=17763, variant="server", arch="amd64",
                           systemroot="/Windows", hostname="WIN01",
                           control_set="ControlSet001", drive="C", firmware="uefi",
                           catalog_dir="2k19")
    plan = WindowsPlan(drivers=["viostor"], staged=["netkvm"])
    caps = GuestCaps(disk_bus="sata", nic_model="e1000e", firmware="uefi")
    doc = windows_caps(caps, report, plan)
    assert_valid(doc, "caps")
    assert problems({k: v for k, v in doc.items() if k != "fallback"}, "caps")


# ------------------------------------------------------------------ report
def _verdict(booted: bool) -> dict[str, Any]:
    return BootVerdict(
        booted=booted, reason=None if booted else "kernel-panic", elapsed_s=41.5, accel="tcg",
        bus="virtio", firmware="bios", os="Debian GNU/Linux 12",
        hostname="web01" if booted else None, root="/dev/vda1" if booted else None,
        interfaces=(Interface("eth0", "52:54:00:12:34:56", "UP", ("10.0.2.15/24",)),)
        if booted else (),
        evidence=("web01 login:",), via="libvirt-transient", domain="p2v-verify-1a2b3c4d",
        report_port="ttyS1" if booted else None).to_dict()


def test_a_finished_jobs_report_is_valid(tmp_path: Path) -> None:
    spec = JobSpec(source="ssh://root@web01", name="web01", output_dir=tmp_path)
    domain = RegisterResult(
        name="web01", uuid="6f1c1c52-3f0e-4c1e-9d2b-0b7f2d3e4a51", output="libvirt",
        domain_type="kvm", firmware="bios", disk_bus="virtio", nic_model="virtio",
        disks=(str(tmp_path / "web01-sda.qcow2"),),
        nics=({"mac": "52:54:00:12:34:56", "bridge": "br0", "source_nic": "eth0"},),
        uri="qemu:///system", started=True).to_dict()
    values = JobValues(disks=(DiskReport("/dev/sda", str(tmp_path / "web01-sda.qcow2"),
                                         10 << 30, 0, 3 << 30),),
                       verdict=_verdict(True), domain=domain, sync={"downtime_s": 2.5})
    stages = [StageTime(s, 1.5, s == "inspect") for s in CUTOVER_STAGES]
    report = build_report(spec, tmp_path, stages, values, None, None, 61.0)
    assert_valid(report.to_dict(), "report")
    assert problems({**report.to_dict(), "error": "something"}, "report")   # ok has no error


def test_a_failed_jobs_report_is_valid(tmp_path: Path) -> None:
    spec = JobSpec(source="ssh://root@web01", name="web01", output_dir=tmp_path)
    error = StreamError(host="web01", device="/dev/sda", detail="connection reset")
    report = build_report(spec, tmp_path, [StageTime("inspect", 2.0)],
                          JobValues(verdict=_verdict(False)), error, "copy", 3.0)
    data = assert_valid(report.to_dict(), "report")
    assert data["failed_stage"] == "copy" and data["exit_code"] >= 1
    assert problems({**data, "failed_stage": "copying"}, "report")
