"""`p2v convert --cutover`: the sync stage's place, its passes and the downtime in the report.

The stages and the sync itself are stand-ins (pure pipeline logic); the real sync runs in
tests/integration/test_sync.py.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from fake_stages import LOADERS, fake_value, stage_function
from schema_check import assert_all_valid, assert_valid

from p2v import stages
from p2v.errors import StreamError
from p2v.job import CUTOVER_STAGES, STAGES, JobSpec
from p2v.jobdir import WorkDir
from p2v.pipeline import run_job
from p2v.source.freeze import FreezeReport
from p2v.source.tracker import NOT_SINCE_COPY
from p2v.transfer import sync as sync_module
from p2v.transfer.sync import SyncDiskResult, SyncRequest, SyncResult


def spec(tmp_path: Path, **kw: Any) -> JobSpec:
    return JobSpec(**{"source": "ssh://root@web01", "name": "web01", "output_dir": tmp_path,
                      "cutover": True, **kw})


def fake_stages(monkeypatch: pytest.MonkeyPatch, ran: list[str], fail: list[str]) -> None:
    """Every stage but sync is a stand-in; the sync stage's own pass logic is real."""
    for stage in STAGES:
        module, attr = stage_function(stage)

        def run(*args: Any, stage: str = stage) -> Any:
            ran.append(stage)
            return fake_value(stage)
        monkeypatch.setattr(module, attr, run)
        monkeypatch.setattr(stages, LOADERS[stage], lambda wd, s=stage: fake_value(s))
    monkeypatch.setattr(stages.JobContext, "source", lambda ctx: None)

    calls: list[SyncRequest] = []
    deltas = iter([100, 50, 60, 7, 100, 50, 60, 7])

    def fake_sync(source: Any, request: SyncRequest, emit: Any = None,
                  tracker: Any = None) -> SyncResult:
        assert tracker is trackers[-1]      # one tracker across the passes of a run
        ran.append("sync-final" if request.freeze else "sync-live")
        if fail and request.freeze:
            fail.pop()
            raise StreamError(host="web01", device="/dev/sda", detail="connection reset")
        calls.append(request)
        # The first pass rehashes (nothing tracked before it), the others are tracked.
        first = len(calls) == 1
        result = SyncResult([SyncDiskResult(
            "/dev/sda", Path("i"), 4, 1, 0, 4, 5, 1.0, False, "python3", tracked=not first,
            rehash_why=NOT_SINCE_COPY if first else None, read_chunks=2)], 1.0)
        changed = next(deltas)
        monkeypatch.setattr(SyncResult, "changed_bytes", property(lambda self, c=changed: c))
        if request.freeze:
            result.freeze = FreezeReport(frozen_at=10.0, thawed_at=12.5)
        return result

    monkeypatch.setattr(sync_module, "sync", fake_sync)
    trackers: list[Any] = []

    def fake_tracker(source: Any, request: SyncRequest) -> Any:
        trackers.append(object())
        return contextlib.nullcontext(trackers[-1])

    monkeypatch.setattr(sync_module, "write_tracker", fake_tracker)


def test_cutover_syncs_while_the_delta_shrinks_then_freezes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    fake_stages(monkeypatch, ran, [])
    events: list[dict[str, Any]] = []
    report = run_job(spec(tmp_path, before_final="systemctl stop db"), events.append)
    assert report.ok, report.error
    assert_all_valid(events, "events")
    assert_valid(json.loads((tmp_path / "web01" / "report.json").read_text()), "report")
    # 100 -> 50 shrinks, 60 does not: three live passes, then the frozen one.
    assert ran == ["inspect", "preflight", "copy", "sync-live", "sync-live", "sync-live",
                   "sync-final", "fix", "verify", "register"]
    assert [s.stage for s in report.stages] == list(CUTOVER_STAGES)
    assert report.downtime_s == 2.5
    data = json.loads((tmp_path / "web01" / "sync.json").read_text())
    assert [p["changed_bytes"] for p in data["live_passes"]] == [100, 50, 60]
    # How each pass found its chunks, and what bounded the downtime.
    assert [p["tracked"] for p in data["live_passes"]] == [False, True, True]
    assert data["live_passes"][0]["how"].startswith("rehashed: every used chunk was hashed")
    assert NOT_SINCE_COPY in data["live_passes"][0]["how"]
    assert report.downtime_bound == data["downtime_bound"] == (
        "tracked: only the 2 chunk(s) written since the last pass were read")


def test_a_failed_final_pass_resumes_at_the_sync_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    fake_stages(monkeypatch, ran, ["once"])
    first = run_job(spec(tmp_path))
    assert not first.ok and first.failed_stage == "sync"
    wd = WorkDir(tmp_path / "web01", "web01")
    assert wd.first_unfinished(CUTOVER_STAGES) == "sync"
    ran.clear()
    second = run_job(spec(tmp_path))
    assert second.ok, second.error
    assert ran[0] == "sync-live" and ran[-3:] == ["fix", "verify", "register"]
