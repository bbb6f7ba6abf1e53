"""The HTML report of a job or a batch, as one self-contained page: data in, HTML string out.

Pure: no file is read here (p2v.jobview and p2v.batch.htmlview gather the data). The page
has inline CSS and inline SVG only, no script and no address outside itself, so it opens
anywhere, offline, and can be mailed as it is. Every value is escaped: hostnames, errors
and above all the boot check's console lines come from the server or the guest.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from p2v.units import human_size

Facts = tuple[tuple[str, str], ...]

# One colour per stage, the same in every row and the legend.
STAGE_COLOURS = {"inspect": "#4e79a7", "preflight": "#76b7b2", "copy": "#f28e2b",
                 "sync": "#edc948", "fix": "#59a14f", "verify": "#b07aa1",
                 "register": "#9c755f"}
TIMELINE_WIDTH = 960
LABEL_WIDTH = 170
ROW_HEIGHT = 26
CHART_WIDTH, CHART_HEIGHT = 640, 170


@dataclass(frozen=True)
class Span:
    """A stage of a job's run on the clock: from its start to its end (Unix times)."""

    stage: str
    start: float
    end: float
    state: str = "done"             # done | failed | interrupted | running


@dataclass(frozen=True)
class DiskBar:
    device: str
    size: int                       # the source disk's size
    wire_bytes: int                 # sent over the network by the run that finished it
    file_bytes: int                 # what its image takes on the host


@dataclass(frozen=True)
class Sample:
    """The copy's (or sync's) rate over the network at a moment: bytes/s at a Unix time."""

    time: float
    rate: float


@dataclass(frozen=True)
class JobView:
    """What the page shows of one job."""

    name: str
    source: str
    state: str                       # succeeded, failed, interrupted, running, ...
    stage: str | None = None         # where it failed or stopped
    error: str | None = None
    spans: tuple[Span, ...] = ()     # its last run's stages
    earlier: tuple[str, ...] = ()    # stages an earlier run had finished
    disks: tuple[DiskBar, ...] = ()
    throughput: tuple[Sample, ...] = ()
    verdict: Facts = ()              # the boot check: booted, hostname, root, ...
    evidence: tuple[str, ...] = ()   # the console lines behind the verdict
    not_carried_over: tuple[str, ...] = ()
    facts: Facts = ()                # work dir, attempts, worker, domain, ...
    notes: tuple[str, ...] = ()      # what the page could not find, and why


@dataclass(frozen=True)
class ReportView:
    """The whole page: a job's (one JobView) or a batch's."""

    title: str
    kind: str                        # "job" or "batch"
    jobs: tuple[JobView, ...]
    facts: Facts = ()
    generated: float = field(default_factory=time.time)


def esc(value: object) -> str:
    """Any value as HTML text or an attribute value."""
    return html.escape(str(value), quote=True)


def duration(seconds: float) -> str:
    """12 s, 3 min 04 s, 2 h 05 min: how long a stage or run took, for people."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def render(view: ReportView) -> str:
    """The page."""
    parts = [f"<h1>{esc(view.title)}</h1>",
             f'<p class="meta">generated {esc(clock(view.generated))} by p2v</p>',
             facts_table(view.facts, "summary"),
             "<h2>Timeline</h2>", timeline(view.jobs)]
    if view.kind == "batch":
        parts.append(jobs_table(view.jobs))
    parts += [job_section(job) for job in view.jobs]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{esc(view.title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def facts_table(facts: Facts, css: str) -> str:
    if not facts:
        return ""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    return f'<table class="{esc(css)}">{rows}</table>'


def jobs_table(jobs: Sequence[JobView]) -> str:
    """The batch's jobs in one table: state, stage, sent, error."""
    head = "<tr><th>job</th><th>source</th><th>state</th><th>stage</th><th>sent</th>" \
           "<th>error</th></tr>"
    rows = []
    for job in jobs:
        sent = sum(d.wire_bytes for d in job.disks)
        rows.append(f'<tr class="job {esc(job.state)}"><td><a href="#job-{esc(job.name)}">'
                    f"{esc(job.name)}</a></td><td>{esc(job.source)}</td>"
                    f'<td class="state">{esc(job.state)}</td><td>{esc(job.stage or "-")}</td>'
                    f"<td>{esc(human_size(sent) if job.disks else '-')}</td>"
                    f"<td>{esc(job.error or '')}</td></tr>")
    return f'<h2>Jobs</h2><table class="jobs">{head}{"".join(rows)}</table>'


