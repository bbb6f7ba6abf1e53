"""What convert, sync and batch show while they run: event sequences fed to the screens,
their output captured, on a pretend terminal (tqdm into a StringIO at a fixed width) and
off one (the plain lines a CI log gets)."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator

import pytest
from tqdm import tqdm

from p2v.cli.progress import Term, duration
from p2v.cli.screens import BatchScreen, ConvertScreen

GiB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_bar_left() -> Iterator[None]:
    yield
    assert not [b for b in getattr(tqdm, "_instances", ()) if not b.disable], \
        "a screen left a bar open"


def term(tty: bool, clock: Clock | None = None) -> tuple[Term, io.StringIO]:
    out = io.StringIO()
    return Term(out, tty=tty, ncols=110, tick=None, clock=clock or Clock(),
                mininterval=0), out


def copy_events(clock: Clock, *, resumed: int = 0) -> Iterator[dict[str, object]]:
    """A job's copy of one 4 GiB disk of 1024 chunks, 2 s per 64 chunks, then fix."""
    yield {"event": "stage-start", "stage": "copy"}
    yield {"event": "message", "stage": "copy", "text": "flushing the page cache"}
    yield {"event": "disk-start", "stage": "copy", "device": "/dev/sda", "image": "/w/a.qcow2",
           "size": 4 * GiB, "chunks": 1024, "resumed_chunks": resumed}
    for done in range(resumed + 64, 1025, 64):
        clock.now += 2
        yield {"event": "progress", "stage": "copy", "device": "/dev/sda",
               "done_chunks": done, "chunks": 1024, "wire_bytes": (done - resumed) << 21}
    yield {"event": "disk-done", "stage": "copy", "device": "/dev/sda", "seconds": 32.0,
           "wire_bytes": 2 * GiB}
    yield {"event": "stage-done", "stage": "copy", "seconds": 33.4}
    yield {"event": "stage-start", "stage": "fix"}
    clock.now += 72
    yield {"event": "stage-done", "stage": "fix", "seconds": 72.4}


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (45, "45s"), (72.4, "1m12s"),
                                               (3599.6, "1h00m"), (7380, "2h03m")])
