"""The write tracker's bookkeeping as logic: sector ranges to chunk indexes (partitions,
edges), intervals closed by cuts, and every way an interval is declared lost (never
trusted) — the first one after the copy, a LOST notice, a missing heartbeat, a device the
trace cannot see. The tracer itself runs on a real kernel in
tests/integration/test_sync_tracking.py."""

from __future__ import annotations

from p2v.source.protocol import RemoteResult
from p2v.source.tracker import (
    NOT_SINCE_COPY,
    Intervals,
    TracedDisk,
    WriteTracker,
    chunk_span,
    lost_counters,
    parse_disk,
)

MiB = 1 << 20
SECTORS_PER_MIB = MiB // 512


def test_a_write_marks_every_chunk_it_touches_and_nothing_outside_the_device() -> None:
    disk = TracedDisk("/dev/sda", MiB, (8, 0))
    assert list(chunk_span(disk, 0, 1)) == [0]
    # 4 KiB straddling the 1 MiB boundary: both chunks.
    assert list(chunk_span(disk, SECTORS_PER_MIB - 4, 8)) == [0, 1]
    # Ending exactly on a boundary does not touch the next chunk.
    assert list(chunk_span(disk, SECTORS_PER_MIB, SECTORS_PER_MIB)) == [1]
    assert list(chunk_span(disk, 5, 0)) == []                # a flush: no data
    # A partition's writes arrive on the whole disk, from its start on.
    part = TracedDisk("/dev/sda2", MiB, (8, 0), offset=2048)
    assert list(chunk_span(part, 2048, 8)) == [0]
    assert list(chunk_span(part, 0, 2048)) == []             # before the partition
    assert list(chunk_span(part, 2040, 16)) == [0]           # across its start


def test_the_header_names_traced_and_untraced_devices() -> None:
    sizes = {"/dev/loop1": MiB, "/dev/dm-0": 4 * MiB}
    assert parse_disk("D /dev/loop1 7:1 0 1", sizes) == TracedDisk("/dev/loop1", MiB, (7, 1))
    untraced = parse_disk("D /dev/dm-0 - 0 0 not a request-based disk (device-mapper, "
                          "md...): its writes are not seen", sizes)
    assert untraced is not None and untraced.dev is None
    assert untraced.why is not None and "device-mapper" in untraced.why
    assert parse_disk("D /dev/other 8:0 0 1", sizes) is None    # not asked for
    assert parse_disk("tracing_mark_write: x", sizes) is None


def test_the_first_interval_is_never_trusted_and_later_ones_are() -> None:
    intervals = Intervals([TracedDisk("/dev/sda", MiB, (8, 0))])
    intervals.write((8, 0), 0, 8)
    first = intervals.cut()["/dev/sda"]
    assert first.chunks is None and first.why == NOT_SINCE_COPY
    intervals.write((8, 0), 3 * SECTORS_PER_MIB, 8)
    intervals.write((8, 16), 0, 8)                  # another disk: not ours
    second = intervals.cut()["/dev/sda"]
    assert second.tracked and second.chunks == frozenset({3})
    assert intervals.cut()["/dev/sda"].chunks == frozenset()     # nothing written since


def test_a_lost_interval_rehashes_and_the_next_one_is_trusted_again() -> None:
    intervals = Intervals([TracedDisk("/dev/sda", MiB, (8, 0)),
                           TracedDisk("/dev/md0", MiB, None, why="not request-based")])
    intervals.cut()
    intervals.write((8, 0), 0, 8)
    intervals.lose("the trace buffer overran")
    intervals.lose("a second reason")               # the first one is kept
    lost = intervals.cut()
    assert lost["/dev/sda"].chunks is None and lost["/dev/sda"].why == "the trace buffer overran"
    again = intervals.cut()
    assert again["/dev/sda"].chunks == frozenset()
    # A device the trace cannot see is never tracked.
    assert again["/dev/md0"].chunks is None and again["/dev/md0"].why == "not request-based"


def test_the_loss_counters_of_every_cpu_are_summed() -> None:
    stats = ("entries: 3\noverrun: 1800\ncommit overrun: 7\nbytes: 0\ndropped events: 2\n"
             "entries: 0\noverrun: 5\ncommit overrun: 0\ndropped events: 0\non 1 1\n")
    assert lost_counters(stats) == 1807         # commit overrun is not a lost event


class _Stub:
    """A tracker's line handling without a source: only `_line` is exercised."""

    target = type("T", (), {"host": "db01"})()


def _tracker() -> WriteTracker:
    tracker = WriteTracker(_Stub(), {"/dev/sda": MiB})  # type: ignore[arg-type]
    tracker.hex = "abc"
    tracker._intervals = Intervals([TracedDisk("/dev/sda", MiB, (8, 0))])
    tracker._intervals.cut()                    # past the first interval
    return tracker