def timeline(jobs: Sequence[JobView]) -> str:
    """One row per job, its last run's stages as bars on one clock shared by every row."""
    spans = [s for job in jobs for s in job.spans]
    t0 = min((s.start for s in spans), default=0.0)
    t1 = max((s.end for s in spans), default=t0)
    scale = (TIMELINE_WIDTH - LABEL_WIDTH - 10) / max(t1 - t0, 1.0)
    height = ROW_HEIGHT * len(jobs) + 30
    rows = [_timeline_row(i, job, t0, scale) for i, job in enumerate(jobs)]
    axis = _timeline_axis(t1 - t0, scale, ROW_HEIGHT * len(jobs))
    stages = [s for s in STAGE_COLOURS if any(sp.stage == s for sp in spans)]
    legend = "".join(f'<span class="key"><i style="background:{STAGE_COLOURS[s]}"></i>'
                     f"{esc(s)}</span>" for s in stages)
    since = f"from {esc(clock(t0))}; " if spans else "no stage has run yet; "
    return (f'<svg class="timeline" width="{TIMELINE_WIDTH}" height="{height}" '
            f'viewBox="0 0 {TIMELINE_WIDTH} {height}" role="img" '
            f'aria-label="stages of each job over time">{"".join(rows)}{axis}</svg>'
            f'<p class="legend">{since}a red border: the stage failed; dashed: it was '
            f"stopped or is running. {legend}</p>")


def _timeline_row(index: int, job: JobView, t0: float, scale: float) -> str:
    y = index * ROW_HEIGHT
    bars = []
    for span in job.spans:
        x = LABEL_WIDTH + (span.start - t0) * scale
        width = max((span.end - span.start) * scale, 2.0)
        colour = STAGE_COLOURS.get(span.stage, "#999999")
        tip = f"{span.stage}: {duration(span.end - span.start)} ({span.state})"
        bars.append(f'<rect class="stage {esc(span.state)}" x="{x:.1f}" y="{y + 4}" '
                    f'width="{width:.1f}" height="{ROW_HEIGHT - 8}" fill="{colour}">'
                    f"<title>{esc(tip)}</title></rect>")
    earlier = f" (earlier run: {', '.join(job.earlier)})" if job.earlier else ""
    label = f"{job.name} [{job.state}]"
    return (f'<g class="timeline-row" data-job="{esc(job.name)}">'
            f'<text x="4" y="{y + ROW_HEIGHT - 9}">{esc(label[:26])}'
            f"<title>{esc(label + earlier)}</title></text>{''.join(bars)}</g>")


def _timeline_axis(seconds: float, scale: float, y: int) -> str:
    ticks = []
    for i in range(6):
        at = seconds * i / 5
        x = LABEL_WIDTH + at * scale
        anchor = "end" if i == 5 else "start" if i == 0 else "middle"
        ticks.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{y}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{y + 16}" text-anchor="{anchor}">'
                     f"{esc(duration(at))}</text>")
    return "".join(ticks)


def job_section(job: JobView) -> str:
    """Everything about one job: facts, disks, throughput, boot check, what stayed behind."""
    parts = [f'<section class="job" id="job-{esc(job.name)}">',
             f'<h2>{esc(job.name)} <span class="state {esc(job.state)}">{esc(job.state)}'
             f"</span></h2>", f'<p class="source">{esc(job.source)}</p>']
    if job.error:
        parts.append(f'<p class="error">{esc(job.error)}</p>')
    parts.append(facts_table(job.facts, "facts"))
    parts.append(stage_table(job))
    parts.append(disk_bars(job.disks))
    parts.append("<h3>Throughput over time</h3>" + throughput_chart(job.throughput))
    parts.append(boot_check(job))
    parts.append(carried_over(job.not_carried_over))
    parts += [f'<p class="note">{esc(note)}</p>' for note in job.notes]
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def stage_table(job: JobView) -> str:
    if not job.spans and not job.earlier:
        return ""
    rows = [f"<tr><td>{esc(s)}</td><td>-</td><td>done in an earlier run</td></tr>"
            for s in job.earlier]
    rows += [f"<tr><td>{esc(s.stage)}</td><td>{esc(clock(s.start))}</td>"
             f'<td class="{esc(s.state)}">{esc(s.state)}, {esc(duration(s.end - s.start))}'
             "</td></tr>" for s in job.spans]
    return ('<h3>Stages</h3><table class="stages"><tr><th>stage</th><th>started</th>'
            f"<th>how it ended</th></tr>{''.join(rows)}</table>")


