"""`p2v fix`: the one pipeline that makes a copied guest boot on virtio, Linux or Windows.

Open the images in the appliance, find the guest's OS, and hand it to that family's Fixer
(p2v.fix.base): inspect, plan, stop there for --dry-run, else apply (or only check when
nothing needs to change), then write the GuestCaps JSON beside the first image.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from p2v.errors import UsageError
from p2v.fix.base import Fixer, FixResult, write_caps
from p2v.fix.linux.fixer import LinuxFixer
from p2v.fix.options import FixOptions
from p2v.fix.session import GuestSession, open_guest
from p2v.fix.windows.fixer import WindowsFixer
from p2v.fix.windows.virtio_win import check_virtio_win
from p2v.qemuimg import image_format

CAPS_SUFFIX = ".caps.json"


def caps_path_for(images: Sequence[Path]) -> Path:
    """The GuestCaps JSON lives beside the first image: disk0.qcow2 -> disk0.qcow2.caps.json."""
    first = Path(images[0])
    return first.with_name(first.name + CAPS_SUFFIX)


@contextmanager
def guest_fixer(session: GuestSession, root: str, options: FixOptions, virtio_kind: str | None,
                progress: Callable[[str], None]) -> Iterator[Fixer]:
    """The one place that picks the fixer, from the OS inspection found at root.

    A Windows guest gets the virtio-win drivers (and a host dir for its hives); anything
    else goes to the Linux fixer, which refuses what is not Linux.
    """
    os_type = session.inspect_get_type(root)
    if os_type == "windows":
        with tempfile.TemporaryDirectory(prefix="p2v-hives-") as tmp:
            yield WindowsFixer(session, root, options.virtio_win, virtio_kind, Path(tmp),
                               progress)
        return
    if options.virtio_win is not None:
        raise UsageError(detail="--virtio-win is for Windows guests; this one is "
                                f"{os_type}: drop the option")
    yield LinuxFixer(session, root, options, progress)


def fix_images(images: Sequence[Path], options: FixOptions,
               progress: Callable[[str], None] = lambda _m: None) -> FixResult:
    """Inspect, plan and (unless dry-run) fix one guest's disk images, all together."""
    images = tuple(Path(i) for i in images)
    started = time.monotonic()
    # A wrong --virtio-win is refused before the appliance starts.
    virtio_kind = check_virtio_win(options.virtio_win) if options.virtio_win else None
    progress(f"launching the appliance over {len(images)} image(s)")
    # The format is given, never probed: qemu restricts writes to sector 0 of a probed raw.
    formats = {image_format(i) for i in images}
    fmt = formats.pop() if len(formats) == 1 else None
    iso = (options.virtio_win,) if virtio_kind == "iso" and options.virtio_win else ()
    with open_guest(images, readonly=options.dry_run, fmt=fmt, extra_readonly=iso) as session, \
            guest_fixer(session, session.inspect(), options, virtio_kind, progress) as fixer:
        report = fixer.inspect()
        plan = fixer.plan()
        checks: list[str] = []
        applied = not options.dry_run and not plan.empty
        if applied:
            checks = fixer.apply()
        elif not options.dry_run:
            checks = fixer.check()
        verdict = fixer.verdict(applied)
    caps_path = None
    if not options.dry_run:
        caps_path = caps_path_for(images)
        write_caps(caps_path, verdict.caps_document)
    return FixResult(images, report, plan, applied, verdict, caps_path, options.dry_run, checks,
                     round(time.monotonic() - started, 1))
