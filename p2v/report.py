"""What one job did: the JobReport `p2v convert` prints and a batch records per job, built
from the values the stages returned (or reloaded) in this run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from p2v.errors import ExitCode, P2VError
from p2v.job import JobSpec
from p2v.jobdir import read_json
from p2v.jobplan import JobPlan
from p2v.model import Inventory


@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: float
    earlier_run: bool = False          # finished by an earlier run of this job


@dataclass(frozen=True)
class DiskReport:
    device: str                        # on the source, e.g. /dev/sda
    image: str                         # the qcow2 in the work dir
    size: int                          # virtual size (the source disk's size)
    file_bytes: int                    # what the image takes on the host
    wire_bytes: int                    # sent by the run that finished this disk


@dataclass(frozen=True)
class JobReport:
    """What one job did: the final summary of `p2v convert` and a batch's per-job record."""

    name: str
    source: str
    work_dir: str
    ok: bool
    stages: tuple[StageTime, ...] = ()
    disks: tuple[DiskReport, ...] = ()
    disk_choice: str = ""
    not_carried_over: tuple[str, ...] = ()
    domain: dict[str, Any] | None = None     # name, uri, uuid, started, bus, NIC model, ...
    verdict: dict[str, Any] | None = None    # the boot check (None with --no-verify)
    network: tuple[str, ...] = ()            # each source NIC as the booted guest showed it
    failed_stage: str | None = None
    error: str | None = None                 # the one-line message (with how to resume)
    exit_code: int = ExitCode.OK
    elapsed_s: float = 0.0
    downtime_s: float | None = None          # --cutover: the source frozen, freeze to thaw
    downtime_bound: str | None = None        # what bounded it: "tracked: ..." / "rehashed: ..."

    @property
    def bytes_sent(self) -> int:
        return sum(d.wire_bytes for d in self.disks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes_sent"] = self.bytes_sent
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobReport:
        return cls(
            name=data["name"], source=data["source"], work_dir=data["work_dir"],
            ok=bool(data["ok"]),
            stages=tuple(StageTime(**s) for s in data.get("stages", ())),
            disks=tuple(DiskReport(**d) for d in data.get("disks", ())),
            disk_choice=data.get("disk_choice", ""),
            not_carried_over=tuple(data.get("not_carried_over", ())),
            domain=data.get("domain"), verdict=data.get("verdict"),
            network=tuple(data.get("network", ())),
            failed_stage=data.get("failed_stage"), error=data.get("error"),
            exit_code=int(data.get("exit_code", 0)), elapsed_s=float(data.get("elapsed_s", 0)),
            downtime_s=data.get("downtime_s"), downtime_bound=data.get("downtime_bound"),
        )


def load_report(work_dir: Path) -> JobReport | None:
    path = Path(work_dir) / "report.json"
    return JobReport.from_dict(read_json(path)) if path.is_file() else None



def allocated(path: Path | str) -> int:
    """What a file takes on the host (its allocated blocks), 0 if it is gone."""
    try:
        return Path(path).stat().st_blocks * 512
    except OSError:
        return 0


@dataclass
class JobValues:
    """What the stages of this run returned or reloaded; None for a stage not reached."""

    inventory: Inventory | None = None
    plan: JobPlan | None = None
    disks: tuple[DiskReport, ...] | None = None
    sync: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None
    domain: dict[str, Any] | None = None


def build_report(spec: JobSpec, work_dir: Path, stages: Sequence[StageTime],
                 values: JobValues, error: P2VError | None, failed_stage: str | None,
                 elapsed_s: float) -> JobReport:
    """The job's report; a failure's message says where it stopped and how to resume."""
    disks = tuple(replace(d, file_bytes=allocated(d.image)) for d in values.disks or ())
    plan = values.plan
    message = None
    code = ExitCode.OK
    if error is not None:
        code = error.exit_code
        message = (f"{error.message} [convert stopped at {failed_stage or 'start'}; work dir "
                   f"{work_dir} kept, no domain defined: rerun the same command to resume, "
                   f"or `p2v clean {spec.name}`]")
    return JobReport(
        name=spec.name, source=spec.source, work_dir=str(work_dir), ok=error is None,
        stages=tuple(stages), disks=disks, disk_choice=plan.disk_choice if plan else "",
        not_carried_over=plan.not_carried_over if plan else (), domain=values.domain,
        verdict=values.verdict,
        network=tuple(network_lines(values.inventory, plan, values.verdict)),
        failed_stage=failed_stage, error=message, exit_code=code, elapsed_s=round(elapsed_s, 1),
        downtime_s=(values.sync or {}).get("downtime_s"),
        downtime_bound=(values.sync or {}).get("downtime_bound"))


def network_lines(inv: Inventory | None, plan: JobPlan | None,
                  verdict: dict[str, Any] | None) -> list[str]:
    """Each source NIC next to what the booted guest showed on the same MAC."""
    if not verdict or inv is None:
        return []
    seen = {str(i.get("mac", "")).lower(): i for i in verdict.get("interfaces", [])}
    guest_mac = dict(plan.pins) if plan else {}
    lines = []
    for nic in inv.nics:
        if not nic.mac:
            continue
        src = sorted(a for a in nic.addresses if ":" not in a)
        mac = guest_mac.get(nic.name, nic.mac.lower())
        got = seen.get(mac)
        if mac != nic.mac.lower():
            nic = replace(nic, mac=f"{nic.mac} (guest {mac})")
        if got is None:
            lines.append(f"{nic.name} {nic.mac}: NOT seen in the guest")
            continue
        have = sorted(a for a in got.get("addresses", []) if ":" not in a)
        same = got.get("name") == nic.name and set(src) <= set(have)
        lines.append(f"{nic.name} {nic.mac} {', '.join(src) or 'no IPv4'} -> guest "
                     f"{got.get('name')} {', '.join(have) or 'no IPv4'}"
                     + (" (as on the source)" if same else " (DIFFERS from the source)"))
    return lines
