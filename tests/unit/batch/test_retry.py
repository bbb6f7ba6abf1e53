"""The driver's side of a worker dying under a job (`p2v batch --scheduler`), pure logic.

A scripted pool stands in for Dask: it reports where the job starts, the job's events, a
second start elsewhere (what Dask does when the first worker dies) and the outcome. The
ledger must count each start as a try, end the lost one with the reason, and stop at
--tries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schema_check import assert_all_valid

from p2v.batch.driver import run_batch
from p2v.batch.execute import JobOutcome
from p2v.batch.ledger import Ledger
from p2v.batch.manifest import Manifest
from p2v.batch.pool import PoolDone, PoolEvent, PoolMessage, PoolPlaced
from p2v.job import JobSpec


class ScriptedPool:
    """Submits nothing; hands out SCRIPT's messages, one batch per poll."""

    def __init__(self, script: list[list[PoolMessage]]) -> None:
        self.script = script
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    @property
    def running(self) -> list[str]:
        return [n for n in self.submitted if n not in self.cancelled]

    def slots(self) -> int:
        return 1

    def free_slots(self) -> int:
        return 1 - len(self.running) if not self.submitted else 0

    def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec.name)
        return ""

    def cancel(self, name: str) -> None:
        self.cancelled.append(name)

    def poll(self, timeout: float) -> list[PoolMessage]:
        return self.script.pop(0) if self.script else []

    def stop(self, grace: float = 60.0) -> list[PoolMessage]:
        return []

    def close(self) -> None:
        pass


def _run(tmp_path: Path, script: list[list[PoolMessage]], tries: int) -> tuple[
        list[dict[str, Any]], ScriptedPool, Any, list[dict[str, Any]]]:
    spec = JobSpec(source="ssh://root@web01", name="web01", output_dir=tmp_path / "out")
    manifest = Manifest(path=tmp_path / "fleet.toml", output_dir=tmp_path / "out", jobs=1,
                        specs=(spec,))
    events: list[dict[str, Any]] = []
    pool = ScriptedPool(script)
    run_batch(manifest, jobs=1, events=events.append, pool=pool, tries=tries)
    # The batch's own events are real (the job events here are the script's stand-ins).
    assert_all_valid([e for e in events if e["event"].startswith("batch-")], "events")
    with Ledger.open(manifest.state_dir / "ledger.sqlite", readonly=True) as ledger:
        return events, pool, ledger.get("web01"), ledger.attempts("web01")


def _copying(worker: str) -> list[PoolMessage]:
    return [PoolPlaced("web01", worker, f"/{worker}/web01", worker_name=worker),
            PoolEvent("web01", {"event": "stage-start", "stage": "copy"})]


def test_a_second_start_is_a_counted_retry_and_the_job_finishes_there(tmp_path: Path) -> None:
    done = PoolDone("web01", JobOutcome(name="web01", ok=True, stage="done"))
    events, pool, row, attempts = _run(tmp_path, [_copying("w1"), _copying("w2"), [done]],
                                       tries=3)
    assert (row.state, row.stage, row.attempts, row.worker) == ("succeeded", "done", 2, "w2")
    assert row.work_dir == "/w2/web01"
    assert [(a["worker"], a["state"], a["stage"]) for a in attempts] == [
        ("w1", "failed", "copy"), ("w2", "succeeded", "done")]
    assert "its worker w1 died while running it (at copy); retried" == attempts[0]["error"]
    retry = [e for e in events if e["event"] == "batch-job-retry"]
    assert [(e["previous_worker"], e["worker"], e["try"], e["attempt"]) for e in retry] == [
        ("w1", "w2", 2, 2)]
    assert [e["state"] for e in events if e["event"] == "batch-job-end"] == ["succeeded"]
    # Job events name the worker they came from.
    stages = [e for e in events if e["event"] == "stage-start"]
    assert [e["worker"] for e in stages] == ["w1", "w2"]
    assert pool.cancelled == []


def test_past_the_tries_the_job_is_stopped_and_failed_with_the_reason(tmp_path: Path) -> None:
    events, pool, row, attempts = _run(
        tmp_path, [_copying("w1"), _copying("w2"), _copying("w3")], tries=2)
    assert pool.cancelled == ["web01"]
    assert (row.state, row.stage, row.attempts) == ("failed", "copy", 2)
    assert row.error == ("its worker w2 died while running it (at copy); gave up after 2 "
                         "tries (see --tries)")
    assert [a["state"] for a in attempts] == ["failed", "failed"]
    ends = [e for e in events if e["event"] == "batch-job-end"]
    assert [(e["state"], e["worker"]) for e in ends] == [("failed", "w2")]
