"""What `p2v convert` and `p2v batch` show on stderr while they run, drawn from the job's
events (p2v.events/1): they are event sinks, and `--json` never goes through them.

convert: a line per stage with its time, a bar per disk of the copy and of each sync pass.
batch: a line per job it starts and ends, and on a terminal a live line per running job
(stage, its copy's percentage, rate and ETA) under one overall bar (jobs done, bytes)."""

from __future__ import annotations

from typing import Any

from p2v.cli.progress import LINE_EVERY, DiskMeter, StageLine, Term, duration
from p2v.events import Event
from p2v.units import human_size


def _int(event: Event, key: str, default: int = 0) -> int:
    value = event.get(key)
    return int(value) if isinstance(value, (int, float)) else default


def _short(device: object) -> str:
    return str(device).removeprefix("/dev/")


def _done_bytes(size: int, done_chunks: int, chunks: int) -> int:
    """A disk's bytes done from its chunk counts (the last chunk may be short)."""
    return size if done_chunks >= chunks else size * done_chunks // max(1, chunks)


class ConvertScreen:
    """One job's progress: stage lines, disk meters, messages. A context manager: leaving it
    takes whatever is still drawn off the screen (the error line then stands last)."""

    def __init__(self, term: Term | None = None) -> None:
        self.term = term or Term()
        self.stage: StageLine | None = None
        self.disks: dict[str, tuple[DiskMeter, int, int]] = {}   # device -> meter, size, base

    def __enter__(self) -> ConvertScreen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for device in list(self.disks):
            self._end_disk(device)
        if self.stage is not None:
            self.stage.close()
            self.stage = None
        self.term.close()

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        handler = _CONVERT.get(str(kind))
        if handler is not None:
            handler(self, event)

    def _stage_start(self, event: Event) -> None:
        if self.stage is not None:
            self.stage.close()
        self.stage = StageLine(self.term, str(event.get("stage")))

    def _stage_done(self, event: Event) -> None:
        for device in list(self.disks):
            self._end_disk(device)
        stage, self.stage = self.stage, None
        seconds = float(event.get("seconds") or 0)
        if stage is not None:
            stage.done(seconds)
        else:
            self.term.line(f"{event.get('stage')!s:<9} done in {duration(seconds)}")

    def _stage_skip(self, event: Event) -> None:
        self.term.line(f"{event.get('stage')!s:<9} done in an earlier run")

    def _message(self, event: Event) -> None:
        self.term.line(f"  {event.get('text')}")

    def _disk_start(self, event: Event) -> None:
        device, size = str(event.get("device")), _int(event, "size")
        chunks = _int(event, "chunks", 1)
        self.term.line(f"  {device} -> {event.get('image')} ({human_size(size)}, "
                       f"{event.get('resumed_chunks')} of {chunks} chunks already done)")
        done = _done_bytes(size, _int(event, "resumed_chunks"), chunks)
        self._end_disk(device)
        self.disks[device] = (self.term.disk(_short(device), size, done), size, 0)

    def _progress(self, event: Event) -> None:
        device = str(event.get("device"))
        if device not in self.disks:
            return
        meter, size, base = self.disks[device]
        wire = _int(event, "wire_bytes")
        if "done_chunks" in event:          # the copy: chunks of the disk done
            done = _done_bytes(size, _int(event, "done_chunks"), _int(event, "chunks", 1))
        else:                               # a sync pass: bytes fetched of the changed ones
            done = min(size, wire - base)
        meter.update(done, wire)

    def _disk_done(self, event: Event) -> None:
        device = str(event.get("device"))
        self._end_disk(device)
        wire, seconds = _int(event, "wire_bytes"), float(event.get("seconds") or 0)
        rate = f", {human_size(wire / seconds)}/s" if seconds > 0 else ""
        self.term.line(f"  {device}: copied, {human_size(wire)} sent in {duration(seconds)}"
                       f"{rate}")

    def _disk_complete(self, event: Event) -> None:
        self.term.line(f"  {event.get('device')}: already complete")

    def _sync_delta(self, event: Event) -> None:
        device, changed = str(event.get("device")), _int(event, "changed_bytes")
        if event.get("tracked"):
            how = "tracked: written since the last pass"
        else:
            how = f"hashed in {duration(float(event.get('hash_seconds') or 0))}"
            if event.get("rehash_why"):
                how += f"; rehashed: {event['rehash_why']}"
        self.term.line(f"  {device}: {event.get('changed_chunks')} changed, "
                       f"{event.get('dropped_chunks')} dropped chunk(s), {human_size(changed)}"
                       f" to fetch ({how})")
        self._end_disk(device)
        if changed:
            meter = self.term.disk(f"{_short(device)} sync", changed)
            self.disks[device] = (meter, changed, _int(event, "wire_bytes"))

    def _sync_done(self, event: Event) -> None:
        self._end_disk(str(event.get("device")))

    def _end_disk(self, device: str) -> None:
        entry = self.disks.pop(device, None)
        if entry is not None:
            entry[0].close()

    def _job_end(self, event: Event) -> None:
        if event.get("event") == "job-failed" and self.stage is not None:
            self.stage.failed()
            self.stage = None
        self.close()


