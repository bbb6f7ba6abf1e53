"""What one conversion job is asked to do: the value `convert`, `batch` and cluster workers share.

A JobSpec is plain data (frozen, picklable, JSON-able) so the same job can be built from CLI
flags, from a manifest entry, or shipped to another conversion host and run there unchanged.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from p2v.libvirt_uri import default_uri

# The stages of a job, in order (p2v.pipeline runs them; `p2v jobs` reads their markers).
STAGES = ("inspect", "preflight", "copy", "fix", "verify", "register")
# With --cutover: sync passes (the last one frozen) between the copy and the fix.
CUTOVER_STAGES = ("inspect", "preflight", "copy", "sync", "fix", "verify", "register")
# With --from-image: the images are imported into the work dir in place of the live source's
# inspect, preflight and copy.
IMAGE_STAGES = ("import", "fix", "verify", "register")
ALL_STAGES = ("import", *CUTOVER_STAGES)
# The name is a domain name and a path component (work dir, images): safe characters only.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,62}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a job name, or None when it can (same rule as register's --name)."""
    if NAME_PATTERN.fullmatch(name):
        return None
    return (f"--name {name!r}: use letters, digits and . _ + - (at most 63, starting with a "
            "letter or digit)")


def default_output_dir() -> Path:
    """Where jobs' work dirs go without --output-dir: $P2V_STATE_DIR/jobs (/var/lib/p2v/jobs)."""
    from p2v.secure import state_dir

    return state_dir() / "jobs"


@dataclass(frozen=True)
class JobSpec:
    """One server to convert: where it is, what to call it, how the guest should look."""

    source: str                                 # ssh://[user@]host[:port] or an ssh_config alias
    name: str                                   # domain name; stem of images and the work dir
    output_dir: Path                            # the job's work dir is output_dir / name
    disks: tuple[str, ...] = ()                 # empty: the source's physical disks
    memory_mib: int | None = None               # None: the source's
    vcpus: int | None = None                    # None: the source's topology
    connect: str = field(default_factory=default_uri)   # libvirt URI (as virsh picks it)
    networks: tuple[str, ...] = ()              # "[SRC=]NET" as `register --network` takes them
    bridges: tuple[str, ...] = ()               # "[SRC=]BR" as `register --bridge` takes them
    pool: str | None = None                     # libvirt storage pool for the images
    start: bool = False                         # start the registered domain at the end
    verify: bool = True                         # boot-check a throwaway overlay before register
    full: bool = False                          # copy every non-zero byte
    compress: bool = True
    identity: Path | None = None                # SSH private key
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    ssh_config: Path | None = None
    verify_timeout: float = 300.0               # seconds the boot check waits for userspace
    # Fresh MACs for the guest, decided at preflight: fix pins the guest's interface names
    # to them, so the guest keeps its network while the source runs on with the old MACs.
    new_macs: bool = False
    # Live cutover (issue 9): sync passes after the copy, the last one frozen (docs/user/sync.md).
    cutover: bool = False
    freeze: str = "strict"                      # the final pass: "strict" or "best-effort"
    freeze_timeout: float = 300.0
    before_final: str | None = None             # the user's shell commands, run on the source
    after_final: str | None = None
    # fix adds a serial console (ttyS0) whose login prompt shows the addresses: what a
    # started guest's console log (and `virsh console`) shows.
    serial_console: bool = False
    # The copy (and sync passes): disks at a time, and bytes/s on the wire over all of them.
    parallel: int = 2
    bandwidth_limit: float | None = None
    # `p2v batch --bandwidth-limit` (or the manifest's top-level bandwidth_limit): bytes/s
    # shared by every job of the batch running at once on this host, through the bucket
    # file host_bucket(output_dir). A batch setting, not part of what the job is asked to
    # do: the ledger's spec hash leaves it out.
    host_bandwidth_limit: float | None = None
    # Windows sources: the virtio-win ISO or directory fix takes the drivers from.
    virtio_win: Path | None = None
    # --from-image: existing disk images (boot disk first, absolute paths) instead of a live
    # source; `source` is then image_source(images). in_place: raw/qcow2 used where they are.
    images: tuple[Path, ...] = ()
    in_place: bool = False

    @property
    def work_dir(self) -> Path:
        return self.output_dir / self.name

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = [str(v) if isinstance(v, Path) else v for v in value]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """The inverse of to_dict (the job's work dir keeps its spec as JSON)."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in kinds:
                continue
            kind = str(kinds[key])
            if isinstance(value, list):
                value = tuple(Path(v) if "Path" in kind else v for v in value)
            elif value is not None and "Path" in kind:
                value = Path(value)
            values[key] = value
        return cls(**values)


# Where the jobs of one batch on one host share host_bandwidth_limit (the batch's state dir).
HOST_BUCKET = Path(".p2v-batch") / "bandwidth.bucket"
# Fields added after ledgers existed: at their default they are left out of the spec hash,
# so a manifest entry that does not use them still matches the row an older p2v wrote.
LATER_FIELDS = ("host_bandwidth_limit", "virtio_win", "images", "in_place")
IMAGE_PREFIX = "image:"


def image_source(images: tuple[Path, ...]) -> str:
    """What a job from existing images records as its source (reports, the ledger, p2v jobs)."""
    return IMAGE_PREFIX + ",".join(str(p) for p in images)


def host_bucket(output_dir: Path) -> Path:
    """The bucket file the batch's jobs on this host draw their shared bandwidth from."""
    return output_dir / HOST_BUCKET


def stages_for(spec: JobSpec) -> tuple[str, ...]:
    """The stages this job runs, in order (with --cutover, sync comes after the copy; from
    images, the import replaces inspect, preflight and copy)."""
    if spec.images:
        return IMAGE_STAGES
    return CUTOVER_STAGES if spec.cutover else STAGES
