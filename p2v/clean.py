"""`p2v clean`: remove a job's work dir and, when asked, the guest that job registered,
and sweep the boot checks a killed run left behind."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2v.errors import P2VError, UsageError
from p2v.job import name_problem
from p2v.jobdir import WorkDir, read_json
from p2v.libvirt_uri import default_uri


@dataclass(frozen=True)
class CleanResult:
    work_dir: str | None               # removed
    domain: str | None                 # undefined (name), when --domain and there was one
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_job(name: str, output_dir: Path, *, domain: bool = False,
              uri: str | None = None) -> CleanResult:
    """Remove a job's work dir and, with `domain`, the guest that job registered.

    Only what the job made is removed: the guest must carry the UUID in the job's
    register.json and be shut off; a guest still using the work dir's images is not
    orphaned (without `domain` the clean is refused); a directory without a job's spec.json
    is not removed.
    """
    from p2v.errors import InputNotFound

    problem = name_problem(name)
    if problem is not None:
        raise UsageError(detail=problem)
    wd = WorkDir(Path(output_dir) / name, name)
    if not wd.path.is_dir():
        raise InputNotFound(what=f"work dir of job {name!r}", path=str(wd.path))
    if not wd.file("spec.json").is_file():
        raise UsageError(detail=f"{wd.path} has no spec.json: not a p2v job's work dir, "
                                "not removing it")
    notes: list[str] = []
    removed_domain = None
    with wd:
        spec = read_json(wd.file("spec.json"))
        registered = (read_json(wd.file("register.json"))
                      if wd.file("register.json").is_file() else None)
        uri = uri or (registered or {}).get("uri") or spec.get("connect")
        if registered is not None or domain:
            from p2v.target.libvirt import LibvirtTarget

            with LibvirtTarget(str(uri)) as target:
                facts = target.describe(name)
                inside = facts is not None and any(
                    d.startswith(str(wd.path.resolve()) + "/") or d.startswith(str(wd.path) + "/")
                    for d in facts.disks)
                if registered is None:
                    notes.append(f"job {name} registered no domain: no domain removed"
                                 + (f" (a domain {name!r} exists at {uri}: not this job's)"
                                    if facts is not None else ""))
                    if inside:
                        raise UsageError(detail=(
                            f"domain {name!r} at {uri} uses images in {wd.path} but this job "
                            "did not register it; remove it yourself first"))
                elif facts is None:
                    notes.append(f"domain {name} is no longer defined at {uri}")
                elif domain:
                    target.remove(name, str(registered["uuid"]))
                    removed_domain = name
                    if registered.get("disks") and spec.get("pool"):
                        notes.append("its volumes in pool " + str(spec.get("pool"))
                                     + " are kept: " + ", ".join(registered["disks"]))
                elif inside:
                    raise UsageError(detail=(
                        f"domain {name!r} at {uri} uses the images in {wd.path}; pass "
                        "--domain to remove it too, or keep the work dir"))
    shutil.rmtree(wd.path)
    notes += _kept_in_place(spec)
    notes += _sweep_boot_checks(str(uri or spec.get("connect") or default_uri()))
    return CleanResult(work_dir=str(wd.path), domain=removed_domain, notes=tuple(notes))


def _kept_in_place(spec: dict[str, Any]) -> list[str]:
    """A --from-image --in-place job's images are the user's files: never removed."""
    if not (spec.get("in_place") and spec.get("images")):
        return []
    return ["the images it used in place are kept (fixed for virtio): "
            + ", ".join(map(str, spec["images"]))]


def _sweep_boot_checks(uri: str) -> list[str]:
    """A boot check's network (or domain) that a killed run left behind goes with `clean`."""
    from p2v.scratch import owner_alive
    from p2v.target.libvirt import is_local, sweep_transient_at

    if not is_local(uri):
        return []
    try:
        removed = sweep_transient_at(uri, owner_alive)
    except P2VError:
        return []           # no libvirtd here: nothing of a boot check can be left in it
    return [f"removed {name}, left in libvirt by a boot check that was killed"
            for name in removed]

