"""A batch as the HTML report shows it: every job of its ledger, each from its work dir.

The ledger says each job's state, stage, attempts and worker; the job's own work dir (when
it is on this host) says the rest: its stages on the clock, its disks, its throughput, its
boot check (p2v.jobview). The batch's latest report.json adds the run: its id, when, and
what it did with each entry. `p2v batch` writes the page beside its ledger at the end of
every run; `p2v report` writes it on demand.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from p2v.batch.ledger import JobRow, Ledger
from p2v.htmlreport import JobView, ReportView, Span, clock, render
from p2v.jobdir import read_regular_json
from p2v.jobview import job_view
from p2v.secure import replace_private

HTML_FILE = "report.html"


def _latest_run(state_dir: Path) -> dict[str, Any]:
    data = read_regular_json(state_dir / "report.json")
    return data if isinstance(data, dict) else {}


def row_view(row: JobRow, done_now: dict[str, Any] | None = None) -> JobView:
    """One ledger row, with what its work dir adds when it is here."""
    work_dir = Path(row.work_dir)
    facts = [("attempts", str(row.attempts)), ("worker", row.worker or "-")]
    if done_now:
        facts.append(("this run", f"{done_now.get('action')}: {done_now.get('reason')}"))
        if done_now.get("log"):
            facts.append(("log", str(done_now["log"])))
    try:
        found = job_view(work_dir) if work_dir.is_dir() else None
    except OSError:
        found = None
    if found is not None:
        return replace(found, state=row.state, stage=row.stage or found.stage,
                       error=row.error or found.error, facts=(*facts, *found.facts))
    spans: tuple[Span, ...] = ()
    if row.started_at is not None:
        end = row.finished_at or row.updated_at
        state = {"succeeded": "done", "running": "running"}.get(row.state, row.state)
        spans = (Span(row.stage or "inspect", row.started_at, end, state),)
    note = (f"the work dir {work_dir} is not on this host (a cluster worker's?): the stages "
            "are the ledger's, as one bar, and its disks and boot check are not shown")
    return JobView(name=row.name, source=row.source, state=row.state, stage=row.stage,
                   error=row.error, spans=spans, facts=(*facts, ("work dir", row.work_dir)),
                   notes=(note,) if row.started_at is not None else ())


def batch_view(state_dir: Path, ledger: Ledger) -> ReportView:
    """The batch in STATE_DIR (its .p2v-batch) with ledger open: every job, the last run."""
    run = _latest_run(state_dir)
    this_run = {str(j.get("name")): j for j in run.get("jobs", ()) if isinstance(j, dict)}
    jobs = tuple(row_view(row, this_run.get(row.name)) for row in ledger.rows())
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    facts = [("ledger", str(ledger.path)),
             ("jobs", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")]
    if run:
        facts += [("manifest", str(run.get("manifest"))), ("last run", str(run.get("run_id"))),
                  ("jobs in parallel", str(run.get("jobs_in_parallel")))]
        if isinstance(run.get("started"), int | float) and \
                isinstance(run.get("finished"), int | float):
            facts.append(("ran", f"{clock(run['started'])} to {clock(run['finished'])}"
                          + (" (interrupted)" if run.get("interrupted") else "")))
    name = Path(str(run.get("manifest"))).name if run.get("manifest") else state_dir.parent.name
    return ReportView(title=f"p2v batch report: {name}", kind="batch", jobs=jobs,
                      facts=tuple(facts))


def write_batch_html(state_dir: Path, ledger: Ledger, path: Path | None = None) -> Path:
    """Render the batch's page to PATH (default: report.html beside the ledger), 0600."""
    target = path or state_dir / HTML_FILE
    replace_private(target, render(batch_view(state_dir, ledger)), "HTML report")
    return target


__all__ = ["HTML_FILE", "batch_view", "row_view", "write_batch_html"]
