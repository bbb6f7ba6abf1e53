"""`p2v demo`: the whole story on a fresh machine, with the built-in example.

It builds (or reuses) a legacy-server fixture, runs it in qemu as a live SSH source (SATA
disk, e1000e NIC with its own MAC, static address), makes sure a libvirtd answers (starting
one if needed) with an isolated network, and runs `p2v convert` on the live server: copy,
fix, boot check on virtio with the NIC isolated, register. It returns where everything is
and how to clean up.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2v.clean import clean_job
from p2v.demo.fixtures import build_fixture
from p2v.demo.libvirtd import URI, Libvirtd, ensure_network
from p2v.demo.live import LiveSource
from p2v.job import JobSpec
from p2v.pipeline import run_job
from p2v.report import JobReport

DEMO_NETWORK = "p2v-demo"
DEMO_BRIDGE = "virbr-p2vdemo"


def demo_dir() -> Path:
    return Path(os.environ.get("P2V_DEMO_DIR", "/var/tmp/p2v-demo"))


def _forget_previous(name: str, jobs: Path, progress: Callable[[str], None]) -> None:
    """A previous demo's job and guest go first (clean_job removes only its own guest)."""
    if (jobs / name / "spec.json").is_file():
        progress(f"removing the previous demo's job {name} (and its guest)")
        clean_job(name, jobs, domain=True, uri=URI)
        return
    from p2v.target.libvirt import LibvirtTarget

    with LibvirtTarget(URI) as target:
        facts = target.describe(name)
    if facts is None or not facts.disks:
        return
    # A demo run from another P2V_DEMO_DIR: its work dir is the disks' directory.
    other = Path(facts.disks[0]).parent
    if (other / "spec.json").is_file() and other.name == name:
        progress(f"removing the demo guest {name} of an earlier run in {other.parent}")
        clean_job(name, other.parent, domain=True, uri=URI)


def _progress_sink(progress: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    quarter: dict[str, int] = {}

    def sink(event: dict[str, Any]) -> None:
        kind, stage = event.get("event"), event.get("stage")
        if kind == "stage-start":
            progress(f"[{stage}]")
        elif kind == "message":
            progress(f"[{stage}] {event.get('text')}")
        elif kind == "progress":
            done, total = int(event.get("done_chunks", 0)), max(1, int(event.get("chunks", 1)))
            step = 4 * done // total
            if step > quarter.get(str(event.get("device")), -1):
                quarter[str(event.get("device"))] = step
                progress(f"[copy] {event.get('device')}: {100 * done // total}% "
                         f"({int(event.get('wire_bytes', 0)) >> 20} MiB sent)")
        elif kind == "stage-done":
            progress(f"[{stage}] done in {event.get('seconds')} s")
    return sink


def run_demo(variant: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the demo; the returned dict has the job report, the evidence and summary lines."""
    out = demo_dir()
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    jobs = out / "jobs"
    name = f"p2v-demo-{variant}"
    started = time.monotonic()
    progress(f"building or reusing the '{variant}' fixture (first build takes a few minutes)")
    image = build_fixture(variant, progress=progress)
    daemon = Libvirtd(URI)
    progress("making sure a libvirtd answers at " + URI)
    daemon.start()
    try:
        made_net = ensure_network(DEMO_NETWORK, DEMO_BRIDGE, URI)
        _forget_previous(name, jobs, progress)
        progress(f"starting {image.hostname} as a live source in qemu (SATA, e1000e, own MAC)")
        with LiveSource(image) as source:
            seen = {
                "hostname": source.ssh(["hostname"]).stdout.strip(),
                "addresses": source.ssh(["ip", "-br", "-4", "addr", "show", "scope",
                                         "global"]).stdout.strip(),
                "disks": source.ssh(["lsblk", "-d", "-n", "-o", "NAME,SIZE,TYPE"])
                .stdout.strip(),
            }
            endpoint = f"ssh://{source.user}@{source.host}:{source.port}"
            command = (f"p2v convert {endpoint} --name {name} --network {DEMO_NETWORK} "
                       f"--output-dir {jobs} --identity {source.key} "
                       f"--known-hosts {source.known_hosts}")
            progress(f"running: {command}")
            spec = JobSpec(source=endpoint, name=name, output_dir=jobs,
                           networks=(DEMO_NETWORK,), identity=source.key,
                           known_hosts=source.known_hosts, ssh_config=Path("/dev/null"),
                           connect=URI)     # the demo's own libvirtd, whatever the env says
            report = run_job(spec, _progress_sink(progress))
    finally:
        owned = daemon.owned
        daemon.stop()
    result: dict[str, Any] = {
        "fixture": json.loads(image.to_json()),
        "live_source": {"endpoint": endpoint, **seen},
        "convert": command,
        "job": report.to_dict(),
        "libvirtd_started_by_demo": owned,
        "network": DEMO_NETWORK,
        "network_made_by_demo": made_net,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    result["summary"] = _summary(variant, image.disks, report, result, seen, out, jobs)
    report_path = out / f"demo-{variant}.json"
    result["report_path"] = str(report_path)
    report_path.write_text(json.dumps(result, indent=2))
    return result


def _summary(variant: str, disks: Any, report: JobReport, result: dict[str, Any],
             seen: dict[str, str], out: Path, jobs: Path) -> list[str]:
    addresses = "; ".join(" ".join(ln.split()) for ln in seen["addresses"].splitlines())
    lines = [
        f"p2v demo ({variant}) {'done' if report.ok else 'FAILED'} in "
        f"{result['elapsed_s']:.0f} s",
        f"  fixture image:  {', '.join(str(d) for d in disks)}",
        f"  live source:    {result['live_source']['endpoint']} (qemu, stopped again): "
        f"hostname {seen['hostname']}; {addresses or 'no address'}; disks "
        + seen["disks"].replace("\n", "; "),
        f"  converted with: {result['convert']}",
    ]
    if not report.ok:
        lines.append(f"  error: {report.error}")
    else:
        domain = report.domain or {}
        verdict = report.verdict or {}
        lines += [
            f"  domain:         {report.name} at {domain.get('uri')}, shut off "
            f"({domain.get('domain_type')}, {domain.get('firmware')}, disks on "
            f"{domain.get('disk_bus')}, NIC {domain.get('nic_model')} on network "
            f"{result['network']})",
            f"  boot check:     booted on {verdict.get('bus')} in "
            f"{float(verdict.get('elapsed_s') or 0):.0f} s with the NIC isolated: hostname "
            f"{verdict.get('hostname')}, root {verdict.get('root')}",
            *[f"                  nic {line}" for line in report.network],
            "  time per stage: " + ", ".join(f"{s.stage} {s.seconds:.0f} s"
                                             for s in report.stages),
            f"  bytes sent:     {report.bytes_sent >> 20} MiB of a "
            f"{sum(d.size for d in report.disks) >> 20} MiB disk",
        ]
    lines += [
        f"  work dir:       {report.work_dir} (job.log, report.json, images)",
        f"  demo report:    {out / f'demo-{variant}.json'}",
        "  libvirtd:       " + ("started for the demo and stopped again; `libvirtd -d` "
                                "brings it back with the guest defined"
                                if result["libvirtd_started_by_demo"] else "already running"),
        f"  clean up:       p2v clean {report.name} --domain --output-dir {jobs}",
        f"                  virsh net-destroy {result['network']}; virsh net-undefine "
        f"{result['network']}; rm -r {out}",
        f"                  (fixtures stay cached under {Path(disks[0]).parent.parent})",
    ]
    return lines
