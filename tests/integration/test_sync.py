"""`p2v sync` on loop devices behind a real sshd: only changed chunks move, dropped chunks
are zeroed, a killed sync resumes, hooks run in order, --freeze freezes (and refuses what it
cannot freeze), and a cut link leaves a source that thaws by itself.

The loop devices are on this machine, so "on the source" checks run here: a filesystem is
frozen when a write to it does not complete. Every test thaws what it froze, whatever
happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import identical, open_source, ssh_args
from loop_sources import (
    LoopSource,
    SshServer,
    attach_loop,
    detach_loop,
    make_partition_nodes,
    write_random_disk,
)
from schema_check import assert_all_valid
from tcpproxy import LinkProxy

from p2v import cli, runner
from p2v.errors import ExitCode, P2VError
from p2v.source.ssh import SshOptions, SshSource
from p2v.transfer.copy import CopyRequest, copy_disks
from p2v.transfer.sync import SyncRequest, sync

MiB = 1 << 20



def events(out: str) -> list[dict[str, object]]:
    return assert_all_valid([json.loads(line) for line in out.splitlines()
                             if line.startswith("{")], "events")


# Where the kernel parks a writer on a frozen filesystem (sb_start_write's rwsem).
FROZEN_WAIT = "percpu_rwsem_wait"


def _probe_write(mountpoint: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", f"echo x > {mountpoint}/.probe"])


def is_frozen(mountpoint: Path, timeout: float = 60) -> bool:
    """A write either finishes (not frozen) or is parked by the kernel on the frozen
    superblock (frozen: its wait channel says so); neither is guessed from how long it
    takes. The writer is left to finish after the thaw (it cannot be killed)."""
    probe = _probe_write(mountpoint)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe.poll() is not None:
            return False
        try:
            if Path(f"/proc/{probe.pid}/wchan").read_text() == FROZEN_WAIT:
                return True
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"a write to {mountpoint} neither finished nor waited for a thaw")


def thawed_at(mountpoint: Path, timeout: float) -> float:
    """When a write parked on the frozen MOUNTPOINT finally went through (monotonic)."""
    probe = _probe_write(mountpoint)
    probe.wait(timeout)
    return time.monotonic()


def whole_chunks(path: Path, chunk: int, part_offset: int = MiB) -> set[int]:
    """The disk's chunks that PATH's extents (FIEMAP, via filefrag) cover entirely."""
    block = os.statvfs(path).f_bsize
    chunks: set[int] = set()
    for line in runner.run(["filefrag", "-v", str(path)]).stdout.splitlines():
        fields = line.replace(":", " ").replace("..", " ").split()
        if len(fields) >= 5 and fields[0].isdigit():
            start = part_offset + int(fields[3]) * block
            end = part_offset + (int(fields[4]) + 1) * block
            chunks.update(range(-(-start // chunk), end // chunk))
    return chunks


def thaw_timers(mountpoint: Path) -> list[int]:
    """Thaw timers for MOUNTPOINT still running (other tests' timers on this host are not
    this test's business: they name their own mount points)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.startswith("p2v-thaw-timer") for a in argv) and str(mountpoint) in argv:
            found.append(int(cmdline.parent.name))
    return found


def thaw(mountpoint: Path) -> None:
    runner.run(["fsfreeze", "-u", mountpoint], check=False)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[list[tuple[str, Path]]]:
    """Two writable loop disks, mounted here: 128 MiB with ext4 on partition 1 (as on a
    server: its metadata is cached under the partition, p2v reads the whole disk; data and
    a file to delete) and a 32 MiB NTFS through ntfs-3g (FUSE: fsfreeze cannot freeze it;
    this kernel has no vfat). Thawed and unmounted at the end."""
    made: list[tuple[str, Path]] = []
    nodes: list[Path] = []
    try:
        raw = tmp_path / "ext4.raw"
        with raw.open("wb") as f:
            f.truncate(128 * MiB)
        runner.run(["sfdisk", "-q", raw], input="start=2048, type=83\n")
        device = attach_loop(raw, writable=True, partitions=True)
        made.append((device, tmp_path / "mnt-ext4"))
        nodes = make_partition_nodes(device)
        runner.run(["mkfs.ext4", "-q", "-b", "4096", nodes[0]])
        made[0][1].mkdir()
        runner.run(["mount", nodes[0], made[0][1]])
        raw = tmp_path / "ntfs.raw"
        with raw.open("wb") as f:
            f.truncate(32 * MiB)
        runner.run(["mkntfs", "-Q", "-F", raw])
        device = attach_loop(raw, writable=True)
        made.append((device, tmp_path / "mnt-ntfs"))
        made[1][1].mkdir()
        runner.run(["ntfs-3g", device, made[1][1]])
        ext4 = made[0][1]
        (ext4 / "doomed").write_bytes(os.urandom(24 * MiB))
        (ext4 / "kept").write_bytes(os.urandom(8 * MiB))
        (made[1][1] / "note.txt").write_text("ntfs\n")
        os.sync()
        yield made
    finally:
        for device, mountpoint in reversed(made):
            if mountpoint.exists():
                thaw(mountpoint)
                runner.run(["umount", mountpoint], check=False)
            detach_loop(device)
        for node in nodes:
            node.unlink(missing_ok=True)


def test_sync_sends_changed_chunks_and_zeroes_dropped_ones(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    write_random_disk(raw, 48 * MiB, 40 * MiB)
    out = tmp_path / "out"
    with LoopSource.from_files([raw], writable=True) as ep, open_source(ep) as source:
        (device,) = ep.disks
        copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out, name="d",
                                       chunk_size=MiB))
        image = out / f"d-{Path(device).name}.qcow2"
        for reader, changes in (("python3", [(3 * MiB + 7, os.urandom(100)),
                                             (20 * MiB, os.urandom(MiB + 5)),
                                             (44 * MiB, os.urandom(MiB)),     # newly used
                                             (10 * MiB, bytes(MiB))]),        # now zero
                                ("sh", [(30 * MiB + 1, b"sh reader"), (11 * MiB, bytes(MiB))])):
            with open(device, "r+b") as disk:
                for offset, data in changes:
                    disk.seek(offset)
                    disk.write(data)
                os.fsync(disk.fileno())
            seen: list[dict[str, object]] = []
            result = sync(source, SyncRequest(output_dir=out, name="d", reader=reader),
                          seen.append)
            (d,) = result.disks
            assert d.reader == reader
            assert identical(raw, image), reader
            if reader == "python3":
                assert (d.changed_chunks, d.dropped_chunks) == (4, 1)   # 3, 20, 21, 44 | 10
                assert d.changed_bytes == 5 * MiB
                # the changed data once, plus the hash list (about 70 bytes a chunk)
                assert 4 * MiB < d.wire_bytes < 4 * MiB + 48 * 120
            else:
                assert (d.changed_chunks, d.dropped_chunks) == (1, 1)
            assert [e["event"] for e in seen][:2] == ["sync-start", "sync-delta"]
        manifest = json.loads((out / f"{image.name}.manifest.json").read_text())
        assert len(manifest["syncs"]) == 2 and manifest["chunk_hashes"][10] is None
        # A kill between the new manifest and the journal's removal leaves a stale
        # journal beside a complete image: the next pass drops it and runs.
        stale = image.with_name(image.name + ".sync-journal")
        stale.write_text(json.dumps({"schema": "p2v.sync-journal/1", "chunks_digest": "old"})
                         + '\n{"i": 3, "h": "dirty"}\n')
        again = sync(source, SyncRequest(output_dir=out, name="d"))
        assert again.changed_bytes == 0 and again.wire_bytes < 48 * 120
        assert not list(out.glob("*.part")) and not list(out.glob("*.sync-journal"))


