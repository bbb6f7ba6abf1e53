"""`p2v batch --scheduler` against a real Dask cluster on loopback (issue 10), cheaply.

A scheduler and two workers are started with `dask scheduler` / `dask worker` as separate
processes (each worker with its own output dir and one p2v slot). The jobs are real p2v jobs
that fail at inspect without any conversion: a port nobody listens on (at once), or a
server that accepts and never speaks SSH (after p2v's 15 s SSH timeout) - long enough to
kill the worker running one and watch the batch retry it on the other worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dask_cluster import Cluster, running_cluster
from schema_check import assert_all_valid, assert_valid

from p2v.batch.ledger import Ledger
from p2v.demo.live import free_port


def _batch(manifest: Path, *args: str, timeout: float = 300) -> tuple[int, list[dict[str, Any]],
                                                                       str]:
    assert_valid(tomllib.loads(manifest.read_text()), "manifest")
    proc = subprocess.run([sys.executable, "-m", "p2v", "batch", str(manifest), "--json", *args],
                          capture_output=True, text=True, timeout=timeout)
    events = _events(proc.stdout, proc.stderr)
    for end in (e for e in events if e["event"] == "batch-job-end" and e["report"]):
        assert_valid(json.loads(Path(end["report"]).read_text()), "report")
    return proc.returncode, events, proc.stderr


def _events(stdout: str, stderr: str = "") -> list[dict[str, Any]]:
    """The batch's JSON lines; a line that is not one fails with it and stderr shown."""
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON event line ({exc}): {line!r}\n{stderr}") from exc
    return assert_all_valid(events, "events")


def _manifest(path: Path, out: Path, sources: dict[str, str]) -> Path:
    text = f'output_dir = "{out}"\n[defaults]\nverify = false\n'
    for name, source in sources.items():
        text += f'[[server]]\nname = "{name}"\nsource = "{source}"\n'
    path.write_text(text)
    return path


def _ledger(out: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    with Ledger.open(out / ".p2v-batch" / "ledger.sqlite", readonly=True) as ledger:
        rows = {row.name: row for row in ledger.rows()}
        return rows, {name: ledger.attempts(name) for name in rows}


class _SilentServer:
    """Accepts TCP connections and never answers: an SSH client waits for its banner."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._arrived:
                self.conns.append(conn)
                self._arrived.notify_all()

    def wait_for_connection(self, count: int, timeout: float = 60) -> None:
        """Until COUNT connections arrived in all (a client now waits for a banner)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.conns) >= count, timeout):
                raise AssertionError(f"no connection #{count} within {timeout} s")

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "cluster") as cluster:
        yield cluster


def test_scheduler_unreachable_is_one_line_before_any_job(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "fleet.toml", out, {"a": "ssh://root@127.0.0.1:22"})
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    rc, events, err = _batch(manifest, "--scheduler", address)
    assert rc == 6
    assert time.monotonic() - t0 < 30
    lines = err.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "Connection refused" in lines[0], err
    assert events == []
    assert not out.exists(), "nothing may be created or started"


