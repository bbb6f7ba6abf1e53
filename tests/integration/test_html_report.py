"""`p2v report` and the batch's report.html, rendered in a real headless Chromium.

The batch is a real `p2v batch` of three jobs against loopback sources: one whose copy is
under way (behind a bandwidth limit) when the batch is stopped with Ctrl-C, one whose
source nobody listens on, one whose host key is unknown (the same server, as localhost).
The job report is of a work dir made by the real inspect, preflight and copy stages over a
loop source (libvirt's own test driver, test:///default, stands in for the target: nothing
is booted); the stages after the copy need guest boots, so their records (the boot check's
console among them, with a line that tries to inject a script) are written as those stages
write them.

Each page is opened in Chromium (Debian's `chromium`, `make setup` installs it): the
rendered DOM must hold one timeline row per job, and a screenshot is kept (under the test's
tmp dir, and copied to $P2V_SCREENSHOT_DIR when that is set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from p2v import preflight, stages
from p2v.demo.live import SourceEndpoint, free_port
from p2v.job import JobSpec
from p2v.jobdir import WorkDir, write_json
from p2v.model import Inventory
from p2v.report import JobValues, StageTime, build_report

HOSTILE = '<script>document.title="owned"</script>'
TEST_URI = "test:///default"        # libvirt's in-process test driver: no daemon, no guest


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: run `make setup` (scripts/install-system-deps "
                    "installs Debian's chromium for this test)")
    return found


def _chromium_run(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["nice", "-n", "19", _chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--hide-scrollbars", f"--user-data-dir={page.parent / '.chromium'}", *args,
            page.resolve().as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=True)


def render_in_chromium(page: Path, shot: Path) -> str:
    """The DOM as Chromium rendered PAGE, and its screenshot at SHOT (kept, and copied to
    $P2V_SCREENSHOT_DIR if set)."""
    dom = _chromium_run(page, "--dump-dom").stdout
    _chromium_run(page, f"--screenshot={shot}", "--window-size=1280,1600")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert len(data) > 20_000, f"a near-empty screenshot ({len(data)} bytes)"
    keep = os.environ.get("P2V_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    print(f"screenshot: {shot}" + (f" (and {Path(keep) / shot.name})" if keep else ""))
    return dom


def _source(ep: SourceEndpoint) -> str:
    return f"ssh://{ep.user}@{ep.host}:{ep.port}"


def _self_contained(page: str) -> None:
    lowered = page.lower()
    assert "<script" not in lowered and "http://" not in lowered and "https://" not in lowered


def _run_until(argv: list[str], ready: Callable[[list[dict[str, Any]]], bool]
               ) -> tuple[int, list[dict[str, Any]], str]:
    """The batch run until READY(events), then Ctrl-C (SIGINT), to its end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        events.append(json.loads(line))
        if ready(events):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "the copy never got under way"
    else:
        pytest.fail(f"the batch ended before its copy was stopped: {events[-3:]} "
                    f"{proc.stderr.read() if proc.stderr else ''}")
    rest, err = proc.communicate(timeout=180)
    return proc.returncode, events + [json.loads(x) for x in rest.splitlines()], err


