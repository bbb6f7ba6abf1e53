"""`convert --from-image`'s import step alone, with the real qemu-img: a raw and a VMDK image
(made with qemu-img, random data in them) become qcow2 copies in the work dir whose guest-
visible contents `qemu-img compare` finds identical; the originals are never written; a
rerun keeps finished copies; a locked image is refused naming the file. Boots nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from schema_check import assert_valid

from p2v.errors import ImageNotImportable
from p2v.image_import import check_images, import_images
from p2v.job import JobSpec, image_source
from p2v.jobdir import WorkDir
from p2v.stages import JobContext

MiB = 1 << 20


def _qemu_img(*argv: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, argv)], check=True, capture_output=True, timeout=120)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _disks(tmp_path: Path) -> tuple[Path, Path]:
    """A raw disk with an MBR and random data, and a VMDK holding other random data."""
    raw = tmp_path / "lab-boot.raw"
    _qemu_img("create", "-q", "-f", "raw", raw, str(16 * MiB))
    with raw.open("r+b") as f:
        f.seek(446)                                   # one partition entry, then the 55AA
        f.write(bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little")
                + (8192).to_bytes(4, "little"))
        f.seek(510)
        f.write(b"\x55\xaa")
        f.seek(1 * MiB)
        f.write(os.urandom(3 * MiB))
        f.seek(12 * MiB)
        f.write(os.urandom(MiB))
    data = tmp_path / "data.raw"
    _qemu_img("create", "-q", "-f", "raw", data, str(8 * MiB))
    with data.open("r+b") as f:
        f.seek(2 * MiB)
        f.write(os.urandom(2 * MiB))
    vmdk = tmp_path / "lab-data.vmdk"
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", data, vmdk)
    return raw, vmdk


def _context(tmp_path: Path, images: tuple[Path, ...]) -> tuple[JobContext, WorkDir]:
    spec = JobSpec(source=image_source(images), name="lab01", output_dir=tmp_path / "jobs",
                   images=images)
    wd = WorkDir(spec.work_dir, spec.name)
    ctx = JobContext(spec, wd, None)
    ctx.stage = "import"                   # as the pipeline runs it
    return ctx, wd


def test_images_are_imported_as_identical_qcow2_copies(tmp_path: Path) -> None:
    raw, vmdk = _disks(tmp_path)
    before = {p: _digest(p) for p in (raw, vmdk)}
    facts = check_images([raw, vmdk])
    assert [(f.format, f.size) for f in facts] == [("raw", 16 * MiB), ("vmdk", 8 * MiB)]
    ctx, wd = _context(tmp_path, (raw, vmdk))
    with wd:
        disks = import_images(ctx, facts)
    images = [Path(d.image) for d in disks]
    assert images == [wd.file("lab01-disk1.qcow2"), wd.file("lab01-disk2.qcow2")]
    for original, copy in zip((raw, vmdk), images, strict=True):
        out = subprocess.run(["qemu-img", "info", "--output=json", copy], capture_output=True,
                             text=True, check=True)
        assert '"format": "qcow2"' in out.stdout
        # The guest sees the same bytes: qemu-img compare exits 0 only then.
        same = subprocess.run(["qemu-img", "compare", original, copy], capture_output=True,
                              text=True)
        assert same.returncode == 0, same.stdout + same.stderr
        assert oct(copy.stat().st_mode & 0o777) == "0o600"
    # The originals were only read.
    assert {p: _digest(p) for p in (raw, vmdk)} == before
    events = [json.loads(line) for line in wd.file("events.jsonl").read_text().splitlines()]
    imported = [assert_valid(e, "events") for e in events if e["event"] == "image-imported"]
    assert [(e["source_image"], e["format"]) for e in imported] == [(str(raw), "raw"),
                                                                    (str(vmdk), "vmdk")]
    assert [d.device for d in disks] == [str(raw), str(vmdk)]


def test_a_rerun_keeps_finished_copies_and_redoes_a_partial_one(tmp_path: Path) -> None:
    raw, vmdk = _disks(tmp_path)
    facts = check_images([raw, vmdk])
    ctx, wd = _context(tmp_path, (raw, vmdk))
    with wd:
        first = import_images(ctx, facts)
    kept = Path(first[0].image)
    mtime = kept.stat().st_mtime_ns
    # The second image "interrupted": only its .part is left.
    second = Path(first[1].image)
    second.rename(second.with_name(second.name + ".part"))
    time.sleep(0.01)
    with wd:
        again = import_images(ctx, facts)
    assert kept.stat().st_mtime_ns == mtime, "a finished copy is not converted again"
    assert Path(again[1].image).is_file()
    assert not second.with_name(second.name + ".part").exists()
    assert subprocess.run(["qemu-img", "compare", vmdk, again[1].image]).returncode == 0


def test_an_image_in_use_is_refused_naming_it(tmp_path: Path) -> None:
    raw, _vmdk = _disks(tmp_path)
    # qemu-io holds the image open for writing (as a running VM would) until stdin closes.
    holder = subprocess.Popen(["qemu-io", "-f", "raw", str(raw)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                check_images([raw])
            except ImageNotImportable as exc:
                assert str(raw) in exc.message and "in use by another process" in exc.message
                assert "\n" not in exc.message
                break
            assert time.monotonic() < deadline, "qemu-io never took the image's lock"
            time.sleep(0.2)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert check_images([raw])[0].format == "raw"       # free again


@pytest.mark.parametrize("fmt", ["vpc", "vhdx"])
def test_vhd_and_vhdx_are_imported_too(tmp_path: Path, fmt: str) -> None:
    raw, _vmdk = _disks(tmp_path)
    image = tmp_path / f"lab.{fmt}"
    _qemu_img("convert", "-f", "raw", "-O", fmt, raw, image)
    facts = check_images([image])
    assert facts[0].format == fmt
    ctx, wd = _context(tmp_path, (image,))
    with wd:
        (disk,) = import_images(ctx, facts)
    assert subprocess.run(["qemu-img", "compare", raw, disk.image]).returncode == 0