def test_trace_lines_fold_into_the_interval_and_markers_close_it() -> None:
    tracker = _tracker()
    tracker._line("tracing_mark_write: p2v-abc-live 4242")
    assert tracker._live and tracker._dog == "4242"
    tracker._line("block_rq_complete: 8,0 WS () 2048 + 8 be,0,4 [0]")
    tracker._line("  kworker/1:1H-99 [001] ..... 12.5: block_rq_complete: 8,0 D () "
                  f"{3 * SECTORS_PER_MIB} + 8 [0]")       # with context: found as well
    tracker._line("tracing_mark_write: p2v-other-cut 1")   # someone else's marker
    tracker._line("tracing_mark_write: p2v-abc-beat 1")
    tracker._line("tracing_mark_write: p2v-abc-cut 1")
    assert tracker._cuts[1]["/dev/sda"].chunks == frozenset({1, 3})


def test_a_lost_notice_or_a_missing_heartbeat_makes_the_interval_lost() -> None:
    tracker = _tracker()
    tracker._line("tracing_mark_write: p2v-abc-beat 1")
    tracker._line("CPU:1 [LOST 1800 EVENTS]")
    tracker._line("tracing_mark_write: p2v-abc-cut 1")
    lost = tracker._cuts[1]["/dev/sda"]
    assert lost.chunks is None and lost.why is not None and "1800 events lost" in lost.why
    tracker._line("tracing_mark_write: p2v-abc-beat 2")
    tracker._line("tracing_mark_write: p2v-abc-beat 5")    # 3 and 4 never came
    tracker._line("tracing_mark_write: p2v-abc-cut 2")
    gap = tracker._cuts[2]["/dev/sda"]
    assert gap.chunks is None and gap.why is not None and "heartbeats 3..4" in gap.why
    tracker._line("tracing_mark_write: p2v-abc-beat 6")
    tracker._line("tracing_mark_write: p2v-abc-cut 3")
    assert tracker._cuts[3]["/dev/sda"].chunks == frozenset()


def test_a_tracker_that_never_started_answers_every_cut_with_a_lost_one() -> None:
    tracker = WriteTracker(_Stub(), {"/dev/sda": MiB})  # type: ignore[arg-type]
    tracker._dead = "tracefs is not mounted and cannot be mounted"
    cut = tracker.cut()["/dev/sda"]
    assert cut.chunks is None and cut.why == "tracefs is not mounted and cannot be mounted"


class _TraceSource:
    """Answers the tracker's cut commands as the source would: a mark comes back through
    the trace at once (fed to the tracker's line handling), the counters are set here."""

    target = type("T", (), {"host": "db01"})()

    def __init__(self) -> None:
        self.tracker: WriteTracker | None = None
        self.mark_status = 0
        self.lost = 0
        self.marked: list[list[str]] = []

    def run(self, argv: list[str], **_: object) -> RemoteResult:
        assert self.tracker is not None
        if "mark" in argv:
            self.marked.append(argv)
            if self.mark_status == 0:
                self.tracker._line(f"tracing_mark_write: {argv[argv.index('mark') + 2]}")
            return RemoteResult("mark", self.mark_status, b"", "")
        stats = f"overrun: {self.lost}\ndropped events: 0\non 1 1\n"
        return RemoteResult("stats", 0, stats.encode(), "")


def _cutting() -> tuple[WriteTracker, _TraceSource]:
    source = _TraceSource()
    tracker = WriteTracker(source, {"/dev/sda": MiB})  # type: ignore[arg-type]
    source.tracker = tracker
    tracker.instance, tracker._dog = "/sys/kernel/tracing/instances/p2v-abc", "42"
    tracker.hex = tracker.instance.rsplit("-", 1)[1]
    tracker.disks = [TracedDisk("/dev/sda", MiB, (8, 0))]
    tracker._intervals = Intervals(tracker.disks)
    return tracker, source


def test_a_cut_flushes_the_traced_devices_and_counters_grown_lose_two_intervals() -> None:
    tracker, source = _cutting()
    assert tracker.cut()["/dev/sda"].why == NOT_SINCE_COPY
    assert source.marked[0][-1] == "/dev/sda"        # the device's page cache written out
    tracker._line("block_rq_complete: 8,0 W () 0 + 8 [0]")
    assert tracker.cut()["/dev/sda"].chunks == frozenset({0})
    source.lost = 1800                                  # an overrun, counted at this cut
    overran = tracker.cut()["/dev/sda"]
    assert overran.chunks is None and overran.why is not None and "overran" in overran.why
    tainted = tracker.cut()["/dev/sda"]                 # may have lost events after the mark
    assert tainted.chunks is None and tainted.why is not None and "overran" in tainted.why
    assert tracker.cut()["/dev/sda"].chunks == frozenset()


def test_a_device_that_cannot_be_flushed_loses_the_pass_but_keeps_its_writes() -> None:
    tracker, source = _cutting()
    tracker.cut()
    tracker._line("block_rq_complete: 8,0 W () 4096 + 8 [0]")     # chunk 2
    source.mark_status = 4
    lost = tracker.cut()["/dev/sda"]
    assert lost.chunks is None and lost.why is not None and "page cache" in lost.why
    source.mark_status = 0                          # no marker went in: the interval went on
    assert tracker.cut()["/dev/sda"].chunks == frozenset({2})
