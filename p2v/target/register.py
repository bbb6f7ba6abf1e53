"""One `p2v register` job: read the images, pick the target (libvirt or local), register the guest.

libvirt is imported only when the libvirt target is chosen, so `--output local` runs on a
host without libvirtd (or without the libvirt binding at all).
"""

from __future__ import annotations

from pathlib import Path

from p2v.target.request import (
    Progress,
    RegisterRequest,
    RegisterResult,
    check_request,
    inspect_image,
    with_new_macs,
)


def _quiet(_msg: str) -> None:
    pass


def register(request: RegisterRequest, progress: Progress = _quiet) -> RegisterResult:
    """Register the guest as asked; nothing is defined unless every check passed first."""
    caps = check_request(request)
    if request.new_macs:
        request = with_new_macs(request, progress)
    images = [inspect_image(p) for p in request.images]
    if request.output == "local":
        from p2v.target.local import LocalTarget

        return LocalTarget(request.output_dir or Path("."), progress=progress).register(
            request, images, caps)
    from p2v.target.libvirt import LibvirtTarget

    with LibvirtTarget(request.uri, progress=progress) as target:
        return target.register(request, images, caps)
