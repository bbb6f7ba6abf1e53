"""Acceptance of `p2v batch`: three servers, one broken, two at a time; the fix reruns one.

Three loop sources serve the bios fixture (each its own sshd, host key and loop devices).
The third entry maps its NICs to a libvirt network that does not exist: its preflight fails
with that reason while the other two are converted (copied, fixed, optionally boot-checked,
registered) by the real pipeline into the test libvirtd. After the manifest is fixed, the
rerun skips the two finished jobs and converts only the third.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from libvirt_env import open_conn
from loop_sources import LoopSource
from schema_check import assert_all_valid, assert_valid

from p2v.batch.ledger import Ledger
from p2v.demo.image import FixtureImage
from p2v.demo.live import SourceEndpoint

NAMES = ("p2vbatch-a", "p2vbatch-b", "p2vbatch-c")
MISSING_NET = "p2vbatch-no-such-net"


def _entry(name: str, ep: SourceEndpoint, network: str) -> str:
    return f"""
[[server]]
name = "{name}"
source = "ssh://{ep.user}@{ep.host}:{ep.port}"
disks = {json.dumps(list(ep.disks))}
identity = "{ep.key}"
known_hosts = "{ep.known_hosts}"
networks = ["{network}"]
"""


def _run(manifest: Path) -> tuple[int, list[dict[str, Any]], float]:
    assert_valid(tomllib.loads(manifest.read_text()), "manifest")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "p2v", "batch", str(manifest), "--jobs", "2",
                           "--json"], capture_output=True, text=True, timeout=3600)
    events = assert_all_valid([json.loads(line) for line in proc.stdout.splitlines()], "events")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, events, time.monotonic() - t0


def _defined(uri: str) -> set[str]:
    conn = open_conn(uri)
    try:
        return {d.name() for d in conn.listAllDomains()} & set(NAMES)
    finally:
        conn.close()


# Both slow: even without the boot checks the three fixes take 6-8 minutes here (TCG, two
# cores). The default suite covers the batch through tests/integration/test_batch.py.
@pytest.mark.slow
@pytest.mark.parametrize("verify", [
    pytest.param(False, id="no-verify"),
    pytest.param(True, id="verify"),
])
def test_batch_of_three_one_broken_then_fixed(
        verify: bool, bios_image: FixtureImage, loop_source_bios: SourceEndpoint,
        libvirtd: Any, isolated_network: str, guest_names: list[str], guest_dir: Path) -> None:
    guest_names.extend(NAMES)
    with ExitStack() as stack:
        eps = [loop_source_bios] + [stack.enter_context(LoopSource(bios_image))
                                    for _ in range(2)]
        manifest = guest_dir / "fleet.toml"
        head = (f'output_dir = "{guest_dir}"\n[defaults]\nverify = {str(verify).lower()}\n'
                # Two TCG boots at once on two shared cores: room well past the usual 60-170 s.
                f"verify_timeout = 900\n")
        good = [_entry(n, ep, isolated_network) for n, ep in zip(NAMES[:2], eps, strict=False)]
        manifest.write_text(head + "".join(good) + _entry(NAMES[2], eps[2], MISSING_NET))

        rc, events, first_s = _run(manifest)
        assert rc == 1
        ends = {e["job"]: e for e in events if e["event"] == "batch-job-end"}
        assert {n: e["state"] for n, e in ends.items()} == {
            NAMES[0]: "succeeded", NAMES[1]: "succeeded", NAMES[2]: "failed"}, json.dumps(ends)
        broken = ends[NAMES[2]]
        assert broken["stage"] == "preflight"
        assert MISSING_NET in broken["error"] and "\n" not in broken["error"]
        # Never more than two jobs at once.
        running, peak = 0, 0
        for e in events:
            running += {"batch-job-start": 1, "batch-job-end": -1}.get(e["event"], 0)
            peak = max(peak, running)
        assert peak == 2
        assert _defined(libvirtd.uri) == set(NAMES[:2])
        with Ledger.open(guest_dir / ".p2v-batch" / "ledger.sqlite", readonly=True) as ledger:
            rows = {r.name: r for r in ledger.rows()}
        assert rows[NAMES[0]].stage == "done" and rows[NAMES[2]].stage == "preflight"
        report = json.loads((guest_dir / ".p2v-batch" / "report.json").read_text())
        assert report["counts"] == {"succeeded": 2, "failed": 1, "skipped": 0,
                                    "interrupted": 0, "pending": 0}
        for job in report["jobs"][:2]:
            assert job["summary"]["domain"] == job["name"]
            assert job["summary"].get("booted") is (True if verify else None)
            assert Path(job["report_path"]).is_file()
            assert_valid(json.loads(Path(job["report_path"]).read_text()), "report")

        # Fix the manifest: the rerun converts only the broken entry.
        manifest.write_text(head + "".join(good) + _entry(NAMES[2], eps[2], isolated_network))
        rc, events, second_s = _run(manifest)
        assert rc == 0
        assert {e["job"] for e in events if e["event"] == "batch-job-skip"} == set(NAMES[:2])
        started = [e for e in events if e["event"] == "batch-job-start"]
        assert [(e["job"], e["attempt"]) for e in started] == [(NAMES[2], 2)]
        # It continued where it failed: inspect was not redone.
        assert {e["stage"] for e in events if e["event"] == "stage-skip"} == {"inspect"}
        assert _defined(libvirtd.uri) == set(NAMES)
        with Ledger.open(guest_dir / ".p2v-batch" / "ledger.sqlite", readonly=True) as ledger:
            assert {r.name: (r.state, r.attempts) for r in ledger.rows()} == {
                NAMES[0]: ("succeeded", 1), NAMES[1]: ("succeeded", 1),
                NAMES[2]: ("succeeded", 2)}
        print(f"\nverify={verify}: first run {first_s:.0f} s, rerun {second_s:.0f} s")
