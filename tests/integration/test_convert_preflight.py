"""`p2v convert` refuses before a byte is copied: one line, a distinct exit code, no domain
defined, the work dir kept for the rerun.

The source is the bios fixture's disk as a read-only loop device behind a loopback sshd; the
target is the real libvirtd the tests start.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from libvirt_env import Libvirtd, open_conn
from loop_sources import LoopSource, write_random_disk
from schema_check import assert_all_valid, assert_valid

from p2v import cli, runner
from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode


@pytest.fixture
def out_dir(guest_dir: Path) -> Path:
    """The jobs' --output-dir: under /var/tmp, 0755, so qemu reaches the images."""
    return guest_dir


def convert(ep: SourceEndpoint, name: str, out: Path, network: str,
            capsys: pytest.CaptureFixture[str], *extra: str,
            known_hosts: Path | None = None) -> tuple[int, str]:
    argv = ["convert", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--name", name,
            "--identity", str(ep.key), "--known-hosts", str(known_hosts or ep.known_hosts),
            "--ssh-config", "/dev/null", "--output-dir", str(out), "--network", network,
            *extra]
    code = cli.main(argv)
    return code, capsys.readouterr().err


def defined(name: str) -> list[str]:
    conn = open_conn()
    try:
        return [d.UUIDString() for d in conn.listAllDomains() if d.name() == name]
    finally:
        conn.close()


