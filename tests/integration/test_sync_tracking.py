"""Write tracking between sync passes on loop disks behind a real sshd, with this machine's
own kernel as the source's: the tracer (block:block_rq_complete in a tracing instance of
p2v's own) runs over the SSH session exactly as on a server.

What a user relies on: a tracked pass reads only the chunks written since the last one;
a write in any window of a pass ends up in the image; lost events (a buffer overrun made
real, tracing switched off, the tracer killed) fall back to a rehash that says so, never
to a stale image; the frozen pass reads only what was written since the pass before, the
freeze's own writeback included; and a p2v killed mid-pass leaves the source's tracing as
it was (instance gone, tracefs unmounted if p2v mounted it).

The loop devices are on this machine, so "on the source" checks (tracefs, the instance,
the tracer's processes) run here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from copy_helpers import identical, open_source, ssh_args, wait_closed
from loop_sources import (
    LoopSource,
    SshServer,
    attach_loop,
    detach_loop,
    make_partition_nodes,
    write_random_disk,
)

from p2v import runner
from p2v.source.tracker import NOT_SINCE_COPY
from p2v.transfer.copy import CopyRequest, copy_disks
from p2v.transfer.sync import SyncRequest, sync, write_tracker

MiB = 1 << 20



def tracefs_state() -> tuple[str | None, frozenset[str]]:
    """Where tracefs is mounted (None: nowhere) and the p2v instances in it."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "tracefs":
            instances = Path(fields[1]) / "instances"
            return fields[1], frozenset(p.name for p in instances.glob("p2v-*"))
    return None, frozenset()


def tracer_processes() -> list[int]:
    """The tracer's watchdogs and readers still running on this (the source) machine."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.startswith("p2v-trace-watchdog-") for a in argv) or (
                argv[0] == "cat" and any("/instances/p2v-" in a for a in argv)):
            found.append(int(cmdline.parent.name))
    return found


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():                                        # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def reader_pid(instance: str) -> int:
    """The source-side `cat INSTANCE/trace_pipe` of a tracker."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[:2] == ["cat", f"{instance}/trace_pipe"]:
            return int(cmdline.parent.name)
    raise AssertionError(f"no reader of {instance}/trace_pipe")


def write_at(device: str, changes: list[tuple[int, bytes]]) -> None:
    with open(device, "r+b") as disk:
        for offset, data in changes:
            disk.seek(offset)
            disk.write(data)
        os.fsync(disk.fileno())


@pytest.fixture
def tracefs_untouched() -> Iterator[None]:
    """The test leaves tracefs (mounted or not) and its p2v instances as it found them."""
    before = tracefs_state()
    yield
    wait_for(lambda: tracefs_state() == before and not tracer_processes(), 20,
             f"tracing not back as it was: {tracefs_state()} (was {before}), "
             f"tracer processes {tracer_processes()}")


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[LoopSource, Path, Path]]:
    """A 64 MiB writable loop disk (48 MiB random data), copied at 1 MiB chunks."""
    raw = tmp_path / "disk.raw"
    write_random_disk(raw, 64 * MiB, 48 * MiB)
    out = tmp_path / "out"
    with LoopSource.from_files([raw], writable=True) as ep:
        with open_source(ep) as source:
            copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out, name="t",
                                           chunk_size=MiB))
        yield ep, raw, out / f"t-{Path(ep.disks[0]).name}.qcow2"


