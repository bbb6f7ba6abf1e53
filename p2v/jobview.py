"""A job's work dir as the HTML report shows it (p2v.htmlreport.JobView), read-only.

What a work dir keeps, and what the page takes from it: events.jsonl (every event of every
run, with its time) gives the last run's stage spans and the copy's throughput (a
`progress` event at each journal commit, at most 64 MiB of image apart, carries the disk's
bytes on the wire so far); report.json the disks, what did not carry over, the error;
verify.json the boot verdict and its console evidence; the markers the stages' times when
events.jsonl is gone. Nothing is locked or written, and a planted FIFO never blocks a read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from p2v.htmlreport import DiskBar, JobView, ReportView, Sample, Span
from p2v.job import CUTOVER_STAGES
from p2v.jobdir import read_regular, read_regular_json
from p2v.jobs import job_status
from p2v.report import JobReport, allocated

# Only the tail of a huge events.jsonl is read (the last run is at its end).
EVENTS_TAIL = 32 << 20
# The throughput line is drawn from at most this many samples.
MAX_SAMPLES = 120


def _int(value: Any) -> int:
    """A byte count from a record, 0 when it is not one (a page never fails on a record)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events in events.jsonl (its tail when huge), skipping a torn or foreign line."""
    raw = read_regular(path, tail=EVENTS_TAIL) or b""
    events = []
    for line in raw.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("time"), int | float):
            events.append(event)
    return events


def last_run(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the last run: from its job-start on."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "job-start"]
    return list(events[starts[-1]:]) if starts else list(events)


def spans(run: Sequence[dict[str, Any]], running: bool = False) -> list[Span]:
    """Each stage the run started, from stage-start to its stage-done, job-failed or
    job-interrupted (the last event seen, when the run ended without a word)."""
    out: list[Span] = []
    open_stage: tuple[str, float] | None = None
    for event in run:
        kind, when = event.get("event"), float(event["time"])
        if kind == "stage-start" and event.get("stage"):
            open_stage = (str(event["stage"]), when)
        elif open_stage and kind in ("stage-done", "job-failed", "job-interrupted"):
            state = {"stage-done": "done", "job-failed": "failed"}.get(str(kind), "interrupted")
            out.append(Span(open_stage[0], open_stage[1], when, state))
            open_stage = None
    if open_stage:
        end = time.time() if running else float(run[-1]["time"])
        out.append(Span(open_stage[0], open_stage[1], end,
                        "running" if running else "interrupted"))
    return out


def earlier_stages(run: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(str(e["stage"]) for e in run
                 if e.get("event") == "stage-skip" and e.get("stage"))


def throughput(run: Sequence[dict[str, Any]], limit: int = MAX_SAMPLES) -> list[Sample]:
    """Bytes/s on the wire over the run, from the progress events of every disk together.

    A disk's wire count restarts with each sync pass: a drop starts a new leg on top of
    what the disk had sent before."""
    points: list[tuple[float, int]] = []
    last: dict[str, int] = {}
    base: dict[str, int] = {}
    for event in run:
        kind = event.get("event")
        if kind == "disk-start" and not points:
            points.append((float(event["time"]), 0))
        if kind not in ("progress", "disk-done") or "wire_bytes" not in event:
            continue
        device, wire = str(event.get("device")), _int(event["wire_bytes"])
        if wire < last.get(device, 0):
            base[device] = base.get(device, 0) + last[device]
        last[device] = wire
        points.append((float(event["time"]), sum(base.values()) + sum(last.values())))
    points = _thin(points, limit)
    return [Sample(t1, (b1 - b0) / (t1 - t0))
            for (t0, b0), (t1, b1) in zip(points, points[1:], strict=False) if t1 > t0]


def _thin(points: list[tuple[float, int]], limit: int) -> list[tuple[float, int]]:
    """At most `limit` + 1 points, evenly spaced in time (the first and last kept)."""
    if len(points) <= limit + 1:
        return points
    t0, t1 = points[0][0], points[-1][0]
    step = (t1 - t0) / limit
    kept, edge = [points[0]], t0 + step
    for point in points[1:-1]:
        if point[0] >= edge:
            kept.append(point)
            edge = point[0] + step
    return [*kept, points[-1]]


def marker_spans(work_dir: Path) -> list[Span]:
    """The stages' spans from their markers (finished, seconds): when events.jsonl is gone."""
    out = []
    for stage in CUTOVER_STAGES:
        data = read_regular_json(work_dir / "markers" / f"{stage}.done")
        if not isinstance(data, dict):
            continue
        try:
            end = datetime.strptime(str(data["finished"]), "%Y-%m-%dT%H:%M:%S%z").timestamp()
            seconds = float(data.get("seconds", 0))
        except (KeyError, ValueError, TypeError):
            continue
        out.append(Span(stage, end - seconds, end))
    return out


