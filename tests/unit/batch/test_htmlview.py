"""The batch's report.html: written beside the ledger at the end of every run (and when the
pool itself fails), one timeline row per job, a job whose work dir is on another host shown
from the ledger alone. A scripted pool stands in for the job processes (pure logic)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from p2v.batch.driver import run_batch
from p2v.batch.execute import JobOutcome
from p2v.batch.manifest import Manifest
from p2v.batch.pool import PoolDone, PoolEvent, PoolMessage, PoolPlaced
from p2v.errors import SchedulerLost
from p2v.job import JobSpec


class Pool:
    """Runs each job as SCRIPT says: its messages, one batch per poll; `lost` fails the pool."""

    def __init__(self, script: list[list[PoolMessage]], lost: bool = False) -> None:
        self.script, self.lost = script, lost
        self.submitted: list[str] = []

    @property
    def running(self) -> list[str]:
        return self.submitted

    def free_slots(self) -> int:
        return 3 - len(self.submitted)

    def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec.name)
        return ""

    def poll(self, timeout: float) -> list[PoolMessage]:
        if not self.script and self.lost:
            raise SchedulerLost(address="tcp://x:8786", detail="gone")
        return self.script.pop(0) if self.script else []

    def stop(self, grace: float = 60.0) -> list[PoolMessage]:
        return []

    def close(self) -> None:
        pass


def _manifest(tmp_path: Path, *names: str) -> Manifest:
    out = tmp_path / "out"
    return Manifest(path=tmp_path / "fleet.toml", output_dir=out, jobs=3,
                    specs=tuple(JobSpec(source=f"ssh://root@{n}", name=n, output_dir=out)
                                for n in names))


def _placed(name: str) -> list[PoolMessage]:
    return [PoolPlaced(name, "tcp://w1:1", f"/elsewhere/{name}", worker_name="w1"),
            PoolEvent(name, {"event": "stage-start", "stage": "copy"})]


def test_every_run_ends_with_the_page_beside_the_ledger(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "web01", "web02", "db01")
    script = [_placed("web01") + _placed("web02") + _placed("db01"),
              [PoolDone("web01", JobOutcome(name="web01", ok=True, stage="register")),
               PoolDone("web02", JobOutcome(name="web02", ok=False, stage="copy",
                                            error="stream <cut>", exit_code=5))]]
    result = run_batch(manifest, jobs=3, events=lambda e: None, pool=Pool(script + [[
        PoolDone("db01", JobOutcome(name="db01", ok=True, stage="register"))]]))
    page = manifest.state_dir / "report.html"
    assert result.html_report == str(page)
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    text = page.read_text()
    assert text.count('<g class="timeline-row"') == 3
    assert "stream &lt;cut&gt;" in text and "stream <cut>" not in text
    # The work dirs are on the cluster worker: the ledger's one bar, and a note saying so.
    assert text.count("is not on this host") == 3
    assert "fleet.toml" in text


def test_a_lost_scheduler_still_leaves_the_page(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "web01")
    with pytest.raises(SchedulerLost):
        run_batch(manifest, jobs=1, events=lambda e: None,
                  pool=Pool([_placed("web01")], lost=True))
    text = (manifest.state_dir / "report.html").read_text()
    assert text.count('<g class="timeline-row"') == 1 and "interrupted" in text