def disk_bars(disks: Sequence[DiskBar]) -> str:
    """Each disk's size as a bar, the bytes sent for it drawn over it."""
    if not disks:
        return '<h3>Bytes sent vs disk size</h3><p class="none">no disk copied yet</p>'
    biggest = max(max(d.size, d.wire_bytes) for d in disks) or 1
    width = 520
    rows = []
    for i, disk in enumerate(disks):
        y = i * 44
        full = max(disk.size / biggest * width, 1.0)
        sent = disk.wire_bytes / biggest * width
        share = f"{disk.wire_bytes / disk.size:.0%}" if disk.size else "?"
        text = (f"{disk.device}: sent {human_size(disk.wire_bytes)} of "
                f"{human_size(disk.size)} ({share}); image {human_size(disk.file_bytes)}")
        rows.append(f'<g class="disk"><text x="0" y="{y + 12}">{esc(text)}</text>'
                    f'<rect class="size" x="0" y="{y + 18}" width="{full:.1f}" height="16"/>'
                    f'<rect class="sent" x="0" y="{y + 22}" width="{sent:.1f}" height="8"/>'
                    "</g>")
    height = 44 * len(disks)
    return ('<h3>Bytes sent vs disk size</h3>'
            f'<svg class="disks" width="{width + 10}" height="{height}" '
            f'viewBox="0 0 {width + 10} {height}">{"".join(rows)}</svg>'
            '<p class="legend"><span class="key"><i class="size"></i>disk size</span>'
            '<span class="key"><i class="sent"></i>bytes on the wire</span></p>')


def throughput_chart(samples: Sequence[Sample]) -> str:
    """The network rate over the run's copy (and sync) as a line, MiB/s against time."""
    if len(samples) < 2:
        return '<p class="none">no copy progress recorded in the last run</p>'
    t0, t1 = samples[0].time, samples[-1].time
    top = max(s.rate for s in samples) or 1.0
    left, bottom = 84, CHART_HEIGHT - 24
    sx = (CHART_WIDTH - left - 10) / max(t1 - t0, 1e-3)
    sy = (bottom - 10) / top
    points = " ".join(f"{left + (s.time - t0) * sx:.1f},{bottom - s.rate * sy:.1f}"
                      for s in samples)
    mean = sum(s.rate for s in samples) / len(samples)
    return (f'<svg class="throughput" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
            f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
            'aria-label="network throughput over time">'
            f'<line class="axis" x1="{left}" y1="10" x2="{left}" y2="{bottom}"/>'
            f'<line class="axis" x1="{left}" y1="{bottom}" x2="{CHART_WIDTH - 10}" '
            f'y2="{bottom}"/><text x="{left - 4}" y="16" text-anchor="end">'
            f"{esc(human_size(top))}/s</text>"
            f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>'
            f'<text x="{left}" y="{bottom + 16}">0 s</text>'
            f'<text x="{CHART_WIDTH - 10}" y="{bottom + 16}" text-anchor="end">'
            f"{esc(duration(t1 - t0))}</text>"
            f'<polyline class="rate" points="{points}"/></svg>'
            f'<p class="legend">{len(samples)} samples; peak {esc(human_size(top))}/s, '
            f"mean {esc(human_size(mean))}/s</p>")


def boot_check(job: JobView) -> str:
    if not job.verdict and not job.evidence:
        return '<h3>Boot check</h3><p class="none">no boot check recorded</p>'
    lines = "\n".join(esc(line) for line in job.evidence)
    console = (f'<p>console evidence:</p><pre class="console">{lines}</pre>'
               if job.evidence else '<p class="none">no console lines kept</p>')
    return f"<h3>Boot check</h3>{facts_table(job.verdict, 'verdict')}{console}"


def carried_over(items: Sequence[str]) -> str:
    if not items:
        return ('<h3>What did not carry over</h3><p class="none">nothing recorded: '
                "everything the plan saw carries over</p>")
    rows = "".join(f"<li>{esc(item)}</li>" for item in items)
    return f'<h3>What did not carry over</h3><ul class="left-behind">{rows}</ul>'


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:1.5em;margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:2px}
h3{font-size:1.05em;margin-bottom:4px}
.meta,.legend,.source,.note{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;font-size:.9em}
th{background:#f4f4f4}
.error{color:#a00;font-weight:600}
.state.succeeded,.state.done,td.done{color:#176317}
.state.failed,td.failed{color:#a00}
.state.interrupted,td.interrupted,.state.running,td.running{color:#8a5a00}
svg text{font-size:12px;fill:#222}
svg .grid{stroke:#e3e3e3}svg .axis{stroke:#888}
rect.stage.failed{stroke:#d00;stroke-width:2}
rect.stage.interrupted,rect.stage.running{stroke:#333;stroke-dasharray:4 2}
rect.size{fill:#d8d8d8}rect.sent{fill:#2b6cb0}
polyline.rate{fill:none;stroke:#2b6cb0;stroke-width:2}
.key{margin-left:10px;white-space:nowrap}
.key i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.key i.size{background:#d8d8d8}.key i.sent{background:#2b6cb0}
pre.console{background:#111;color:#ddd;padding:8px;overflow-x:auto;font-size:12px}
section.job{margin-top:28px}
.none{color:#777;font-style:italic}
"""


__all__ = ["DiskBar", "JobView", "ReportView", "STAGE_COLOURS", "Sample", "Span", "clock",
           "duration", "esc", "render"]