def test_durations_read_like_a_clock(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_off_a_terminal_a_disk_is_a_line_at_each_tenth_with_rate_and_eta() -> None:
    clock = Clock()
    t, out = term(False, clock)
    with ConvertScreen(t) as screen:
        for event in copy_events(clock):
            screen(event)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()   # no bar drawn
    assert lines[:3] == ["p2v: copy      ...", "p2v:   flushing the page cache",
                         "p2v:   /dev/sda -> /w/a.qcow2 (4.0 GiB, 0 of 1024 chunks already "
                         "done)"]
    progress = [line for line in lines if "% of 4.0 GiB" in line]
    # 1024 chunks in 16 steps of 6.25 %: a line each time a new tenth is reached, not 16.
    assert [int(re.search(r"(\d+)% of", p).group(1)) for p in progress] == [  # type: ignore
        12, 25, 31, 43, 50, 62, 75, 81, 93, 100]
    # 4 GiB in 32 s is 128 MiB/s; at 50 % (16 s in) 2 GiB are left: ETA 16s.
    assert progress[4] == "p2v:   sda: 50% of 4.0 GiB, 128.0 MiB/s, ETA 16s, 1.0 GiB sent"
    assert "ETA" not in progress[-1]
    assert lines[-4:] == ["p2v:   /dev/sda: copied, 2.0 GiB sent in 32s, 64.0 MiB/s",
                          "p2v: copy      done in 33s", "p2v: fix       ...",
                          "p2v: fix       done in 1m12s"]


def test_off_a_terminal_a_slow_disk_still_gets_a_line_every_30_s() -> None:
    clock = Clock()
    t, out = term(False, clock)
    meter = t.disk("sdb", 100 * GiB)
    for _ in range(10):                     # 1 GiB per 10 s: a tenth only after 100 s
        clock.now += 10
        meter.update(int(clock.now / 10) * GiB, 0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines           # at 30, 60 and 90 s, then the first tenth
    assert lines[0] == "p2v:   sdb: 3% of 100.0 GiB, 102.4 MiB/s, ETA 16m10s, 0 B sent"
    assert lines[3].startswith("p2v:   sdb: 10% of 100.0 GiB")


def test_a_resumed_disk_counts_its_rate_from_where_it_resumed() -> None:
    clock = Clock()
    t, out = term(False, clock)
    with ConvertScreen(t) as screen:
        for event in copy_events(clock, resumed=512):
            screen(event)
    progress = [line for line in out.getvalue().splitlines() if "% of" in line]
    # Half was there already: the first line at the next tenth, at the rate of this run.
    assert progress[0] == "p2v:   sda: 62% of 4.0 GiB, 128.0 MiB/s, ETA 12s, 256.0 MiB sent"


def test_on_a_terminal_a_disk_is_a_bar_with_bytes_rate_and_eta() -> None:
    clock = Clock()
    t, out = term(True, clock)
    with ConvertScreen(t) as screen:
        for event in copy_events(clock):
            screen(event)
            if event.get("done_chunks") == 512:
                drawn = out.getvalue()
    bar = drawn.rsplit("\r", 1)[-1]
    assert re.match(r"sda:  50%\|[#0-9]+ *\| 2\.00G/4\.00G "
                    r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+[KMGT]?B/s, wire 1\.0 GiB\]", bar), bar
    assert "p2v: copy      running 00:00" in drawn          # the stage line, elapsed time
    text = out.getvalue()
    # Finished lines stand above the bars; the bars are gone at the end.
    for line in ("p2v:   flushing the page cache\n", "p2v: copy      done in 33s\n",
                 "p2v:   /dev/sda: copied, 2.0 GiB sent in 32s, 64.0 MiB/s\n",
                 "p2v: fix       done in 1m12s\n"):
        assert line in text
    assert "running" not in text.rsplit("p2v: fix       done in 1m12s", 1)[1]


def test_a_failed_job_takes_its_bars_off_so_the_error_stands_last() -> None:
    clock = Clock()
    t, out = term(True, clock)
    screen = ConvertScreen(t)
    for event in itertools.islice(copy_events(clock), 6):
        screen(event)
    clock.now += 30
    screen({"event": "job-failed", "stage": "copy", "error": "boom", "exit_code": 5})
    text = out.getvalue()
    assert "p2v: copy      failed after 36s\n" in text      # 3 ticks of 2 s, then 30 s
    tail = text.rsplit("\n", 1)[-1]
    assert tail.strip(" \r\x1b[A") == "", repr(tail)      # every bar line cleared


def test_a_sync_pass_bar_counts_the_wire_against_the_changed_bytes() -> None:
    clock = Clock()
    t, out = term(False, clock)
    with ConvertScreen(t) as screen:
        screen({"event": "stage-start", "stage": "sync"})
        screen({"event": "sync-delta", "device": "/dev/sda", "changed_chunks": 40,
                "dropped_chunks": 2, "changed_bytes": 160 << 20, "hash_seconds": 12.5,
                "wire_bytes": 1 << 20})                  # the hash list crossed first
        for mib in (17, 81, 161, 200):
            clock.now += 1
            screen({"event": "progress", "device": "/dev/sda", "wire_bytes": mib << 20})
        screen({"event": "sync-done", "device": "/dev/sda"})
    lines = out.getvalue().splitlines()
    assert lines[1] == ("p2v:   /dev/sda: 40 changed, 2 dropped chunk(s), 160.0 MiB to fetch "
                        "(hashed in 12s)")
    assert lines[2].startswith("p2v:   sda sync: 10% of 160.0 MiB, 16.0 MiB/s, ETA 9s")
    assert lines[3].startswith("p2v:   sda sync: 50% of 160.0 MiB")
    assert lines[4].startswith("p2v:   sda sync: 100% of 160.0 MiB")    # capped
    assert len(lines) == 5


def batch_events(clock: Clock) -> Iterator[dict[str, object]]:
    yield {"event": "batch-start", "total": 3, "to_run": 2, "jobs": 2, "state_dir": "/s"}
    yield {"event": "batch-job-skip", "job": "erp", "reason": "done earlier"}
    for job in ("web01", "db01"):
        yield {"event": "batch-job-start", "job": job, "action": "run", "attempt": 1,
               "reason": "new", "worker": "here:1", "work_dir": f"/w/{job}"}
        yield {"event": "stage-start", "job": job, "stage": "copy"}
        yield {"event": "disk-start", "job": job, "stage": "copy", "device": "/dev/sda",
               "size": 2 * GiB, "chunks": 512, "resumed_chunks": 0}
    for done in range(64, 513, 64):
        clock.now += 10
        yield {"event": "progress", "job": "web01", "stage": "copy", "device": "/dev/sda",
               "done_chunks": done, "chunks": 512, "wire_bytes": done << 21}
    yield {"event": "stage-done", "job": "web01", "stage": "copy", "seconds": 80}
    yield {"event": "stage-start", "job": "web01", "stage": "fix"}
    yield {"event": "batch-job-end", "job": "web01", "state": "succeeded", "seconds": 412}
    yield {"event": "batch-job-end", "job": "db01", "state": "failed", "error": "boom"}
    yield {"event": "batch-done"}


def test_batch_off_a_terminal_prints_a_line_per_change_and_copy_every_30_s() -> None:
    clock = Clock()
    t, out = term(False, clock)
    screen = BatchScreen(t)
    for event in batch_events(clock):
        screen(event)
    assert out.getvalue().splitlines() == [
        "p2v: batch of 3 job(s), 2 to run, 2 at a time; state in /s",
        "p2v: [erp] skipped: done earlier",
        "p2v: [web01] run (attempt 1, new) in /w/web01",
        "p2v: [web01] copy ...",
        "p2v: [db01] run (attempt 1, new) in /w/db01",
        "p2v: [db01] copy ...",
        "p2v: [web01] /dev/sda: 12% copied",
        "p2v: [web01] /dev/sda: 50% copied",
        "p2v: [web01] /dev/sda: 87% copied",
        "p2v: [web01] /dev/sda: 100% copied",
        "p2v: [web01] copy done in 1m20s",
        "p2v: [web01] fix ...",
        "p2v: [web01] succeeded in 6m52s",
        "p2v: [db01] failed: boom",
    ]


def test_batch_on_a_terminal_shows_each_running_job_and_an_overall_bar() -> None:
    clock = Clock()
    t, out = term(True, clock)
    screen = BatchScreen(t)
    seen: list[str] = []
    for event in batch_events(clock):
        screen(event)
        seen.append(out.getvalue())
    halfway = next(s for s in seen if "web01 copy" in s and " 50%|" in s)
    job = [p for p in halfway.split("\r") if p.startswith("  web01 copy")][-1]
    assert re.match(r"  web01 copy +50%\|[#0-9]+ *\| 1\.00G/2\.00G \[\d\d:\d\d<\d\d:\d\d, "
                    r"+[\d.]+[KMGT]?B/s\]", job), job
    overall = [p for p in halfway.split("\r") if p.startswith("batch:")][-1]
    assert overall.startswith("batch: 0/2 job(s) done |") and overall.rstrip("\n\x1b[A").endswith(
        "copied 1.0 GiB of 4.0 GiB"), overall
    text = out.getvalue()
    assert "batch: 1/2 job(s) done" in text and "batch: 2/2 job(s) done" in text
    assert "  web01 fix" in text
    for line in ("p2v: [web01] succeeded in 6m52s\n", "p2v: [db01] failed: boom\n",
                 "p2v: [web01] copy done in 1m20s\n"):
        assert line in text
    assert "p2v: [web01] copy ...\n" not in text        # the job's own line says so


def test_batch_a_late_event_of_an_ended_job_draws_no_line() -> None:
    t, out = term(True)
    screen = BatchScreen(t)
    for event in itertools.islice(batch_events(Clock()), 5):       # web01 started, copying
        screen(event)
    screen({"event": "batch-job-end", "job": "web01", "state": "failed", "error": "lost"})
    drawn = len(out.getvalue())
    screen({"event": "progress", "job": "web01", "stage": "copy", "device": "/dev/sda",
            "done_chunks": 64, "chunks": 512, "wire_bytes": 1})
    screen({"event": "stage-start", "job": "web01", "stage": "fix"})
    assert "web01" not in out.getvalue()[drawn:]
    assert not screen.lines
    screen.close()


def test_a_log_record_on_a_terminal_goes_above_the_bars_not_through_them() -> None:
    import logging

    t, out = term(True)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("p2v: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        meter = t.disk("sda", 4 * GiB)
        meter.update(GiB, GiB)
        logging.getLogger("p2v.test").warning("the link is slow")
        meter.update(2 * GiB, 2 * GiB)
        meter.close()
        t.close()
        assert handler.stream is out                        # given back
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    # The bar's line is cleared, the record written on a line of its own, the bar redrawn.
    assert re.search(r"\r +\rp2v: WARNING: the link is slow\n\rsda:  25%", text), repr(text)