def test_tracked_passes_read_only_the_written_chunks(
        loop_disk: tuple[LoopSource, Path, Path], tracefs_untouched: None) -> None:
    ep, raw, image = loop_disk
    (device,) = ep.disks
    request = SyncRequest(output_dir=image.parent, name="t", compress=False)
    write_at(device, [(7 * MiB + 5, os.urandom(100))])    # before tracking: the rehash finds it
    with open_source(ep) as source, write_tracker(source, request) as tracker:
        assert tracker.instance is not None and Path(tracker.instance).is_dir()
        first = sync(source, request, tracker=tracker).disks[0]
        assert not first.tracked and first.rehash_why == NOT_SINCE_COPY
        assert first.changed_chunks == 1 and identical(raw, image)
        write_at(device, [(3 * MiB + 7, os.urandom(100)),
                          (20 * MiB - 2048, os.urandom(4096)),      # across 19 and 20
                          (50 * MiB, os.urandom(MiB)),              # newly used
                          (10 * MiB, bytes(MiB))])                  # now zero
        # A write left in the device's page cache (kept open: the last close would write it
        # out): not on the disk yet, no block event so far.
        with open(device, "r+b") as cached:
            cached.seek(40 * MiB + 3)
            cached.write(b"cached")
            cached.flush()
            second = sync(source, request, tracker=tracker).disks[0]
        assert second.tracked and second.rehash_why is None
        assert second.read_chunks == 6                              # 3, 10, 19, 20, 40, 50
        assert (second.changed_chunks, second.dropped_chunks) == (5, 1)
        # The five written data chunks once on the wire; the zero chunk costs a few bytes.
        assert 5 * MiB <= second.wire_bytes < 5 * MiB + 64 * 1024, second.wire_bytes
        assert identical(raw, image)
        third = sync(source, request, tracker=tracker).disks[0]
        assert third.tracked and third.read_chunks == 0 and third.wire_bytes < 1024
    manifest = json.loads(image.with_name(image.name + ".manifest.json").read_text())
    assert [s["tracked"] for s in manifest["syncs"]] == [False, True, True]


def _writer(device: str, chunks: list[int], stop: threading.Event, log: list[int]) -> None:
    """Small synced writes into random chunks until stopped (each write listed)."""
    rng = random.Random(18)
    fd = os.open(device, os.O_WRONLY)
    try:
        while not stop.is_set():
            chunk = rng.choice(chunks)
            os.pwrite(fd, os.urandom(4096), chunk * MiB + rng.randrange(0, MiB - 4096, 512))
            os.fdatasync(fd)
            log.append(chunk)
            time.sleep(0.01)
    finally:
        os.close(fd)


def test_a_write_in_any_window_of_a_tracked_pass_reaches_the_image(
        loop_disk: tuple[LoopSource, Path, Path], tracefs_untouched: None) -> None:
    """The pass reads 24 written chunks at 4 MiB/s (about 6 s) while writers keep writing:
    into chunks before the pass reads them, while it reads them (one chunk hammered the
    whole time) and after it read them, and into chunks outside its set. The next pass must
    carry every one of those writes: the image equals the disk."""
    ep, raw, image = loop_disk
    (device,) = ep.disks
    request = SyncRequest(output_dir=image.parent, name="t", compress=False)
    slow = replace(request, bandwidth_limit=4 * MiB)
    with open_source(ep) as source, write_tracker(source, request) as tracker:
        sync(source, request, tracker=tracker)
        write_at(device, [(i * MiB, os.urandom(4096)) for i in range(24)])
        stop = threading.Event()
        logs: list[list[int]] = [[], []]
        writers = [threading.Thread(target=_writer, args=(device, chunks, stop, log))
                   for chunks, log in ((list(range(24)) + [40, 41, 60], logs[0]),
                                       ([12], logs[1]))]     # 12: read mid-pass
        for writer in writers:
            writer.start()
        try:
            started = time.monotonic()
            during = sync(source, slow, tracker=tracker).disks[0]
            took = time.monotonic() - started
        finally:
            stop.set()
            for writer in writers:
                writer.join()
        assert during.tracked and during.read_chunks >= 24 and took > 3, (during, took)
        assert len(logs[0]) > 50 and len(logs[1]) > 50, "the writers hardly wrote"
        # Not consistent yet (writes after their chunk was read); the next pass catches up.
        final = sync(source, request, tracker=tracker).disks[0]
        assert final.tracked, final.rehash_why
        assert final.read_chunks > 0
    assert identical(raw, image)


