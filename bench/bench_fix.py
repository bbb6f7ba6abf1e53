#!/usr/bin/env python3
"""bench/fix: p2v fix vs virt-v2v on the same fixture copies, and whether each result boots.

Run as root from the repo: `bench/fix [--fixtures bios,uefi,...] [--tools p2v,virt-v2v]`
(`make bench-fix` installs virt-v2v and libnbd-bin first). The default is every bootable
fixture (the phony Windows images never boot).

For each fixture (the cached images are never written), with all of its disks:
- p2v:      a qcow2 overlay of each cached disk (the boot check's make_overlays), then
            `p2v fix --mac NAME=MAC OVERLAY...` (wall time of the whole command: appliance
            launch, inspection, initramfs rebuild, grub).
- virt-v2v: `virt-v2v -i disk CACHED... -o local -os DIR -of qcow2` (needs nbdcopy from
            libnbd-bin); its wall time includes writing the converted copies.
Then each result is booted on virtio with `p2v verify` (a fresh NVRAM for UEFI, the
fixture's MAC): `boots_virtio`, and `network_ok` when the fixture's interface name carries
its static address. Writes bench/results/fix.json, a list of {fixture, tool, wall_s,
completed, boots_virtio, network_ok, reason, load_1min} (rows of fixtures/tools not run
this time are kept), and prints the table for docs/dev/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2v.accel import guestfs_env  # noqa: E402
from p2v.demo.fixtures import build_fixture  # noqa: E402
from p2v.demo.image import FixtureError, FixtureImage  # noqa: E402
from p2v.verify.boot import BootOptions, make_overlays, verify_boot  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fix.json"


FIXTURES = "bios,uefi,dracut,bullseye,trixie,xfsmd"


def boot(image: FixtureImage, disks: list[Path]) -> tuple[bool, bool, str | None]:
    # An md or LVM root that does not come up waits out initramfs-tools' root timeout.
    verdict = verify_boot(disks, BootOptions(bus="virtio", firmware=image.firmware,
                                              macs=(image.mac,), timeout=900))
    nics = {n.name: n for n in verdict.interfaces}
    network_ok = (image.nic_name in nics
                  and image.address in nics[image.nic_name].addresses)
    return verdict.booted, network_ok, verdict.reason


def run_p2v(image: FixtureImage, work: Path) -> dict[str, Any]:
    overlays = work / f"{image.variant}-p2v"
    overlays.mkdir()
    disks = make_overlays(image.disks, overlays)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "p2v.cli", "fix", "--json", "--mac",
                           f"{image.nic_name}={image.mac}", *map(str, disks)],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    wall = time.monotonic() - started
    result: dict[str, Any] = {"fixture": image.variant, "tool": "p2v", "wall_s": round(wall, 1),
                              "completed": proc.returncode == 0}
    if proc.returncode != 0:
        result["reason"] = proc.stderr.strip().splitlines()[-1:]
    return result | _boot_fields(image, disks, result["completed"])


def run_virt_v2v(image: FixtureImage, work: Path) -> dict[str, Any]:
    out = work / f"{image.variant}-v2v"
    out.mkdir()
    env = dict(os.environ, **guestfs_env())
    started = time.monotonic()
    proc = subprocess.run(["virt-v2v", "-i", "disk", *map(str, image.disks), "-o", "local",
                           "-os", str(out), "-of", "qcow2", "-on", f"{image.variant}-v2v"],
                          capture_output=True, text=True, env=env, timeout=3600)
    wall = time.monotonic() - started
    disks = sorted(p for p in out.iterdir() if p.name.startswith(f"{image.variant}-v2v-sd"))
    completed = proc.returncode == 0 and bool(disks) and disks[0].stat().st_size > 0
    result: dict[str, Any] = {"fixture": image.variant, "tool": "virt-v2v",
                              "wall_s": round(wall, 1), "completed": completed}
    if not completed:
        # virt-v2v prints progress on stdout and its one-line error on stderr.
        lines = [line for line in (proc.stdout + "\n" + proc.stderr).splitlines()
                 if line.strip()]
        errors = [line for line in lines if "error:" in line]
        result["reason"] = errors[-2:] or lines[-3:]
    if completed and len(disks) != len(image.disks):
        completed = False
        result["completed"] = False
        result["reason"] = [f"{len(disks)} disk(s) written for {len(image.disks)}"]
    return result | _boot_fields(image, disks, completed)


def _boot_fields(image: FixtureImage, disks: list[Path], completed: bool) -> dict[str, Any]:
    if not completed:
        return {"boots_virtio": False, "network_ok": False}
    booted, network_ok, reason = boot(image, disks)
    fields: dict[str, Any] = {"boots_virtio": booted, "network_ok": network_ok}
    if reason:
        fields["boot_reason"] = reason
    return fields


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| fixture | tool | wall s | completed | boots on virtio | NIC name + address "
             "| load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fixture']} | {r['tool']} | {r['wall_s']} | "
                     f"{'yes' if r['completed'] else 'no'} | "
                     f"{'yes' if r['boots_virtio'] else 'no'} | "
                     f"{'yes' if r['network_ok'] else 'no'} | {r.get('load_1min', '?')} |")
    for fixture in sorted({r["fixture"] for r in rows}):
        by = {r["tool"]: r for r in rows if r["fixture"] == fixture}
        if "p2v" in by and by.get("virt-v2v", {}).get("completed"):
            ratio = by["p2v"]["wall_s"] / by["virt-v2v"]["wall_s"]
            lines.append(f"\n{fixture}: p2v / virt-v2v wall time = {ratio:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", default=FIXTURES)
    parser.add_argument("--tools", default="p2v,virt-v2v")
    args = parser.parse_args()
    runners = {"p2v": run_p2v, "virt-v2v": run_virt_v2v}
    rows: list[dict[str, Any]] = []
    failed_builds: list[str] = []
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    with tempfile.TemporaryDirectory(prefix="p2v-bench-fix-", dir="/var/tmp") as tmp:
        for variant in args.fixtures.split(","):
            try:
                image = build_fixture(variant)
            except FixtureError as exc:
                # One fixture that cannot be built must not cost the figures of the others.
                print(f"bench/fix: {variant}: {exc}", file=sys.stderr, flush=True)
                failed_builds.append(variant)
                continue
            for tool in args.tools.split(","):
                print(f"bench/fix: {variant} / {tool} ...", file=sys.stderr, flush=True)
                load = os.getloadavg()[0]
                row = runners[tool](image, Path(tmp))
                # The host's load when the run started: wall times on a shared 2-core
                # machine move with it.
                row["load_1min"] = round(load, 1)
                print(f"bench/fix: {json.dumps(row)}", file=sys.stderr, flush=True)
                rows.append(row)
                # Written after every row: a bench stopped part-way keeps what it measured.
                merged = _merge(earlier, rows)
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(table(_merge(earlier, rows)))
    if failed_builds:
        print(f"bench/fix: not measured (fixture build failed): {', '.join(failed_builds)}",
              file=sys.stderr)
        return 1
    return 0


def _merge(earlier: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of fixtures or tools not run this time are kept: one file holds every figure."""
    measured = {(r["fixture"], r["tool"]) for r in rows}
    kept = [r for r in earlier if (r["fixture"], r["tool"]) not in measured]
    return sorted(kept + rows, key=lambda r: (r["fixture"], r["tool"] != "p2v"))


if __name__ == "__main__":
    sys.exit(main())