def assert_refused(err: str, out: Path, name: str, stage: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("p2v: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert f"convert stopped at {stage}" in line and "rerun the same command" in line
    work = out / name
    assert (work / "job.log").is_file() and (work / "spec.json").is_file()
    report = assert_valid(json.loads((work / "report.json").read_text()), "report")
    assert report["ok"] is False and report["failed_stage"] == stage
    assert_all_valid([json.loads(line) for line in
                      (work / "events.jsonl").read_text().splitlines()], "events")
    assert not list(work.glob("*.qcow2*")), "nothing may be copied before preflight passes"
    return line


def test_unknown_host_key(loop_source_bios: SourceEndpoint, libvirtd: Libvirtd,
                          isolated_network: str, out_dir: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    empty = out_dir / "known_hosts"
    empty.write_text("")
    code, err = convert(loop_source_bios, "p2vtest-cv-hostkey", out_dir, isolated_network,
                        capsys, "--disk", loop_source_bios.disks[0], known_hosts=empty)
    assert code == ExitCode.HOST_KEY
    line = assert_refused(err, out_dir, "p2vtest-cv-hostkey", "inspect")
    assert "is not known" in line and "--accept-new-host-key" in line
    assert defined("p2vtest-cv-hostkey") == []
    assert empty.read_text() == ""


def test_missing_device(loop_source_bios: SourceEndpoint, libvirtd: Libvirtd,
                        isolated_network: str, out_dir: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = convert(loop_source_bios, "p2vtest-cv-nodev", out_dir, isolated_network,
                        capsys, "--disk", "/dev/p2v-no-such-disk")
    assert code == ExitCode.USAGE
    line = assert_refused(err, out_dir, "p2vtest-cv-nodev", "preflight")
    assert "/dev/p2v-no-such-disk" in line and "no such device" in line
    assert defined("p2vtest-cv-nodev") == []


def test_name_taken(loop_source_bios: SourceEndpoint, libvirtd: Libvirtd,
                    isolated_network: str, out_dir: Path, guest_names: list[str],
                    capsys: pytest.CaptureFixture[str]) -> None:
    name = "p2vtest-cv-taken"
    guest_names.append(name)
    conn = open_conn()
    try:
        conn.defineXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64"
                       "</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    finally:
        conn.close()
    before = defined(name)
    code, err = convert(loop_source_bios, name, out_dir, isolated_network, capsys,
                        "--disk", loop_source_bios.disks[0])
    assert code == ExitCode.USAGE
    line = assert_refused(err, out_dir, name, "preflight")
    assert "already exists" in line
    assert defined(name) == before            # the other guest is left exactly as it was
    # clean removes the work dir but never the guest p2v did not register.
    assert cli.main(["clean", name, "--output-dir", str(out_dir), "--domain"]) == 0
    assert not (out_dir / name).exists() and defined(name) == before


def test_not_enough_space(loop_source_bios: SourceEndpoint, libvirtd: Libvirtd,
                          isolated_network: str, out_dir: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    small = out_dir / "small"
    small.mkdir()
    runner.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "p2v-test", str(small)])
    try:
        code, err = convert(loop_source_bios, "p2vtest-cv-space", small, isolated_network,
                            capsys, "--disk", loop_source_bios.disks[0])
        assert code == ExitCode.USAGE
        line = assert_refused(err, small, "p2vtest-cv-space", "preflight")
        assert "not enough free space" in line and "--output-dir" in line
        assert defined("p2vtest-cv-space") == []
    finally:
        runner.run(["umount", str(small)], check=False)


def test_unknown_network_is_refused_before_the_copy(
        loop_source_bios: SourceEndpoint, libvirtd: Libvirtd, out_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = convert(loop_source_bios, "p2vtest-cv-nonet", out_dir, "p2v-no-such-net",
                        capsys, "--disk", loop_source_bios.disks[0])
    assert code == ExitCode.USAGE
    line = assert_refused(err, out_dir, "p2vtest-cv-nonet", "preflight")
    assert "'p2v-no-such-net' does not exist" in line


def test_a_failed_stage_keeps_the_work_dir_and_the_rerun_resumes_there(
        libvirtd: Libvirtd, isolated_network: str, out_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A disk with no operating system: copied, then fix fails; nothing is defined and the
    rerun starts at fix (the copy is not redone)."""
    raw = out_dir / "blank.raw"
    write_random_disk(raw, 32 << 20, 4 << 20)
    name = "p2vtest-cv-noos"
    with LoopSource.from_files([raw]) as ep:
        code, err = convert(ep, name, out_dir, isolated_network, capsys, "--disk", ep.disks[0])
        assert code == ExitCode.FAILURE, err
        lines = [ln for ln in err.splitlines() if ln.startswith("p2v: error:")]
        assert len(lines) == 1 and "convert stopped at fix" in lines[0], err
        work = out_dir / name
        assert (work / "markers" / "copy.done").is_file()
        assert not (work / "markers" / "fix.done").exists()
        image = next(work.glob("*.qcow2"))
        copied_at = image.stat().st_mtime_ns
        assert defined(name) == []

        code, err = convert(ep, name, out_dir, isolated_network, capsys, "--disk", ep.disks[0])
        assert code == ExitCode.FAILURE
        events = assert_all_valid([json.loads(line) for line in
                                   (work / "events.jsonl").read_text().splitlines()], "events")
        last_run = events[max(i for i, e in enumerate(events) if e["event"] == "job-start"):]
        assert last_run[0]["resume_at"] == "fix"
        assert [e["stage"] for e in last_run if e["event"] == "stage-skip"] == [
            "inspect", "preflight", "copy"]
        assert image.stat().st_mtime_ns == copied_at
        assert defined(name) == []


def _write_locked(image: Path) -> bool:
    """Whether some process holds qemu's write-permission lock (byte 101) on IMAGE.

    Read from /proc/locks, which takes no lock itself: probing with `qemu-img info` took a
    shared lock that a qemu-io still starting could meet, and it then gave up ("Failed to
    get write lock"), seen under load.
    """
    info = image.stat()
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "OFDLCK" in fields and key in fields:
            start, end = fields[-2:]
            if int(start) <= 101 <= (int(end) if end != "EOF" else 101):
                return True
    return False


def wait_until_locked(image: Path, holder: subprocess.Popen[bytes]) -> None:
    """The event: HOLDER has the image's write lock (qemu-img cannot open it any more)."""
    deadline = time.monotonic() + 60
    while not _write_locked(image):
        assert holder.poll() is None and time.monotonic() < deadline, "qemu-io never held it"
        time.sleep(0.02)


def test_an_image_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    """What a rerun after a SIGKILL during fix meets: the old appliance still holds the
    image for a few seconds. The stage waits for it, and names it when it never lets go."""
    from p2v.errors import UsageError
    from p2v.stages import wait_until_released

    image = tmp_path / "held.qcow2"
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"])
    said: list[str] = []
    holder = subprocess.Popen(["qemu-io", "-c", "sleep 3000", str(image)])
    try:
        wait_until_locked(image, holder)
        wait_until_released([image], said.append, timeout=60)
        # It found the image held and said so (how long it waited is the holder's business).
        assert said and "release" in said[0]
        assert "lock" not in runner.run(["qemu-img", "info", str(image)], check=False).stderr
    finally:
        holder.wait(timeout=30)
    holder = subprocess.Popen(["qemu-io", "-c", "sleep 20000", str(image)])
    try:
        wait_until_locked(image, holder)
        with pytest.raises(UsageError, match="still in use"):
            wait_until_released([image], said.append, timeout=2)
    finally:
        holder.kill()
        holder.wait()