def test_sync_killed_resumes_and_copy_will_not_restart_it(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    write_random_disk(raw, 64 * MiB, 64 * MiB)
    out = tmp_path / "out"
    with LoopSource.from_files([raw], writable=True) as ep:
        (device,) = ep.disks
        with open_source(ep) as source:
            copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out, name="k",
                                           chunk_size=MiB))
        with open(device, "r+b") as disk:
            disk.write(os.urandom(40 * MiB))
            os.fsync(disk.fileno())
        image = out / f"k-{Path(device).name}.qcow2"
        journal = image.with_name(image.name + ".sync-journal")
        argv = [sys.executable, "-m", "p2v", "sync", *ssh_args(ep), "--output-dir", str(out),
                "--name", "k", "--bandwidth-limit", "4M", "--no-compress"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and any(json.loads(line).get("h") not in (None, "dirty")
                                        for line in journal.read_text().splitlines()[1:]
                                        if line.endswith("}")):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the sync ended before it could be killed"
        assert not image.exists() and image.with_name(image.name + ".part").exists()
        # A copy now would throw the image away: it refuses and names the sync.
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "k",
                         "--disk", device]) == ExitCode.USAGE
        with open_source(ep) as source:
            result = sync(source, SyncRequest(output_dir=out, name="k"))
        (d,) = result.disks
        assert d.resumed and 0 < d.changed_chunks < 40
        assert identical(raw, image)


