"""`p2v batch` with the real runner and the real pipeline: failures recorded, Ctrl-C, resume.

Each test runs `python -m p2v batch` as a user would, against loopback sources (a loop
source's sshd, a port nobody listens on) and reads what the user relies on: exit codes, the
JSON events, the ledger and the report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from loop_sources import LoopSource
from schema_check import assert_all_valid, assert_valid

from p2v.batch.ledger import Ledger
from p2v.demo.image import FixtureImage
from p2v.demo.live import SourceEndpoint, free_port

DEAD_URI = "qemu:///system?socket=/nonexistent/p2v-test/libvirt-sock"


def _source(ep: SourceEndpoint) -> str:
    return f"ssh://{ep.user}@{ep.host}:{ep.port}"


def _batch(manifest: Path, *args: str, timeout: float = 300) -> tuple[int, list[dict[str, Any]],
                                                                       str]:
    assert_valid(tomllib.loads(manifest.read_text()), "manifest")
    proc = subprocess.run([sys.executable, "-m", "p2v", "batch", str(manifest), "--json", *args],
                          capture_output=True, text=True, timeout=timeout)
    events = assert_all_valid([json.loads(line) for line in proc.stdout.splitlines()], "events")
    for end in (e for e in events if e["event"] == "batch-job-end" and e["report"]):
        assert_valid(json.loads(Path(end["report"]).read_text()), "report")
    return proc.returncode, events, proc.stderr


def _ledger(out: Path) -> dict[str, Any]:
    with Ledger.open(out / ".p2v-batch" / "ledger.sqlite", readonly=True) as ledger:
        return {row.name: row for row in ledger.rows()}


def test_failing_jobs_fail_fast_are_recorded_and_retried(
        loop_source_bios: SourceEndpoint, guest_dir: Path, tmp_path: Path) -> None:
    ep = loop_source_bios
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    manifest = tmp_path / "fleet.toml"
    text = f"""
