"""What every guest family's fix has in common: its planned changes and its one result type.

Linux and Windows guests are inspected, planned and fixed differently, but `p2v fix` reports
both the same way: the JSON `to_dict` writes and the text the CLI prints have one shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from p2v.model import GuestCaps
from p2v.secure import write_private


@dataclass(frozen=True)
class Change:
    """One planned change: a file written, a registry group set, or an action run."""

    kind: str           # edit, create, copy, registry, rebuild-initramfs, regenerate-grub ...
    target: str         # a guest path, a registry group, or a kernel version
    why: str

    def __str__(self) -> str:
        return f"{self.kind} {self.target}: {self.why}"


class Report(Protocol):
    """What inspection found (GuestReport, WindowsReport)."""

    def to_dict(self) -> dict[str, Any]: ...


class Plan(Protocol):
    """Every change a guest needs (FixPlan, WindowsPlan): empty on a second run."""

    @property
    def changes(self) -> list[Change]: ...

    @property
    def warnings(self) -> list[str]: ...

    @property
    def empty(self) -> bool: ...


@dataclass(frozen=True)
class Verdict:
    """A fixer's last word on the guest: its caps, and how they and the guest are reported."""

    caps: GuestCaps
    caps_document: dict[str, Any]      # IMAGE.caps.json: the caps and the facts behind them
    summary: list[str]                 # the guest, in the lines `p2v fix` prints first
    details: dict[str, Any] = field(default_factory=dict)  # JSON keys after "inspection"


class Fixer(Protocol):
    """What a guest family's fixer (p2v.fix.linux, p2v.fix.windows) provides to the one fix
    pipeline (p2v.fix.fixer.fix_images), which calls it in this order over one session:
    inspect, plan, then apply (when there are changes to make) or check, then verdict."""

    def inspect(self) -> Report:
        """What the guest is; changes nothing."""
        ...

    def plan(self) -> Plan:
        """Every change the guest needs; writes nothing into the guest."""
        ...

    def apply(self) -> list[str]:
        """Make the planned changes; return the checks made after (raise if one fails)."""
        ...

    def check(self) -> list[str]:
        """The checks of a guest that needed no change (raise if one fails)."""
        ...

    def verdict(self, applied: bool) -> Verdict:
        """The caps the VM gets, and how the guest is reported."""
        ...


@dataclass
class FixResult:
    """What `p2v fix` found, planned and did for one guest, Linux or Windows."""

    images: tuple[Path, ...]
    report: Report
    plan: Plan
    applied: bool
    verdict: Verdict
    caps_path: Path | None
    dry_run: bool
    checks: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def caps(self) -> GuestCaps:
        return self.verdict.caps

    @property
    def nothing_to_do(self) -> bool:
        return self.plan.empty

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [str(i) for i in self.images],
            "dry_run": self.dry_run,
            "nothing_to_do": self.plan.empty,
            "applied": self.applied,
            "inspection": self.report.to_dict(),
            **self.verdict.details,
            "changes": [asdict(c) for c in self.plan.changes],
            "warnings": self.plan.warnings,
            "checks": self.checks,
            "caps": self.verdict.caps_document,
            "caps_path": str(self.caps_path) if self.caps_path else None,
            "elapsed_s": self.elapsed_s,
        }


def write_caps(path: Path, document: dict[str, Any]) -> None:
    """IMAGE.caps.json, rewritten only when it differs (a second run leaves it untouched)."""
    text = json.dumps(document, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        write_private(path, text)
