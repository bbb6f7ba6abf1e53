"""`p2v demo`: the built-in example, as far as the pipeline exists today.

It builds (or reuses) a legacy-server fixture, runs it as a live source to show what p2v will
see over SSH, and boot-checks the image on SATA (where it boots) and on virtio (where a raw
copy fails: what `p2v fix` will repair).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2v.testbed.fixtures import build_fixture
from p2v.testbed.sources import LiveSource
from p2v.verify.boot import BootOptions, BootVerdict, verify_boot


def demo_dir() -> Path:
    return Path(os.environ.get("P2V_DEMO_DIR", "/var/tmp/p2v-demo"))


def _verdict_line(label: str, verdict: BootVerdict) -> str:
    state = "boots" if verdict.booted else f"does not boot ({verdict.reason})"
    return f"  {label:<28} {state} in {verdict.elapsed_s:.0f} s [{verdict.accel}]"


def run_demo(variant: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the demo and return what it did (summary lines and the evidence)."""
    out = demo_dir()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress(f"building or reusing the '{variant}' fixture (first build takes a few minutes)")
    image = build_fixture(variant, progress=progress)
    progress(f"starting {image.hostname} as a live source in qemu (SATA, e1000e, own MAC)")
    with LiveSource(image) as source:
        seen = {
            "hostname": source.ssh(["hostname"]).stdout.strip(),
            "addresses": source.ssh(["ip", "-br", "-4", "addr", "show", "scope", "global"])
            .stdout.strip(),
            "disks": source.ssh(["lsblk", "-d", "-n", "-o", "NAME,SIZE,TYPE"]).stdout.strip(),
        }
        endpoint = f"ssh://{source.user}@{source.host}:{source.port}"
    progress("boot-checking the image on SATA (as on the physical machine)")
    sata = verify_boot(image.disks, BootOptions(bus="sata", nvram=image.nvram,
                                                macs=(image.mac,)), progress=progress)
    progress("boot-checking the image on virtio (as a plain copy would run as a VM)")
    virtio = verify_boot(image.disks, BootOptions(bus="virtio", nvram=image.nvram,
                                                  macs=(image.mac,)), progress=progress)
    report = {
        "fixture": json.loads(image.to_json()),
        "live_source": {"endpoint": endpoint, **seen},
        "verify_sata": sata.to_dict(),
        "verify_virtio": virtio.to_dict(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    addresses = "; ".join(" ".join(ln.split()) for ln in seen["addresses"].splitlines())
    report_path = out / f"demo-{variant}.json"
    report_path.write_text(json.dumps(report, indent=2))
    summary = [
        f"p2v demo ({variant}) done in {report['elapsed_s']:.0f} s",
        f"  fixture image:               {', '.join(str(d) for d in image.disks)}",
        f"  live source served at        {endpoint} (stopped again)",
        f"    hostname {seen['hostname']}; disks: {seen['disks'].replace(chr(10), '; ')}",
        f"    addresses: {addresses or 'none'}",
        _verdict_line("verify on SATA:", sata),
        _verdict_line("verify on virtio:", virtio),
        "  (a plain copy fails on virtio like this: that is what `p2v fix` repairs; the demo",
        "   runs the whole conversion once `p2v convert` exists)",
        f"  report: {report_path}",
        "  clean up: rm -r " + str(out) + "  (fixtures stay cached under "
        + str(image.directory.parent) + ")",
    ]
    report["summary"] = summary
    report_path.write_text(json.dumps(report, indent=2))
    return report