def test_freeze_gives_a_clean_filesystem_and_hooks_run_around_it(
        mounted: list[tuple[str, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (device, mnt), _ = mounted
    out = tmp_path / "out"
    trace = tmp_path / "hooks.log"
    with SshServer([device]) as ep:
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "f",
                         "--disk", device, "--chunk-size", "1", "--json"]) == 0
        doomed_chunks = whole_chunks(mnt / "doomed", MiB)
        assert len(doomed_chunks) >= 16, doomed_chunks     # most of its 24 MiB
        new = os.urandom(6 * MiB)
        (mnt / "new").write_bytes(new)
        fresh = os.urandom(40 * MiB)         # more than is freed: into chunks free before
        (mnt / "fresh").write_bytes(fresh)
        # Allocated (ext4 allocates at writeback) while doomed still holds its blocks, then
        # doomed goes: its chunks end up free whatever the timing. Unlinked first, whether
        # fresh reused them hung on ext4's 5 s journal commit, a race with the clock.
        os.sync()
        (mnt / "doomed").unlink()
        os.sync()
        capsys.readouterr()
        before = f"echo before >> {tmp_path}/hooks.log; echo stopping the database"
        after = f"echo after >> {tmp_path}/hooks.log"
        assert cli.main(["sync", *ssh_args(ep), "--output-dir", str(out), "--name", "f",
                         "--freeze", "--freeze-timeout", "60", "--before-final", before,
                         "--after-final", after, "--json"]) == 0, capsys.readouterr().err
        seen = events(capsys.readouterr().out)
        assert not is_frozen(mnt)
    assert trace.read_text() == "before\nafter\n"
    kinds = [e["event"] for e in seen]
    assert kinds.index("frozen") < kinds.index("sync-done") < kinds.index("thawed")
    frozen = next(e for e in seen if e["event"] == "frozen")
    assert frozen["frozen"] == [str(mnt)] and frozen["not_frozen"] == []
    done = next(e for e in seen if e["event"] == "sync-done")
    # Every chunk doomed filled alone is free now: dropped (free neighbours may add some).
    assert isinstance(done["dropped_chunks"], int)
    assert done["dropped_chunks"] >= len(doomed_chunks)
    result = seen[-1]
    assert result["event"] == "sync-result"
    assert isinstance(result["freeze"], dict) and 0 < result["freeze"]["freeze_s"] < 30
    # Frozen, the filesystem was clean on disk: no journal replay needed.
    copy = tmp_path / "copy.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", out / f"f-{Path(device).name}.qcow2", copy])
    part = tmp_path / "part.raw"
    runner.run(["dd", f"if={copy}", f"of={part}", "bs=1M", "skip=1", "status=none"])
    assert runner.run(["e2fsck", "-fn", part], check=False).returncode == 0
    dump = tmp_path / "dump"
    for name, data in (("new", new), ("fresh", fresh)):
        runner.run(["debugfs", "-R", f"dump /{name} {dump}", part])
        assert hashlib.sha256(dump.read_bytes()).digest() == hashlib.sha256(data).digest()
    listing = runner.run(["debugfs", "-R", "ls -l /", part]).stdout
    assert "doomed" not in listing and "kept" in listing


