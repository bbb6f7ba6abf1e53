"""One `p2v register` job: read the images, pick the target (libvirt or local), register the guest.

`Target` is what every output offers; `open_target` is the one place that picks it.
libvirt is imported only when the libvirt target is chosen, so `--output local` runs on a
host without libvirtd (or without the libvirt binding at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from p2v.model import GuestCaps
from p2v.target.domain import DomainSpec
from p2v.target.request import (
    ImageInfo,
    Progress,
    RegisterRequest,
    RegisterResult,
    check_request,
    inspect_image,
    with_new_macs,
)


class Target(Protocol):
    """Where a converted guest goes: a libvirt host (p2v.target.libvirt) or a directory of
    files for `virsh define` later (p2v.target.local). A new output implements this."""

    def __enter__(self) -> Target: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def plan(self, request: RegisterRequest, images: Sequence[ImageInfo],
             caps: GuestCaps) -> DomainSpec:
        """The domain register would define, with nothing written (the boot check boots it)."""
        ...

    def register(self, request: RegisterRequest, images: Sequence[ImageInfo],
                 caps: GuestCaps) -> RegisterResult:
        """Check everything, then define the guest; a failed check leaves nothing behind."""
        ...


def _quiet(_msg: str) -> None:
    pass


def open_target(request: RegisterRequest, progress: Progress = _quiet) -> Target:
    """The target the request names (`--output`), not yet entered."""
    if request.output == "local":
        from p2v.target.local import LocalTarget

        return LocalTarget(request.output_dir or Path("."), progress=progress)
    from p2v.target.libvirt import LibvirtTarget

    return LibvirtTarget(request.uri, progress=progress)


def register(request: RegisterRequest, progress: Progress = _quiet) -> RegisterResult:
    """Register the guest as asked; nothing is defined unless every check passed first."""
    caps = check_request(request)
    if request.new_macs:
        request = with_new_macs(request, progress)
    images = [inspect_image(p) for p in request.images]
    with open_target(request, progress) as target:
        return target.register(request, images, caps)
