"""The one wrapper for qemu-img: every image p2v reads, creates, maps or converts goes
through these calls (argv lists via p2v.runner, never a shell)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2v import runner

INFO_TIMEOUT = 60


def info(path: Path, *, share: bool = True, timeout: float = INFO_TIMEOUT) -> dict[str, Any]:
    """`qemu-img info` as a dict. share (-U): the image may be open elsewhere (a running
    verify, a copy). Raises CommandFailed; the caller says what the image was for."""
    argv = ["qemu-img", "info", *(["-U"] if share else []), "--output=json", str(path)]
    data = json.loads(runner.run(argv, timeout=timeout).stdout or "null")
    return data if isinstance(data, dict) else {}


def image_format(path: Path) -> str:
    """The image's format as qemu-img sees it."""
    return str(info(path)["format"])


def lock_holder(path: Path) -> str | None:
    """qemu-img's complaint if another process holds the image's write lock, else None
    (a free image, or another problem its user will report). Sees a writer of a qcow2;
    of a raw file only read_head (a convert) does."""
    probe = runner.run(["qemu-img", "info", str(path)], check=False, timeout=INFO_TIMEOUT)
    if probe.returncode == 0 or "lock" not in probe.stderr:
        return None
    return probe.stderr.strip()


def create(path: Path, size: int | None = None, *, backing: Path | None = None,
           backing_format: str | None = None) -> None:
    """A new qcow2: empty, of SIZE virtual bytes; or an overlay over BACKING."""
    argv: list[str | Path] = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", backing_format or image_format(backing), "-b", str(backing)]
    argv.append(path)
    if size is not None:
        argv.append(str(size))
    runner.run(argv, timeout=60)


def allocation_map(path: Path, *, share: bool = False) -> list[dict[str, Any]]:
    """`qemu-img map` of a qcow2: its ranges with their data/zero flags."""
    argv: list[str | Path] = ["qemu-img", "map", "--output=json", "-f", "qcow2"]
    if share:
        argv.append("-U")
    return list(json.loads(runner.run([*argv, path], timeout=600).stdout))


def convert(source: Path, dest: Path, fmt: str, *, source_format: str | None = None) -> None:
    """A flat copy of SOURCE (its backing chain folded in) as FMT at DEST. source_format:
    the format SOURCE was found to be (never probed again: a raw image stays raw)."""
    argv = ["qemu-img", "convert", *(["-f", source_format] if source_format else []),
            "-O", fmt, str(source), str(dest)]
    runner.run(argv, timeout=None)


def read_head(path: Path, fmt: str, nbytes: int) -> bytes:
    """The first NBYTES of the disk the image holds (what a guest sees at offset 0), whatever
    its format: a `qemu-img convert` of just that much (a raw node of that size over the
    image), so it takes the locks a whole convert takes. Raises CommandFailed, whose stderr
    says "lock" when another process writes the image."""
    import tempfile

    def escaped(text: str) -> str:          # option values: a comma is doubled
        return text.replace(",", ",,")

    # A raw file is the raw node's own file; any other format is a node between them.
    below = "file." if fmt == "raw" else f"file.driver={escaped(fmt)},file.file."
    opts = (f"driver=raw,offset=0,size={nbytes},{below}driver=file,{below}filename="
            + escaped(str(path)))
    with tempfile.TemporaryDirectory(prefix="p2v-head-") as tmp:
        out = Path(tmp) / "head.raw"
        runner.run(["qemu-img", "convert", "--image-opts", opts, "-O", "raw", str(out)],
                   timeout=INFO_TIMEOUT)
        return out.read_bytes()