def test_jobs_run_on_both_workers_and_the_ledger_says_where(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    sources = {f"job{i}": f"ssh://root@127.0.0.1:{free_port()}" for i in range(3)}
    manifest = _manifest(tmp_path / "fleet.toml", out, sources)
    # w2's output dir from the manifest's host table beats its P2V_OUTPUT_DIR.
    w2_dir = tmp_path / "w2-from-manifest"
    manifest.write_text(manifest.read_text() + f'[hosts.w2]\noutput_dir = "{w2_dir}"\n')
    rc, events, err = _batch(manifest, "--scheduler", cluster.address)
    assert rc == 1, err
    start = next(e for e in events if e["event"] == "batch-start")
    assert start["jobs"] == 2                       # the two workers' p2v slots
    placed = {e["job"]: e for e in events if e["event"] == "batch-job-placed"}
    assert set(placed) == set(sources)
    rows, attempts = _ledger(out)
    dirs = {"w1": cluster.workers["w1"].output_dir, "w2": w2_dir}
    for name, row in rows.items():
        assert (row.state, row.stage, row.attempts) == ("failed", "inspect", 1)
        assert "Connection refused" in (row.error or "")
        # The ledger (here, on the submitter) names the worker; the work dir is that host's.
        assert row.worker == placed[name]["worker"]
        work_dir = dirs[placed[name]["worker_name"]] / name
        assert row.work_dir == str(work_dir)
        assert (work_dir / "spec.json").is_file()
        assert attempts[name][0]["worker"] == row.worker
    # The first two jobs started together, one per slot: both workers were used.
    assert len({p["worker"] for p in placed.values()}) == 2
    # Each job's own events came back from its worker, with the worker's address.
    for name in sources:
        stages = [e for e in events if e.get("job") == name and e["event"] == "stage-start"]
        assert stages and all(e["worker"] == placed[name]["worker"] for e in stages)
    report = json.loads((out / ".p2v-batch" / "report.json").read_text())
    assert sorted(j["name"] for j in report["jobs"]) == sorted(sources)
    assert all(j["worker"] for j in report["jobs"])


def _kill_where_placed(proc: subprocess.Popen[str], cluster: Cluster,
                       events: list[dict[str, Any]], silent: _SilentServer,
                       earlier: int) -> str:
    """Read the batch's events until a job is placed; once it waits for the silent server
    (which had EARLIER connections before the batch started), kill that worker; its name."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = _events(line)[0]
        events.append(event)
        if event["event"] == "stage-start" and event["stage"] == "inspect":
            worker = next(e for e in events if e["event"] == "batch-job-placed")
            victim = cluster.workers[worker["worker_name"]]
            silent.wait_for_connection(earlier + 1)   # the job waits for its banner
            cluster.kill(victim)
            return victim.name
    err = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"the job never started: {events} {err}")


def _job_pid(log: Path) -> int:
    line = next(x for x in log.read_text().splitlines() if " starts in pid " in x)
    return int(line.split(" starts in pid ")[1].split()[0])


def test_a_dead_workers_job_is_retried_elsewhere_within_the_bound(
        cluster: Cluster, tmp_path: Path) -> None:
    silent = _SilentServer()
    try:
        out = tmp_path / "out"
        manifest = _manifest(tmp_path / "fleet.toml", out,
                             {"slow": f"ssh://root@127.0.0.1:{silent.port}"})
        events: list[dict[str, Any]] = []
        earlier = len(silent.conns)
        proc = subprocess.Popen([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                                 "--scheduler", cluster.address, "--tries", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim = _kill_where_placed(proc, cluster, events, silent, earlier)
        rest, err = proc.communicate(timeout=120)
        events += _events(rest, err)
        assert proc.returncode == 1, err
        other = next(w for w in cluster.workers.values() if w.name != victim)
        retry = next(e for e in events if e["event"] == "batch-job-retry")
        assert retry["worker_name"] == other.name and retry["try"] == 2
        assert retry["resume"] is False                 # the other host has no work dir yet
        # The job on the dead worker was stopped too (PR_SET_PDEATHSIG), not left behind.
        pid = _job_pid(cluster.workers[victim].output_dir / ".p2v-batch" / "logs" / "slow.log")
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(pid), f"the dead worker's job process {pid} is still running"
        rows, attempts = _ledger(out)
        row = rows["slow"]
        assert (row.state, row.stage, row.attempts) == ("failed", "inspect", 2)
        assert "no answer" in (row.error or "") or "SSH" in (row.error or ""), row.error
        assert row.work_dir == str(other.output_dir / "slow")
        first, second = attempts["slow"]
        assert first["state"] == "failed" and "died" in first["error"]
        assert first["worker"] != second["worker"] == row.worker
        ends = [e for e in events if e["event"] == "batch-job-end"]
        assert len(ends) == 1
        report = json.loads((out / ".p2v-batch" / "report.json").read_text())
        assert [j["name"] for j in report["jobs"]] == ["slow"]

        # The bound: with --tries 1 the job on a dying worker is failed with the reason.
        cluster.start_worker(victim)
        cluster.wait_for(2)
        manifest = _manifest(tmp_path / "fleet2.toml", tmp_path / "out2",
                             {"once": f"ssh://root@127.0.0.1:{silent.port}"})
        events = []
        earlier = len(silent.conns)
        proc = subprocess.Popen([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                                 "--scheduler", cluster.address, "--tries", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _kill_where_placed(proc, cluster, events, silent, earlier)
        rest, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        rows, attempts = _ledger(tmp_path / "out2")
        assert rows["once"].state == "failed" and rows["once"].attempts == 1
        assert "died" in (rows["once"].error or "") and "gave up after 1 tries" in \
            (rows["once"].error or "")
    finally:
        silent.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_submitter_stops_its_jobs_and_the_rerun_resubmits_them(
        cluster: Cluster, tmp_path: Path) -> None:
    silent = _SilentServer()
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "fleet.toml", out,
                         {"hang": f"ssh://root@127.0.0.1:{silent.port}",
                          "quick": f"ssh://root@127.0.0.1:{free_port()}"})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                                 "--scheduler", cluster.address],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            event = _events(line)[0]
            if event["event"] == "stage-start" and event["job"] == "hang":
                break
        proc.kill()
        proc.wait()
        # The scheduler drops the dead client's task; the worker stops the job at once.
        log = next(tmp_path.glob("cluster/w*/.p2v-batch/logs/hang.log"))
        pid = _job_pid(log)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), "the job of a dead submitter is still running"
    finally:
        silent.close()          # from now on that source refuses: the rerun fails fast
    rc, events, err = _batch(manifest, "--scheduler", cluster.address)
    assert rc == 1, err
    start = next(e for e in events if e["event"] == "batch-start")
    assert "hang" in start["recovered"]
    starts = {e["job"]: e for e in events if e["event"] == "batch-job-start"}
    assert starts["hang"]["action"] == "resume"
    # It resumes where it lands on the host holding its work dir, afresh on the other.
    first_host = log.parent.parent.parent.name
    placed = next(e for e in events if e["event"] == "batch-job-placed" and e["job"] == "hang")
    assert placed["resume"] is (placed["worker_name"] == first_host), (placed, first_host)
    # Both unfinished ("quick" failed: retried as locally; a succeeded job would be skipped).
    assert set(starts) == {"hang", "quick"}
    rows, attempts = _ledger(out)
    assert rows["hang"].attempts == 2 and rows["hang"].state == "failed"
    assert attempts["hang"][0]["state"] == "interrupted"


def test_a_lost_scheduler_is_one_line_and_the_jobs_are_interrupted(
        cluster: Cluster, tmp_path: Path) -> None:
    silent = _SilentServer()
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "fleet.toml", out,
                         {"hang": f"ssh://root@127.0.0.1:{silent.port}"})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                                 "--scheduler", cluster.address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and cluster.scheduler is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "stage-start":
                break
        os.killpg(cluster.scheduler.pid, 9)
        _, err = proc.communicate(timeout=120)
    finally:
        silent.close()
    assert proc.returncode == 6
    lines = err.strip().splitlines()
    assert len(lines) == 1 and cluster.address in lines[0] and "lost the Dask scheduler" in \
        lines[0], err
    rows, _ = _ledger(out)
    assert rows["hang"].state == "interrupted" and rows["hang"].stage == "inspect"


def test_ctrl_c_stops_the_jobs_on_the_workers(cluster: Cluster, tmp_path: Path) -> None:
    silent = _SilentServer()
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "fleet.toml", out,
                         {f"hang{i}": f"ssh://user{i}@127.0.0.1:{silent.port}" for i in range(3)})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                                 "--scheduler", cluster.address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        events = []
        for line in proc.stdout:
            events += _events(line)
            if len([e for e in events if e["event"] == "stage-start"]) == 2:
                break
        t0 = time.monotonic()
        proc.send_signal(2)
        rest, err = proc.communicate(timeout=120)
        stop_s = time.monotonic() - t0
    finally:
        silent.close()
    assert proc.returncode == 130, err
    assert stop_s < 15, "the jobs must stop promptly"
    events += _events(rest, err)
    ends = {e["job"]: e["state"] for e in events if e["event"] == "batch-job-end"}
    # Two ran (one per slot) and were stopped; the third was never submitted.
    assert ends == {"hang0": "interrupted", "hang1": "interrupted"}
    for log in tmp_path.glob("cluster/w*/.p2v-batch/logs/*.log"):
        assert not _alive(_job_pid(log)), log
    rows, _ = _ledger(out)
    assert {n: r.state for n, r in rows.items()} == {"hang0": "interrupted",
                                                     "hang1": "interrupted", "hang2": "pending"}