def test_lost_events_fall_back_to_a_rehash_that_says_why(
        loop_disk: tuple[LoopSource, Path, Path], tracefs_untouched: None) -> None:
    ep, raw, image = loop_disk
    (device,) = ep.disks
    request = SyncRequest(output_dir=image.parent, name="t", compress=False)
    with open_source(ep) as source:
        with write_tracker(source, request, buffer_kb=4) as tracker:
            assert tracker.instance is not None
            instance = Path(tracker.instance)
            sync(source, request, tracker=tracker)
            assert sync(source, request, tracker=tracker).disks[0].tracked
            # A buffer overrun made real: the tracer's reader stopped while a burst of 3000
            # writes goes into a buffer of a few KiB.
            reader = reader_pid(str(instance))
            os.kill(reader, signal.SIGSTOP)
            try:
                runner.run(["dd", "if=/dev/urandom", f"of={device}", "bs=4k", "count=3000",
                            f"seek={30 * 256}", "oflag=direct", "conv=notrunc",
                            "status=none"])
            finally:
                os.kill(reader, signal.SIGCONT)
            overrun = sync(source, request, tracker=tracker).disks[0]
            assert not overrun.tracked and overrun.rehash_why is not None
            assert "overran" in overrun.rehash_why, overrun.rehash_why
            assert overrun.changed_chunks >= 11 and identical(raw, image)
            # A loss taints the interval after it too; then tracking is trusted again.
            sync(source, request, tracker=tracker)
            assert sync(source, request, tracker=tracker).disks[0].tracked
            # Tracing switched off from outside: the writes then are not seen; the
            # watchdog's next heartbeat fails, tracking stops for good and cleans up.
            (instance / "tracing_on").write_text("0\n")
            write_at(device, [(33 * MiB, os.urandom(4096))])
            wait_for(lambda: not instance.exists(), 15, "tracing off was not noticed")
            off = sync(source, request, tracker=tracker).disks[0]
            assert not off.tracked and off.rehash_why is not None
            assert "switched off" in off.rehash_why, off.rehash_why
            assert off.changed_chunks == 1 and identical(raw, image)
        with write_tracker(source, request) as tracker:
            assert tracker.instance is not None
            sync(source, request, tracker=tracker)
            assert sync(source, request, tracker=tracker).disks[0].tracked
            # The tracer's reader killed on the source (as when the session drops):
            # every later pass rehashes, the watchdog removes the instance.
            os.kill(reader_pid(tracker.instance), signal.SIGKILL)
            write_at(device, [(34 * MiB, os.urandom(4096))])
            wait_for(lambda: tracker.dead is not None, 15, "the killed reader went unnoticed")
            for _ in range(2):
                gone = sync(source, request, tracker=tracker).disks[0]
                assert not gone.tracked and gone.rehash_why is not None
                assert "reader on the source ended" in gone.rehash_why, gone.rehash_why
            assert identical(raw, image)
            wait_for(lambda: not Path(str(tracker.instance)).exists(), 15,
                     "the instance outlived its reader")
    manifest = json.loads(image.with_name(image.name + ".manifest.json").read_text())
    assert [s["tracked"] for s in manifest["syncs"]] == [
        False, True, False, False, True, False, False, True, False, False]


