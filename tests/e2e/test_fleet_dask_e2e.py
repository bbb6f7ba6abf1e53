"""Acceptance of `p2v batch --scheduler` (issue 10): a fleet over two conversion hosts.

A Dask scheduler and two workers run as separate processes (tests/dask_cluster.py), each
worker with its own output dir and one p2v slot; the test bed's loop sources of the bios
fixture are the servers and the test libvirtd is every host's libvirt. The jobs run the real
pipeline on the workers; the ledger stays with the submitting `p2v batch`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from dask_cluster import Cluster, running_cluster
from libvirt_env import open_conn
from loop_sources import LoopSource
from schema_check import assert_all_valid
from test_batch_fleet import _entry  # one [[server]] of a loop source

from p2v.batch.ledger import Ledger
from p2v.demo.image import FixtureImage
from p2v.demo.live import SourceEndpoint


def _defined(uri: str, names: tuple[str, ...]) -> set[str]:
    conn = open_conn(uri)
    try:
        return {d.name() for d in conn.listAllDomains()} & set(names)
    finally:
        conn.close()


def _ledger(out: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    with Ledger.open(out / ".p2v-batch" / "ledger.sqlite", readonly=True) as ledger:
        rows = {row.name: row for row in ledger.rows()}
        return rows, {name: ledger.attempts(name) for name in rows}


def _failures(events: list[dict[str, Any]], cluster: Cluster) -> str:
    """Each failed job's error and the end of its job.log on its worker, for the report."""
    lines = []
    for e in events:
        if e["event"] == "batch-job-end" and e["state"] != "succeeded":
            lines.append(f"{e['job']} at {e['stage']} on {e.get('worker')}: {e['error']}")
            for log in cluster.root.glob(f"*/{e['job']}/job.log"):
                lines += [f"  {log}:"] + log.read_text().splitlines()[-15:]
    return "\n".join(lines)


@pytest.fixture
def cluster(guest_dir: Path) -> Iterator[Cluster]:
    # Under guest_dir: qemu (as libvirt-qemu) must reach the images the workers write.
    with running_cluster(guest_dir / "cluster") as cluster:
        yield cluster


@pytest.mark.slow
def test_three_servers_over_two_workers_converted_and_verified(
        bios_image: FixtureImage, loop_source_bios: SourceEndpoint, libvirtd: Any,
        isolated_network: str, guest_names: list[str], guest_dir: Path,
        cluster: Cluster) -> None:
    names = ("p2vfleet-a", "p2vfleet-b", "p2vfleet-c")
    guest_names.extend(names)
    with ExitStack() as stack:
        eps = [loop_source_bios] + [stack.enter_context(LoopSource(bios_image))
                                    for _ in range(2)]
        out = guest_dir / "submitter"
        manifest = guest_dir / "fleet.toml"
        manifest.write_text(
            f'output_dir = "{out}"\nconnect = "{libvirtd.uri}"\n[defaults]\nverify = true\n'
            'verify_timeout = 900\n'
            + "".join(_entry(n, ep, isolated_network) for n, ep in zip(names, eps, strict=True)))
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                               "--scheduler", cluster.address], capture_output=True, text=True,
                              timeout=3600)
        seconds = time.monotonic() - t0
        assert "Traceback" not in proc.stderr, proc.stderr
        events = assert_all_valid([json.loads(line) for line in proc.stdout.splitlines()],
                                  "events")
        assert proc.returncode == 0, _failures(events, cluster)
    assert _defined(libvirtd.uri, names) == set(names)
    rows, _ = _ledger(out)
    workers = {w.name: w for w in cluster.workers.values()}
    placed = {e["job"]: e for e in events if e["event"] == "batch-job-placed"}
    for name in names:
        row = rows[name]
        assert (row.state, row.stage, row.attempts) == ("succeeded", "done", 1)
        where = workers[placed[name]["worker_name"]]
        assert row.worker == placed[name]["worker"]
        assert row.work_dir == str(where.output_dir / name)
        assert (where.output_dir / name / "report.json").is_file()
    # Spread over both workers, as the ledger shows.
    assert {rows[n].worker for n in names} == {p["worker"] for p in placed.values()}
    assert len({rows[n].worker for n in names}) == 2
    report = json.loads((out / ".p2v-batch" / "report.json").read_text())
    assert sorted(j["name"] for j in report["jobs"]) == sorted(names)
    assert all(j["summary"]["booted"] is True for j in report["jobs"])
    print(f"\nthree servers over two workers, verified: {seconds:.0f} s")


@pytest.mark.slow
def test_a_worker_killed_mid_copy_its_job_finishes_on_the_other(
        bios_image: FixtureImage, loop_source_bios: SourceEndpoint, libvirtd: Any,
        isolated_network: str, guest_names: list[str], guest_dir: Path,
        cluster: Cluster) -> None:
    names = ("p2vfault-a", "p2vfault-b")
    guest_names.extend(names)
    with LoopSource(bios_image) as second:
        out = guest_dir / "submitter"
        manifest = guest_dir / "fleet.toml"
        manifest.write_text(
            f'output_dir = "{out}"\nconnect = "{libvirtd.uri}"\n[defaults]\nverify = false\n'
            + "".join(_entry(n, ep, isolated_network)
                      for n, ep in zip(names, (loop_source_bios, second), strict=True)))
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "p2v", "batch", str(manifest), "--json",
                                 "--scheduler", cluster.address], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        events: list[dict[str, Any]] = []
        victim = None
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if event["event"] == "progress" and event["job"] == names[0]:
                placed = next(e for e in events if e["event"] == "batch-job-placed"
                              and e["job"] == names[0])
                victim = cluster.workers[placed["worker_name"]]
                cluster.kill(victim)
                break
        assert victim is not None, events
        rest, err = proc.communicate(timeout=3600)
        seconds = time.monotonic() - t0
        events += [json.loads(line) for line in rest.splitlines()]
    assert_all_valid(events, "events")
    assert "Traceback" not in err, err
    assert proc.returncode == 0, _failures(events, cluster)
    other = next(w for w in cluster.workers.values() if w is not victim)
    retry = [e for e in events if e["event"] == "batch-job-retry"]
    assert [(e["job"], e["stage"], e["worker_name"], e["resume"]) for e in retry] == [
        (names[0], "copy", other.name, False)]
    rows, attempts = _ledger(out)
    assert {n: (r.state, r.stage) for n, r in rows.items()} == {
        names[0]: ("succeeded", "done"), names[1]: ("succeeded", "done")}
    # The ledger shows the retry: the attempt on the dead worker, then the one that finished.
    first, second_try = attempts[names[0]]
    assert first["state"] == "failed" and first["stage"] == "copy" and "died" in first["error"]
    assert second_try["state"] == "succeeded" and second_try["worker"] == rows[names[0]].worker
    assert first["worker"] != second_try["worker"]
    assert rows[names[0]].work_dir == str(other.output_dir / names[0])
    assert _defined(libvirtd.uri, names) == set(names)
    report = json.loads((out / ".p2v-batch" / "report.json").read_text())
    assert sorted(j["name"] for j in report["jobs"]) == sorted(names)
    assert len([e for e in events if e["event"] == "batch-job-end"]) == 2
    print(f"\na worker killed mid-copy, its job finished on the other: {seconds:.0f} s")
