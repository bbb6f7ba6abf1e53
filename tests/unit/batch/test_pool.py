"""The job function and the local pool: picklable for a cluster, failures contained.

The job functions here are stand-ins for the pipeline (defined at top level so the spawned
children can import them, as a cluster worker would): they test the pool's mechanics —
events and outcomes come back, a crashing job is a failed job, not a crashed batch.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

from p2v.batch.execute import JobOutcome, execute_job, stage_of
from p2v.batch.pool import LocalPool, PoolDone, PoolEvent
from p2v.job import JobSpec


def _spec(tmp_path: Path, name: str) -> JobSpec:
    return JobSpec(source=f"ssh://root@{name}", name=name, output_dir=tmp_path)


def job_ok(spec: JobSpec, events):  # type: ignore[no-untyped-def]
    events({"event": "stage-start", "job": spec.name, "stage": "copy"})
    return JobOutcome(name=spec.name, ok=True, stage="done")


def job_dies(spec: JobSpec, events):  # type: ignore[no-untyped-def]
    print("about to die")
    os._exit(3)


def job_sleeps(spec: JobSpec, events):  # type: ignore[no-untyped-def]
    events({"event": "stage-start", "job": spec.name, "stage": "copy"})
    time.sleep(600)


def test_the_job_function_and_its_values_pickle() -> None:
    # What a cluster scheduler ships: the function by reference, the spec and the outcome.
    spec = JobSpec(source="ssh://root@web01", name="web01", output_dir=Path("/srv"),
                   disks=("/dev/sda",), identity=Path("/k"))
    assert pickle.loads(pickle.dumps(execute_job)) is execute_job
    assert pickle.loads(pickle.dumps(spec)) == spec
    outcome = JobOutcome(name="web01", ok=False, stage="copy", error="x", summary={"a": 1})
    assert pickle.loads(pickle.dumps(outcome)) == outcome


def test_stage_of_reads_only_stage_changes() -> None:
    assert stage_of({"event": "stage-start", "stage": "fix"}) == "fix"
    assert stage_of({"event": "stage-skip", "stage": "inspect"}) == "inspect"
    assert stage_of({"event": "progress", "stage": "copy"}) is None
    assert stage_of({"event": "message", "stage": "copy"}) is None
    assert stage_of({"event": "job-done", "stage": None}) is None


def _collect(pool: LocalPool, timeout: float = 60) -> list[PoolEvent | PoolDone]:
    messages: list[PoolEvent | PoolDone] = []
    deadline = time.monotonic() + timeout
    while pool.running and time.monotonic() < deadline:
        messages += pool.poll(0.2)
    return messages


def test_a_crashing_job_is_a_failed_job_and_the_other_finishes(tmp_path: Path) -> None:
    ok_pool = LocalPool(1, tmp_path / "logs", job_ok)
    ok_pool.submit(_spec(tmp_path, "good"))
    bad_pool = LocalPool(1, tmp_path / "logs", job_dies)
    bad_pool.submit(_spec(tmp_path, "bad"))
    good_msgs, bad_msgs = _collect(ok_pool), _collect(bad_pool)
    assert [m.event["stage"] for m in good_msgs if isinstance(m, PoolEvent)] == ["copy"]
    (done,) = [m for m in good_msgs if isinstance(m, PoolDone)]
    assert done.outcome.ok and not done.interrupted
    (dead,) = [m for m in bad_msgs if isinstance(m, PoolDone)]
    assert not dead.outcome.ok
    assert "ended without a result (exit code 3)" in (dead.outcome.error or "")
    assert "about to die" in (tmp_path / "logs" / "bad.log").read_text()
    ok_pool.close()
    bad_pool.close()


def test_stop_interrupts_running_jobs(tmp_path: Path) -> None:
    pool = LocalPool(2, tmp_path / "logs", job_sleeps)
    pool.submit(_spec(tmp_path, "a"))
    pool.submit(_spec(tmp_path, "b"))
    assert pool.free_slots() == 0
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while seen != {"a", "b"} and time.monotonic() < deadline:
        seen |= {m.name for m in pool.poll(0.2) if isinstance(m, PoolEvent)}
    messages = pool.stop(grace=10)
    done = {m.name: m for m in messages if isinstance(m, PoolDone)}
    assert set(done) == {"a", "b"}
    assert all(m.interrupted for m in done.values())
    assert pool.running == [] and pool.free_slots() == 2
    pool.close()