def test_sigkill_mid_pass_leaves_the_source_tracing_as_it_was(
        loop_disk: tuple[LoopSource, Path, Path], tracefs_untouched: None) -> None:
    ep, raw, image = loop_disk
    (device,) = ep.disks
    write_at(device, [(0, os.urandom(40 * MiB))])
    journal = image.with_name(image.name + ".sync-journal")
    before = tracefs_state()
    argv = [sys.executable, "-m", "p2v", "sync", *ssh_args(ep), "--output-dir",
            str(image.parent), "--name", "t", "--passes", "3", "--bandwidth-limit", "2M",
            "--no-compress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Killed in its first pass: the tracer runs, the pass is writing the image.
        wait_for(lambda: proc.poll() is not None or (
            len(tracefs_state()[1]) > len(before[1]) and journal.exists()), 60,
            "the sync never started tracking")
        assert proc.poll() is None, proc.communicate()[1]
        assert tracer_processes()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The source cleans up by itself: the reader dies on the closed link, the
        # watchdog removes the instance and unmounts tracefs if p2v mounted it.
        wait_for(lambda: tracefs_state() == before and not tracer_processes(), 15,
                 f"tracing left on: {tracefs_state()} (was {before}), "
                 f"processes {tracer_processes()}")
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_closed(image.with_name(image.name + ".part"))
    with open_source(ep) as source:           # the rerun resumes, as after any kill
        result = sync(source, SyncRequest(output_dir=image.parent, name="t"))
    assert result.disks[0].resumed and identical(raw, image)


def test_ctrl_c_mid_pass_switches_tracing_off_before_p2v_exits(
        loop_disk: tuple[LoopSource, Path, Path], tracefs_untouched: None) -> None:
    """SIGINT, unlike SIGKILL, lets p2v clean up itself: by the time it has exited
    (130), the instance is gone and tracefs is as it was, with no wait for a timer."""
    ep, _, image = loop_disk
    (device,) = ep.disks
    write_at(device, [(0, os.urandom(40 * MiB))])
    before = tracefs_state()
    argv = [sys.executable, "-m", "p2v", "sync", *ssh_args(ep), "--output-dir",
            str(image.parent), "--name", "t", "--passes", "2", "--bandwidth-limit", "2M",
            "--no-compress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: proc.poll() is not None or (
            len(tracefs_state()[1]) > len(before[1])
            and image.with_name(image.name + ".sync-journal").exists()), 60,
            "the sync never started tracking")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert tracefs_state() == before and not tracer_processes()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tracing_not_available_means_every_pass_rehashes(
        tmp_path: Path, tracefs_untouched: None) -> None:
    """A source where tracefs is not mounted and cannot be (a `mount` on the session's PATH
    that refuses, as on a locked-down server): the passes run, rehashed, and say why."""
    if tracefs_state()[0] is not None:
        pytest.skip("tracefs is mounted on this machine: the tracer would not mount it")
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "mount").write_text("#!/bin/sh\necho 'mount: permission denied' >&2\nexit 32\n")
    (shims / "mount").chmod(0o755)
    raw = tmp_path / "disk.raw"
    write_random_disk(raw, 16 * MiB, 8 * MiB)
    out = tmp_path / "out"
    with LoopSource.from_files([raw], writable=True,
                               session_path=f"{shims}:{os.environ['PATH']}") as ep, \
            open_source(ep) as source:
        copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out, name="n",
                                       chunk_size=MiB))
        request = SyncRequest(output_dir=out, name="n")
        with write_tracker(source, request) as tracker:
            assert tracker.dead is not None and "cannot be mounted" in tracker.dead
            for _ in range(2):
                write_at(ep.disks[0], [(3 * MiB, os.urandom(4096))])
                d = sync(source, request, tracker=tracker).disks[0]
                assert not d.tracked and d.rehash_why is not None
                assert "cannot be mounted" in d.rehash_why and d.changed_chunks == 1
        assert identical(raw, out / f"n-{Path(ep.disks[0]).name}.qcow2")


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 128 MiB writable loop disk with ext4 on partition 1, mounted here."""
    raw = tmp_path / "ext4.raw"
    with raw.open("wb") as f:
        f.truncate(128 * MiB)
    runner.run(["sfdisk", "-q", raw], input="start=2048, type=83\n")
    device = attach_loop(raw, writable=True, partitions=True)
    nodes: list[Path] = []
    mnt = tmp_path / "mnt"
    try:
        nodes = make_partition_nodes(device)
        # No lazy init: its background zeroing would be writes of its own during the test.
        runner.run(["mkfs.ext4", "-q", "-b", "4096", "-E",
                    "lazy_itable_init=0,lazy_journal_init=0", nodes[0]])
        mnt.mkdir()
        runner.run(["mount", nodes[0], mnt])
        (mnt / "kept").write_bytes(os.urandom(8 * MiB))
        os.sync()
        yield device, mnt
    finally:
        runner.run(["fsfreeze", "-u", mnt], check=False)
        runner.run(["umount", mnt], check=False)
        detach_loop(device)
        for node in nodes:
            node.unlink(missing_ok=True)


def test_the_frozen_pass_reads_only_what_was_written_since_the_last_pass(
        ext4_disk: tuple[str, Path], tmp_path: Path, tracefs_untouched: None) -> None:
    """The new file is written but not synced: only the freeze writes it out, so it is in
    the image only if the frozen pass's cut comes after the freeze's writeback."""
    device, mnt = ext4_disk
    out = tmp_path / "out"
    with SshServer([device]) as ep:
        with open_source(ep) as source:
            copy_disks(source, CopyRequest(disks=(device,), output_dir=out, name="f",
                                           chunk_size=MiB))
            request = SyncRequest(output_dir=out, name="f")
            with write_tracker(source, request) as tracker:
                assert not sync(source, request, tracker=tracker).disks[0].tracked
                new = os.urandom(3 * MiB)
                (mnt / "new").write_bytes(new)          # in the page cache only
                final = sync(source, replace(request, freeze="strict", freeze_timeout=60),
                             tracker=tracker)
    (d,) = final.disks
    assert d.tracked, d.rehash_why
    # The file's 3 MiB (4 chunks at most), the inode table, bitmaps, the journal: a few
    # chunks of the 128, not a rehash of the used data.
    assert 3 <= d.read_chunks <= 16, d.read_chunks
    assert final.freeze is not None and final.freeze.frozen
    assert 0 < (final.freeze.seconds or 0) < 30
    image = out / f"f-{Path(device).name}.qcow2"
    copy = tmp_path / "copy.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", image, copy])
    part = tmp_path / "part.raw"
    runner.run(["dd", f"if={copy}", f"of={part}", "bs=1M", "skip=1", "status=none"])
    assert runner.run(["e2fsck", "-fn", part], check=False).returncode == 0
    dump = tmp_path / "dump"
    runner.run(["debugfs", "-R", f"dump /new {dump}", part])
    assert hashlib.sha256(dump.read_bytes()).digest() == hashlib.sha256(new).digest()


# A p2v that traces and then hangs: the link stays up (no end of stream reaches the source),
# only the renewals stop.
_HANGING = """
import sys, time
from pathlib import Path
from p2v.source.ssh import SshOptions, SshSource
from p2v.source.tracker import WriteTracker
url, key, known, device = sys.argv[1:5]
source = SshSource.open(url, SshOptions(identity=Path(key), known_hosts=Path(known),
                                        use_agent=False, ssh_config=Path("/dev/null")))
tracker = WriteTracker(source, {device: 1 << 20}, grace=8)
tracker.start()
print(tracker.instance if tracker.dead is None else "dead: " + tracker.dead, flush=True)
time.sleep(600)
"""


def test_a_p2v_that_stops_renewing_is_cleaned_up_after_the_grace(
        loop_disk: tuple[LoopSource, Path, Path], tracefs_untouched: None) -> None:
    """SIGSTOP, not SIGKILL: the session stays open, so the stream never ends on the
    source; the watchdog's deadline (grace 8 s) alone removes the instance."""
    ep, _, _ = loop_disk
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGING, f"ssh://{ep.user}@{ep.host}:{ep.port}", str(ep.key),
         str(ep.known_hosts), ep.disks[0]], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        instance = Path(proc.stdout.readline().strip())
        assert instance.is_dir(), instance
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(3)
        assert instance.is_dir(), "removed before the deadline: not the watchdog's doing"
        wait_for(lambda: not instance.exists(), 30, "the watchdog never fired")
        assert 6 <= time.monotonic() - stopped <= 25
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