def _verdict(data: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The boot check's facts and its console lines, from verify.json."""
    if not isinstance(data, dict):
        return (), ()
    facts = [("booted", "yes" if data.get("booted") else "NO")]
    keys = ("reason", "hostname", "root", "bus", "firmware", "os", "via", "accel")
    facts += [(k, str(data[k])) for k in keys if data.get(k) not in (None, "")]
    if isinstance(data.get("elapsed_s"), int | float):
        facts.append(("boot took", f"{data['elapsed_s']:.0f} s"))
    for nic in data.get("interfaces") or ():
        if isinstance(nic, dict):
            facts.append((f"guest NIC {nic.get('name')}",
                          f"{nic.get('mac')} {', '.join(map(str, nic.get('addresses', [])))}"))
    evidence = tuple(str(line) for line in data.get("evidence") or ())
    return tuple(facts), evidence


def _report(work_dir: Path) -> JobReport | None:
    data = read_regular_json(work_dir / "report.json")
    try:
        return JobReport.from_dict(data) if isinstance(data, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def _disks(report: JobReport | None, work_dir: Path,
           run: Sequence[dict[str, Any]]) -> tuple[DiskBar, ...]:
    """The copied disks (report.json, else copy.json), else the last run's copy so far."""
    if report is not None and report.disks:
        return tuple(DiskBar(d.device, d.size, d.wire_bytes, d.file_bytes)
                     for d in report.disks)
    copied = read_regular_json(work_dir / "copy.json")
    if isinstance(copied, list):
        return tuple(DiskBar(str(d.get("device")), _int(d.get("size")),
                             _int(d.get("wire_bytes")), _int(d.get("file_bytes")))
                     for d in copied if isinstance(d, dict))
    return in_flight(run)


def in_flight(run: Sequence[dict[str, Any]]) -> tuple[DiskBar, ...]:
    """Each disk the run's copy started: its size, the bytes sent so far, its part image."""
    disks: dict[str, DiskBar] = {}
    for event in run:
        device = str(event.get("device"))
        if event.get("event") == "disk-start" and event.get("stage") == "copy":
            image = Path(str(event.get("image")))
            held = allocated(image) or allocated(image.with_name(image.name + ".part"))
            disks[device] = DiskBar(device, _int(event.get("size")), 0, held)
        elif event.get("event") in ("progress", "disk-done") and device in disks:
            bar = disks[device]
            disks[device] = DiskBar(device, bar.size, _int(event.get("wire_bytes")),
                                    bar.file_bytes)
    return tuple(disks.values())


def _left_behind(report: JobReport | None, work_dir: Path) -> tuple[str, ...]:
    if report is not None and report.not_carried_over:
        return report.not_carried_over
    plan = read_regular_json(work_dir / "plan.json")
    left = plan.get("not_carried_over") if isinstance(plan, dict) else None
    return tuple(str(x) for x in left) if isinstance(left, list) else ()


def _facts(work_dir: Path, report: JobReport | None) -> list[tuple[str, str]]:
    facts = [("work dir", str(work_dir))]
    if report is None:
        return facts
    if report.elapsed_s:
        facts.append(("last run took", f"{report.elapsed_s:.0f} s"))
    if report.disk_choice:
        facts.append(("disks", report.disk_choice))
    if report.domain:
        facts.append(("domain", f"{report.domain.get('name')} at {report.domain.get('uri')}"))
    if report.downtime_s is not None:
        facts.append(("cutover downtime", f"{report.downtime_s:.1f} s" + (
            f" ({report.downtime_bound})" if report.downtime_bound else "")))
    facts += [("network", line) for line in report.network]
    return facts


def job_view(work_dir: Path) -> JobView | None:
    """The job in WORK_DIR as the page shows it; None when it is not a job's work dir."""
    status = job_status(work_dir)
    if status is None:
        return None
    report = _report(work_dir)
    run = last_run(read_events(work_dir / "events.jsonl"))
    running = status.state == "running"
    stage_spans = spans(run, running) if run else marker_spans(work_dir)
    verdict, evidence = _verdict(read_regular_json(work_dir / "verify.json"))
    notes = [] if run else ["no events.jsonl in the work dir: the stage times come from "
                            "their markers, and no throughput was recorded"]
    state = {"done": "succeeded"}.get(status.state, status.state)
    return JobView(name=status.name, source=status.source, state=state,
                   stage=status.stage, error=status.error, spans=tuple(stage_spans),
                   earlier=earlier_stages(run), disks=_disks(report, work_dir, run),
                   throughput=tuple(throughput(run)), verdict=verdict, evidence=evidence,
                   not_carried_over=_left_behind(report, work_dir),
                   facts=tuple(_facts(work_dir, report)), notes=tuple(notes))


def job_page(work_dir: Path) -> ReportView | None:
    """The page of the one job in WORK_DIR; None when it is not a job's work dir."""
    view = job_view(work_dir)
    if view is None:
        return None
    return ReportView(title=f"p2v job report: {view.name}", kind="job", jobs=(view,),
                      facts=(("job", view.name), ("source", view.source),
                             ("state", view.state + (f" at {view.stage}" if view.stage
                                                     and view.state != "succeeded" else ""))))


__all__ = ["in_flight", "job_page", "job_view", "last_run", "marker_spans", "read_events",
           "spans", "throughput"]