output_dir = "{guest_dir}"
connect = "{DEAD_URI}"
[defaults]
identity = "{ep.key}"
known_hosts = "{empty_known_hosts}"
verify = false
[[server]]
name = "nobody-home"
source = "ssh://root@127.0.0.1:{free_port()}"
[[server]]
name = "stranger"
source = "{_source(ep)}"
disks = {json.dumps(list(ep.disks))}
"""
    manifest.write_text(text)
    t0 = time.monotonic()
    rc, events, err = _batch(manifest, "--jobs", "2")
    assert time.monotonic() - t0 < 60, "unreachable sources must fail fast"
    assert rc == 1, err
    ends = {e["job"]: e for e in events if e["event"] == "batch-job-end"}
    assert ends["nobody-home"]["state"] == "failed"
    assert ends["nobody-home"]["stage"] == "inspect"
    assert "Connection refused" in ends["nobody-home"]["error"]
    assert ends["stranger"]["exit_code"] == 3            # host key refused
    assert "is not known" in ends["stranger"]["error"]
    # Every job event carries the job's name; both ran in parallel processes.
    starts = [e for e in events if e["event"] == "batch-job-start"]
    assert len({e["worker"] for e in starts}) == 2
    assert all(e.get("job") for e in events if e["event"] not in ("batch-start", "batch-done",
                                                                  "batch-stopping"))
    rows = _ledger(guest_dir)
    assert {n: (r.state, r.stage, r.attempts) for n, r in rows.items()} == {
        "nobody-home": ("failed", "inspect", 1), "stranger": ("failed", "inspect", 1)}
    assert rows["stranger"].exit_code == 3
    report = json.loads((guest_dir / ".p2v-batch" / "report.json").read_text())
    assert report["schema"] == "p2v.batch-report/1"
    assert report["counts"]["failed"] == 2 and report["exit_code"] == 1
    assert {j["name"]: j["state"] for j in report["jobs"]} == {"nobody-home": "failed",
                                                               "stranger": "failed"}

    # The dry run says both would be retried, and why; it changes nothing.
    plan = json.loads(subprocess.run(
        [sys.executable, "-m", "p2v", "batch", str(manifest), "--dry-run", "--json"],
        capture_output=True, text=True, check=True).stdout)["plan"]
    assert {p["job"]: p["action"] for p in plan} == {"nobody-home": "run", "stranger": "run"}
    assert "failed at inspect" in plan[1]["reason"]

    # Fix the host key: the rerun gets that job past inspect (to libvirt, which is not
    # there), and retries the other.
    manifest.write_text(text.replace(str(empty_known_hosts), str(ep.known_hosts)))
    rc, events, err = _batch(manifest, "--jobs", "2")
    assert rc == 1, err
    rows = _ledger(guest_dir)
    assert rows["stranger"].attempts == 2 and rows["stranger"].stage == "preflight"
    assert "cannot connect to libvirt" in (rows["stranger"].error or "")
    assert rows["nobody-home"].attempts == 2 and rows["nobody-home"].state == "failed"


def _pgroup_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _interrupt_when(proc: subprocess.Popen[str], ready: Any, timeout: float = 240) -> tuple[
        int, list[dict[str, Any]]]:
    """Read events until ready(events) holds, then SIGINT the batch and read to the end."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        events.append(json.loads(line))
        if ready(events):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "the jobs never got there"
    else:
        pytest.fail(f"the batch ended before it was interrupted: {events[-3:]}")
    rest, _ = proc.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines()]
    return proc.returncode, assert_all_valid(events, "events")


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ctrl_c_stops_every_job_cleanly_and_the_rerun_resumes(
        bios_image: FixtureImage, loop_source_bios: SourceEndpoint, libvirtd: Any,
        isolated_network: str, guest_dir: Path, tmp_path: Path) -> None:
    with LoopSource(bios_image) as second:
        manifest = tmp_path / "fleet.toml"
        entries = "".join(f"""
[[server]]
name = "{name}"
source = "{_source(ep)}"
disks = {json.dumps(list(ep.disks))}
identity = "{ep.key}"
known_hosts = "{ep.known_hosts}"
""" for name, ep in (("alpha", loop_source_bios), ("beta", second)))
        # full = true: more to copy, so both copies are still under way when interrupted.
        manifest.write_text(f'output_dir = "{guest_dir}"\n[defaults]\nverify = false\n'
                            'full = true\n'
                            f'networks = ["{isolated_network}"]\n{entries}')
        argv = [sys.executable, "-m", "p2v", "batch", str(manifest), "--jobs", "2", "--json"]

        def copying(events: list[dict[str, Any]]) -> bool:
            return {e["job"] for e in events if e["event"] == "progress"} == {"alpha", "beta"}

        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rc, events = _interrupt_when(proc, copying)
        stop_s = time.monotonic() - t0
        assert rc == 130, proc.stderr.read() if proc.stderr else ""
        workers = {e["job"]: int(e["worker"].rsplit(":", 1)[1])
                   for e in events if e["event"] == "batch-job-start"}
        # Every job process and everything it started (its process group) is gone.
        for pid in workers.values():
            assert not Path(f"/proc/{pid}").exists()
            assert _pgroup_members(pid) == []
        ends = {e["job"]: e for e in events if e["event"] == "batch-job-end"}
        assert {n: e["state"] for n, e in ends.items()} == {"alpha": "interrupted",
                                                            "beta": "interrupted"}, json.dumps(ends)
        assert events[-1]["event"] == "batch-done" and events[-1]["interrupted"]
        rows = _ledger(guest_dir)
        assert {n: (r.state, r.stage) for n, r in rows.items()} == {
            "alpha": ("interrupted", "copy"), "beta": ("interrupted", "copy")}

        # The rerun resumes both: inspect and preflight are not redone, the copy continues
        # with the chunks already journaled. Stopped again once that is seen.
        def resumed(events: list[dict[str, Any]]) -> bool:
            return {e["job"] for e in events if e["event"] == "disk-start"
                    and e.get("resumed_chunks", 0) > 0} == {"alpha", "beta"}

        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rc, events = _interrupt_when(proc, resumed)
        assert rc == 130
        starts = {e["job"]: e for e in events if e["event"] == "batch-job-start"}
        assert {n: (e["action"], e["attempt"]) for n, e in starts.items()} == {
            "alpha": ("resume", 2), "beta": ("resume", 2)}
        skipped = {(e["job"], e["stage"]) for e in events if e["event"] == "stage-skip"}
        assert {("alpha", "inspect"), ("alpha", "preflight"), ("beta", "inspect"),
                ("beta", "preflight")} <= skipped
        rows = _ledger(guest_dir)
        assert all(r.state == "interrupted" and r.attempts == 2 for r in rows.values())

        # The batch process killed outright (SIGKILL): its jobs stop by themselves; the
        # ledger still says running, and the next run takes that as interrupted and resumes.
        # Started as `nohup p2v batch` starts it, with SIGINT ignored: the jobs' parent-death
        # signal is SIGINT, and they must not inherit it ignored.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_sigint_ignored)  # noqa: PLW1509
        assert proc.stdout is not None
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if {e["job"] for e in events if e["event"] == "stage-start"} == {"alpha", "beta"}:
                proc.kill()
                break
        # Not communicate(): multiprocessing's resource tracker keeps the batch's stdout
        # until the last job process is gone, which is what is waited for below.
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        workers = {e["job"]: int(e["worker"].rsplit(":", 1)[1])
                   for e in events if e["event"] == "batch-job-start"}
        deadline = time.monotonic() + 60
        while any(_pgroup_members(pid) for pid in workers.values()):
            assert time.monotonic() < deadline, "orphaned jobs kept running"
            time.sleep(0.5)
        assert {r.state for r in _ledger(guest_dir).values()} == {"running"}
        plan = json.loads(subprocess.run(argv + ["--dry-run"], capture_output=True, text=True,
                                         check=True).stdout)["plan"]
        assert {p["job"]: p["action"] for p in plan} == {"alpha": "resume", "beta": "resume"}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rc, events = _interrupt_when(proc, lambda ev: ev[-1]["event"] == "batch-start")
        assert rc == 130
        assert sorted(events[0]["recovered"]) == ["alpha", "beta"]
        assert {r.state for r in _ledger(guest_dir).values()} == {"interrupted"}
        print(f"first run interrupted after {stop_s:.0f} s")
    assert os.path.isdir(guest_dir / "alpha")
