"""The batch ledger: state transitions, the rerun decision, recovery, the state-dir lock."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from p2v.batch.ledger import Ledger, StateLock, decide, spec_hash
from p2v.errors import BatchBusy, LedgerError
from p2v.job import JobSpec


def _spec(tmp_path: Path, name: str = "web01", **kw: object) -> JobSpec:
    return JobSpec(source=f"ssh://root@{name}", name=name, output_dir=tmp_path, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger.open(tmp_path / "ledger.sqlite") as opened:
        yield opened  # type: ignore[misc]


def test_a_job_runs_to_success_and_is_then_skipped(tmp_path: Path, ledger: Ledger) -> None:
    spec = _spec(tmp_path)
    assert decide(spec, ledger.get("web01")).action == "run"
    ledger.enrol(spec)
    assert ledger.get("web01").state == "pending"  # type: ignore[union-attr]
    assert ledger.start(spec, "run1") == 1
    ledger.assign("web01", "host:123")
    ledger.stage("web01", "inspect")
    ledger.stage("web01", "copy")
    ledger.finish("web01", ok=True, stage="done", report_path="/x/report.json", exit_code=0)
    row = ledger.get("web01")
    assert row is not None
    assert (row.state, row.stage, row.attempts, row.worker, row.report_path) == (
        "succeeded", "done", 1, "host:123", "/x/report.json")
    assert row.started_at is not None and row.finished_at >= row.started_at  # type: ignore[operator]
    item = decide(spec, row)
    assert item.action == "skip"
    # The same server with a changed entry is run again.
    assert decide(replace(spec, memory_mib=4096), row).action == "run"


def test_a_failed_job_is_retried_with_its_reason(tmp_path: Path, ledger: Ledger) -> None:
    spec = _spec(tmp_path)
    ledger.start(spec, "run1")
    ledger.stage("web01", "preflight")
    ledger.finish("web01", ok=False, error="web01 reports no disk /dev/sdz",
                  error_class="SourceDeviceError", exit_code=2)
    row = ledger.get("web01")
    assert row is not None and row.state == "failed" and row.stage == "preflight"
    item = decide(spec, row)
    assert item.action == "run"
    assert "failed at preflight: web01 reports no disk /dev/sdz" in item.reason
    assert ledger.start(spec, "run2") == 2
    row = ledger.get("web01")
    assert row is not None and row.state == "running" and row.error is None
    attempts = ledger.attempts("web01")
    assert [(a["attempt"], a["run_id"], a["state"]) for a in attempts] == [
        (1, "run1", "failed"), (2, "run2", "running")]
    assert attempts[0]["error"] == "web01 reports no disk /dev/sdz"


def test_interrupted_and_stale_running_jobs_are_resumed(tmp_path: Path, ledger: Ledger) -> None:
    a, b = _spec(tmp_path, "a"), _spec(tmp_path, "b")
    ledger.start(a, "run1")
    ledger.stage("a", "copy")
    ledger.interrupt("a")
    ledger.start(b, "run1")
    ledger.stage("b", "fix")
    # The batch process died with b running: the next batch marks it interrupted.
    assert ledger.recover() == ["b"]
    for name, stage in (("a", "copy"), ("b", "fix")):
        row = ledger.get(name)
        assert row is not None and row.state == "interrupted" and row.stage == stage
        item = decide(a if name == "a" else b, row)
        assert item.action == "resume" and f"interrupted at {stage}" in item.reason
    assert ledger.recover() == []


def test_transitions_out_of_order_are_refused(tmp_path: Path, ledger: Ledger) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(ValueError):
        ledger.stage("web01", "copy")          # never started
    ledger.start(spec, "run1")
    with pytest.raises(ValueError):
        ledger.start(spec, "run1")             # already running
    ledger.finish("web01", ok=True)
    for bad in (lambda: ledger.finish("web01", ok=False), lambda: ledger.interrupt("web01"),
                lambda: ledger.stage("web01", "fix")):
        with pytest.raises(ValueError):
            bad()


def test_plan_and_spec_hash(tmp_path: Path, ledger: Ledger) -> None:
    a, b = _spec(tmp_path, "a"), _spec(tmp_path, "b")
    assert spec_hash(a) == spec_hash(_spec(tmp_path, "a"))
    assert spec_hash(a) != spec_hash(replace(a, disks=("/dev/sda",)))
    ledger.start(a, "r")
    ledger.finish("a", ok=True)
    assert [(i.spec.name, i.action) for i in ledger.plan([a, b])] == [("a", "skip"),
                                                                    ("b", "run")]


def test_the_ledger_survives_reopening_and_readonly_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as ledger:
        ledger.start(_spec(tmp_path), "r")
        ledger.finish("web01", ok=True)
    with Ledger.open(path, readonly=True) as ledger:
        row = ledger.get("web01")
        assert row is not None and row.state == "succeeded"


def test_an_unreadable_ledger_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError) as exc:
        Ledger.open(path)
    assert str(path) in exc.value.message and "\n" not in exc.value.message


def test_one_batch_per_state_dir(tmp_path: Path) -> None:
    state = tmp_path / ".p2v-batch"
    with StateLock(state):
        # Another process (the lock is an flock: a second open file in this one would pass).
        probe = ("import sys; from pathlib import Path; from p2v.batch.ledger import StateLock\n"
                 "from p2v.errors import BatchBusy\n"
                 "try:\n    StateLock(Path(sys.argv[1])).__enter__()\n"
                 "except BatchBusy as e:\n    print(e.message)\n")
        out = subprocess.run([sys.executable, "-c", probe, str(state)], capture_output=True,
                             text=True, check=True).stdout
        assert f"another p2v batch (pid {__import__('os').getpid()}) is running on {state}" in out
    with StateLock(state):
        pass
    assert BatchBusy.exit_code == 1


def test_the_shared_bandwidth_limit_and_unset_new_fields_leave_the_hash_alone(
        tmp_path: Path) -> None:
    import hashlib
    import json

    a = _spec(tmp_path, "a")
    # As p2v hashed a spec before the new fields existed: every older key, nothing else.
    old = {k: v for k, v in a.to_dict().items() if k not in ("host_bandwidth_limit",
                                                              "virtio_win", "images",
                                                              "in_place")}
    before = hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":"))
                            .encode()).hexdigest()
    assert spec_hash(a) == before
    # The batch's --bandwidth-limit changes how fast, not what: a finished job stays done.
    assert spec_hash(replace(a, host_bandwidth_limit=8e6)) == spec_hash(a)
    assert spec_hash(replace(a, virtio_win=tmp_path / "virtio-win.iso")) != spec_hash(a)
    assert spec_hash(replace(a, images=(tmp_path / "a.qcow2",))) != spec_hash(a)