def test_the_batch_writes_its_report_and_chromium_shows_a_row_per_job(
        loop_source_bios: SourceEndpoint, tmp_path: Path) -> None:
    ep = loop_source_bios
    out = tmp_path / "jobs"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f"""
output_dir = "{out}"
connect = "{TEST_URI}"
jobs = 3
[defaults]
identity = "{ep.key}"
known_hosts = "{ep.known_hosts}"
verify = false
[[server]]
name = "alpha"
source = "{_source(ep)}"
disks = {json.dumps(list(ep.disks))}
full = true
bandwidth_limit = "2M"
[[server]]
name = "nobody-home"
source = "ssh://root@127.0.0.1:{free_port()}"
[[server]]
name = "stranger"
source = "ssh://{ep.user}@localhost:{ep.port}"
known_hosts = "{empty}"
disks = {json.dumps(list(ep.disks))}
""")
    argv = [sys.executable, "-m", "p2v", "batch", str(manifest), "--json"]

    def copying(events: list[dict[str, Any]]) -> bool:    # two samples of alpha's rate
        return sum(1 for e in events if e["event"] == "progress" and e["job"] == "alpha") >= 2

    rc, events, err = _run_until(argv, copying)
    assert rc == 130, err
    ends = {e["job"]: e["state"] for e in events if e["event"] == "batch-job-end"}
    assert ends == {"alpha": "interrupted", "nobody-home": "failed", "stranger": "failed"}
    page = out / ".p2v-batch" / "report.html"
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    report = json.loads((out / ".p2v-batch" / "report.json").read_text())
    assert report["html_report"] == str(page)
    text = page.read_text()
    _self_contained(text)
    assert text.count('<polyline class="rate"') == 1          # alpha's copy, and only it

    dom = render_in_chromium(page, tmp_path / "batch-report.png")
    assert dom.count('class="timeline-row"') == 3
    for name in ("alpha", "nobody-home", "stranger"):
        assert f'data-job="{name}"' in dom
    assert 'class="stage interrupted"' in dom and 'class="stage failed"' in dom
    assert "Connection refused" in dom and "is not known" in dom
    assert "sent " in dom                    # alpha's copy so far, against its disk's size

    # `p2v report` of the same batch, from its output dir, to a file of one's own.
    mine = tmp_path / "mine.html"
    proc = subprocess.run([sys.executable, "-m", "p2v", "report", str(out), "-o", str(mine)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"HTML report: {mine}"
    assert mine.read_text().count('<g class="timeline-row"') == 3


def _stage(ctx: stages.JobContext, name: str, run: Callable[[], Any]) -> Any:
    """One stage as the pipeline runs it: its events, its marker."""
    ctx.stage = name
    ctx.emit({"event": "stage-start"})
    t0 = time.monotonic()
    value = run()
    ctx.wd.mark_done(name, time.monotonic() - t0)
    ctx.emit({"event": "stage-done", "seconds": round(time.monotonic() - t0, 1)})
    return value


def _recorded(ctx: stages.JobContext, name: str, seconds: float, record: str,
              data: Any) -> None:
    """A stage that needs a guest boot, as it records itself: its file, marker, events."""
    ctx.stage = name
    ctx.emit({"event": "stage-start"})
    time.sleep(seconds)
    write_json(ctx.wd.file(record), data)
    ctx.wd.mark_done(name, seconds)
    ctx.emit({"event": "stage-done", "seconds": seconds})


def _verdict(inv: Inventory) -> dict[str, Any]:
    """verify.json as a boot of this source would leave it: its hostname and NICs."""
    nics = [{"name": n.name, "mac": n.mac.lower(), "addresses": list(n.addresses)}
            for n in inv.nics if n.mac]
    return {"booted": True, "reason": None, "elapsed_s": 41.0, "accel": "kvm", "bus": "virtio",
            "firmware": "bios", "os": "linux", "hostname": inv.hostname, "root": "/dev/vda1",
            "interfaces": nics, "via": "libvirt-transient", "domain": "p2v-verify-web01",
            "evidence": ["[    0.000000] Linux version 6.1.0-18-amd64", HOSTILE,
                         f"Debian GNU/Linux 12 {inv.hostname} ttyS0",
                         f"{inv.hostname} login:"]}


def _job_from_a_real_copy(ep: SourceEndpoint, output_dir: Path) -> Path:
    spec = JobSpec(source=_source(ep), name="web01", output_dir=output_dir,
                   disks=tuple(ep.disks), connect=TEST_URI, identity=ep.key,
                   known_hosts=ep.known_hosts)
    with WorkDir(spec.work_dir, spec.name) as wd:
        write_json(wd.file("spec.json"), spec.to_dict())
        ctx = stages.JobContext(spec, wd, None)
        t0 = time.monotonic()
        ctx.emit({"event": "job-start", "stage": None, "schema": "p2v.events/1",
                  "work_dir": str(wd.path), "source": spec.source, "resume_at": "inspect",
                  "done": []})
        try:
            inv = _stage(ctx, "inspect", lambda: stages.inspect(ctx))
            plan = _stage(ctx, "preflight", lambda: preflight.run(ctx, inv))
            disks = _stage(ctx, "copy", lambda: stages.copy(ctx, plan))
        finally:
            ctx.close()
        _recorded(ctx, "fix", 1.0, "fix.json", {"changes": ["virtio drivers in initramfs"]})
        verdict = _verdict(inv)
        _recorded(ctx, "verify", 1.5, "verify.json", verdict)
        domain = {"name": "web01", "uri": TEST_URI, "uuid": "0" * 32, "started": False}
        _recorded(ctx, "register", 0.5, "register.json", domain)
        times = [StageTime(s, float(wd.marker_data(s)["seconds"])) for s in
                 ("inspect", "preflight", "copy", "fix", "verify", "register")]
        report = build_report(spec, wd.path, times,
                              JobValues(inventory=inv, plan=plan, disks=disks,
                                        verdict=verdict, domain=domain),
                              None, None, time.monotonic() - t0)
        write_json(wd.file("report.json"), report.to_dict())
        ctx.emit({"event": "job-done", "stage": None, "report": report.to_dict()})
        assert [asdict(d)["wire_bytes"] > 0 for d in disks] == [True] * len(disks)
    return spec.work_dir


def test_a_job_report_of_a_real_copy_renders_in_chromium(
        loop_source_bios: SourceEndpoint, tmp_path: Path) -> None:
    work = _job_from_a_real_copy(loop_source_bios, tmp_path / "jobs")
    events = [json.loads(x) for x in (work / "events.jsonl").read_text().splitlines()]
    assert sum(1 for e in events if e["event"] == "progress") >= 2, "too few rate samples"
    proc = subprocess.run([sys.executable, "-m", "p2v", "report", str(work)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    page = work / "report.html"
    assert proc.stdout.strip() == f"HTML report: {page}"
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    text = page.read_text()
    _self_contained(text)
    assert "&lt;script&gt;document.title=&quot;owned&quot;&lt;/script&gt;" in text

    dom = render_in_chromium(page, tmp_path / "job-report.png")
    assert dom.count('class="timeline-row"') == 1
    # The injected line is text in the console block, never a script: the title stands.
    assert "<title>p2v job report: web01</title>" in dom
    assert dom.count('<rect class="stage done"') == 6
    assert '<polyline class="rate"' in dom
    assert " login:</pre>" in dom and "sent " in dom
    assert "(as on the source)" in dom           # the guest NICs against the source's