_CONVERT = {
    "stage-start": ConvertScreen._stage_start, "stage-done": ConvertScreen._stage_done,
    "stage-skip": ConvertScreen._stage_skip, "message": ConvertScreen._message,
    "disk-start": ConvertScreen._disk_start, "progress": ConvertScreen._progress,
    "disk-done": ConvertScreen._disk_done, "disk-complete": ConvertScreen._disk_complete,
    "sync-delta": ConvertScreen._sync_delta, "sync-done": ConvertScreen._sync_done,
    "job-done": ConvertScreen._job_end, "job-failed": ConvertScreen._job_end,
    "job-interrupted": ConvertScreen._job_end,
}


def batch_line(event: Event) -> str | None:
    """The plain line of a batch's own event, or of a job's stage change (None: no line)."""
    kind, job, stage = event.get("event"), event.get("job"), event.get("stage")
    if kind == "batch-start":
        return (f"batch of {event.get('total')} job(s), {event.get('to_run')} to run, "
                f"{event.get('jobs')} at a time; state in {event.get('state_dir')}")
    if kind == "batch-job-skip":
        return f"[{job}] skipped: {event.get('reason')}"
    if kind == "batch-job-placed":
        return (f"[{job}] on worker {event.get('worker')} in {event.get('work_dir')}"
                + (" (resuming)" if event.get("resume") else ""))
    if kind == "batch-job-retry":
        return (f"[{job}] worker {event.get('previous_worker')} died; try {event.get('try')} "
                f"of {event.get('tries')} on {event.get('worker')}"
                + (" (resuming)" if event.get("resume") else " (afresh)"))
    if kind == "batch-job-start":
        where = (f"in {event.get('work_dir')}" if event.get("worker") else
                 "submitted to the cluster")     # --scheduler: placed later
        return (f"[{job}] {event.get('action')} (attempt {event.get('attempt')}, "
                f"{event.get('reason')}) {where}")
    if kind == "stage-start":
        return f"[{job}] {stage} ..."
    if kind == "stage-done":
        return f"[{job}] {stage} done in {duration(float(event.get('seconds') or 0))}"
    if kind == "batch-job-end":
        state = event.get("state")
        return f"[{job}] {state}" + (f": {event.get('error')}" if state != "succeeded"
                                     else f" in {duration(float(event.get('seconds') or 0))}")
    if kind == "batch-stopping":
        running = event.get("running")
        count = len(running) if isinstance(running, list) else 0
        return f"stopping {count} running job(s); they are resumed by the next run ..."
    return None


class _JobCopy:
    """What a running job's copy has done: each disk's size and bytes done."""

    def __init__(self) -> None:
        self.disks: dict[str, tuple[int, int]] = {}     # device -> size, done

    def start(self, event: Event) -> None:
        size = _int(event, "size")
        done = _done_bytes(size, _int(event, "resumed_chunks"), _int(event, "chunks", 1))
        self.disks[str(event.get("device"))] = (size, done)

    def progress(self, event: Event) -> bool:
        device = str(event.get("device"))
        if device not in self.disks or "done_chunks" not in event:
            return False
        size = self.disks[device][0]
        self.disks[device] = (size, _done_bytes(size, _int(event, "done_chunks"),
                                                _int(event, "chunks", 1)))
        return True

    @property
    def size(self) -> int:
        return sum(s for s, _d in self.disks.values())

    @property
    def done(self) -> int:
        return sum(d for _s, d in self.disks.values())