def test_freeze_refuses_an_unfreezable_fs_and_a_failed_hook_stops_before_freezing(
        mounted: list[tuple[str, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (ext4_dev, ext4), (ntfs_dev, ntfs) = mounted
    out = tmp_path / "out"
    trace = tmp_path / "hooks.log"
    with SshServer([ext4_dev, ntfs_dev]) as ep:
        base = ["sync", *ssh_args(ep), "--output-dir", str(out), "--name", "u"]
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "u",
                         "--disk", ext4_dev, "--disk", ntfs_dev]) == 0
        capsys.readouterr()
        # A failing before-final hook: nothing frozen or synced, the after-final hook ran.
        assert cli.main([*base, "--freeze", "--before-final", "echo no; exit 3",
                         "--after-final", f"echo after >> {trace}"]) == ExitCode.FAILURE
        err = capsys.readouterr().err
        assert "before-final hook failed" in err and "exit code 3" in err, err
        assert trace.read_text() == "after\n"
        assert not list(out.glob("*.sync-journal"))
        # NTFS (FUSE) cannot be frozen: plain --freeze refuses, names it, and leaves ext4 thawed.
        assert cli.main([*base, "--freeze"]) == ExitCode.USAGE
        err = capsys.readouterr().err
        assert f"cannot freeze {ntfs} (fuseblk)" in err and "best-effort" in err, err
        assert not is_frozen(ext4)
        assert not list(out.glob("*.sync-journal"))
        # best-effort goes on, freezes ext4 and says what was not frozen.
        assert cli.main([*base, "--freeze=best-effort"]) == 0
        captured = capsys.readouterr()
        assert f"NOT frozen (not consistent): {ntfs} (fuseblk)" in captured.out, captured
        assert f": {ext4}" in captured.out.splitlines()[-3], captured.out
        assert not is_frozen(ext4)


def test_cut_link_while_frozen_the_source_thaws_itself(
        mounted: list[tuple[str, Path]], tmp_path: Path) -> None:
    (device, mnt), _ = mounted
    out = tmp_path / "out"
    with SshServer([device]) as ep:
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "c",
                         "--disk", device]) == 0
        (mnt / "more").write_bytes(os.urandom(16 * MiB))
        proxy = LinkProxy(ep.port)
        fields = ep.known_hosts.read_text().split()
        known = tmp_path / "kh"
        known.write_text(f"[127.0.0.1]:{proxy.port} {fields[1]} {fields[2]}\n")
        frozen_at: list[float] = []

        def emit(event: dict[str, object]) -> None:
            if event["event"] == "frozen":
                frozen_at.append(time.monotonic())
                proxy.cut_now()

        try:
            with pytest.raises(P2VError):
                with SshSource.open(f"ssh://{ep.user}@127.0.0.1:{proxy.port}",
                                    SshOptions(identity=ep.key, known_hosts=known,
                                               use_agent=False, ssh_config=Path("/dev/null"),
                                               connect_timeout=5)) as source:
                    sync(source, SyncRequest(output_dir=out, name="c", freeze="strict",
                                             freeze_timeout=10), emit)
            assert frozen_at, "the link was never cut"
            # p2v could not thaw over the dead link: the source is still frozen ...
            assert is_frozen(mnt)
            # ... until its own timer thaws it, within the timeout.
            try:
                thawed = thawed_at(mnt, timeout=frozen_at[0] + 20 - time.monotonic())
            except subprocess.TimeoutExpired:
                raise AssertionError("the source stayed frozen") from None
            assert thawed - frozen_at[0] >= 8
        finally:
            proxy.close()
            thaw(mnt)


def test_ctrl_c_while_frozen_thaws_at_once_and_runs_the_after_hook(
        mounted: list[tuple[str, Path]], tmp_path: Path) -> None:
    (device, mnt), _ = mounted
    out = tmp_path / "out"
    trace = tmp_path / "hooks.log"
    with SshServer([device]) as ep:
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "i",
                         "--disk", device]) == 0
        (mnt / "more").write_bytes(os.urandom(32 * MiB))
        argv = [sys.executable, "-m", "p2v", "sync", *ssh_args(ep), "--output-dir", str(out),
                "--name", "i", "--freeze", "--freeze-timeout", "300", "--bandwidth-limit",
                "2M", "--no-compress", "--after-final", f"echo after >> {trace}", "--json"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if json.loads(line)["event"] == "frozen":
                    break
            assert is_frozen(mnt)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == ExitCode.INTERRUPTED, err
            assert not is_frozen(mnt)           # thawed by p2v, not 300 s later by the timer
            assert thaw_timers(mnt) == [], "the thaw timer was left running"
            assert trace.read_text() == "after\n"
            # The interrupted pass resumes: the sync journal is there.
            assert list(out.glob("*.sync-journal"))
        finally:
            if proc.poll() is None:
                proc.kill()
            thaw(mnt)