class BatchScreen:
    """A fleet's progress: the batch's lines, and on a terminal a live line per running job
    under an overall bar; off a terminal a job's copy progress every 30 s per disk."""

    def __init__(self, term: Term | None = None) -> None:
        self.term = term or Term()
        self.copies: dict[str, _JobCopy] = {}
        self.finished: dict[str, tuple[int, int]] = {}     # ended jobs' copy size, done
        self.lines: dict[str, Any] = {}                    # job -> its tqdm line
        self.overall: Any = None
        self.last: dict[tuple[str, str], float] = {}
        self.running: set[str] = set()       # a late event of an ended job draws nothing

    def __enter__(self) -> BatchScreen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for job in list(self.lines):
            self.term.close_bar(self.lines.pop(job))
        if self.overall is not None:
            self.term.close_bar(self.overall)
            self.overall = None
        self.term.close()

    def __call__(self, event: Event) -> None:
        kind, job = str(event.get("event")), str(event.get("job"))
        if kind == "batch-job-start":
            self.running.add(job)
        if kind in ("disk-start", "progress"):
            if job in self.running:
                self._copy(kind, job, event)
        elif kind == "batch-done":
            self.close()
        else:
            text = batch_line(event)
            if kind == "batch-job-end":
                self._end(job)
            if text is not None and not (kind == "stage-start" and self.term.tty):
                self.term.line(text)            # a terminal shows the stage on its job's line
            if kind == "batch-start" and self.term.tty:
                self.overall = self.term.bar(
                    "batch", total=_int(event, "to_run"), unit="job", ticking=True,
                    bar_format="{desc}: {n}/{total} job(s) done |{bar}| {elapsed}{postfix}")
            elif kind == "stage-start" and self.term.tty and job in self.running:
                self._show(job, str(event.get("stage")))

    def _copy(self, kind: str, job: str, event: Event) -> None:
        copy = self.copies.setdefault(job, _JobCopy())
        if kind == "disk-start":
            copy.start(event)
        elif not copy.progress(event):
            return
        if self.term.tty:
            self._show(job, "copy")
        else:
            self._copy_line(job, event)

    def _copy_line(self, job: str, event: Event) -> None:
        """Off a terminal: a disk's percentage every 30 s, and when it completes."""
        if event.get("event") != "progress":
            return
        key = (job, str(event.get("device")))
        done, total = _int(event, "done_chunks"), _int(event, "chunks", 1)
        now = self.term.clock()
        if now - self.last.get(key, -LINE_EVERY) >= LINE_EVERY or done >= total:
            self.last[key] = now
            self.term.line(f"[{job}] {key[1]}: {100 * done // max(1, total)}% copied")

    def _show(self, job: str, stage: str) -> None:
        """The job's live line: its stage; in the copy, bytes, percentage, rate and ETA."""
        line = self.lines.get(job)
        if line is None:
            line = self.lines[job] = self.term.bar(f"  {job}", unit="B", unit_scale=True,
                                                   unit_divisor=1024, ticking=True,
                                                   bar_format=_WAITING)
        copy = self.copies.get(job)
        if stage == "copy" and copy is not None and copy.size:
            line.set_description_str(f"  {job} copy", refresh=False)
            line.bar_format = _COPYING
            line.total = copy.size
            line.update(copy.done - line.n)
        else:
            line.set_description_str(f"  {job} {stage}", refresh=False)
            line.bar_format = _WAITING
            line.refresh()
        self._overall_bytes()

    def _end(self, job: str) -> None:
        self.running.discard(job)
        line = self.lines.pop(job, None)
        if line is not None:
            self.term.close_bar(line)
        copy = self.copies.pop(job, None)
        if copy is not None:
            self.finished[job] = (copy.size, copy.done)
        if self.overall is not None:
            self.overall.update(1)
            self._overall_bytes()

    def _overall_bytes(self) -> None:
        if self.overall is None:
            return
        size = sum(c.size for c in self.copies.values()) + sum(
            s for s, _d in self.finished.values())
        done = sum(c.done for c in self.copies.values()) + sum(
            d for _s, d in self.finished.values())
        if size:
            self.overall.set_postfix_str(f"copied {human_size(done)} of {human_size(size)}",
                                         refresh=True)


_WAITING = "{desc:<24} {elapsed}"
_COPYING = ("{desc:<24} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} "
            "[{elapsed}<{remaining}, {rate_fmt}]")
