#!/usr/bin/env python3
"""bench/copy: p2v copy vs virt-p2v's data path vs ssh dd, side by side on the loop source.

Run as root from the repo: `bench/copy [--workloads W1,W2,W3] [--tools p2v,...]`.

Every tool reads the same read-only loop device through the same loopback sshd, behind a
TCP proxy that counts the bytes the server sends ("wire bytes": what a WAN link would
carry, SSH framing and encryption included). Writes bench/results/copy.json (a list of
{workload, tool, wall_s, wire_bytes, used_bytes, peak_rss_bytes, codec,
compressed_chunks, raw_chunks}: the codec p2v's manifest records per workload) and prints
the table for docs/dev/performance.md.

- p2v:           `p2v copy` (a subprocess; peak RSS is its own, from wait4).
- virt-p2v-path: `nbdkit -r file` on the source, an `ssh -L` port forward, and
                 `qemu-img convert -O qcow2 nbd://…` here (peak RSS: qemu-img).
- ssh-dd:        `ssh source dd if=DEV bs=4M > disk.raw`, then `qemu-img convert -O qcow2`
                 (peak RSS: the larger of ssh and qemu-img).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the link proxy is a test helper

from loop_sources import LoopSource, write_random_disk  # noqa: E402
from tcpproxy import LinkProxy  # noqa: E402

from p2v import runner  # noqa: E402
from p2v.demo.fixtures import build_fixture  # noqa: E402
from p2v.demo.live import SourceEndpoint, free_port, known_hosts_line  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
RESULTS = ROOT / "bench" / "results" / "copy.json"
# The baselines read at normal priority; p2v is measured the same way (its default, idle
# I/O class and nice 19, yields to every other process on a loaded host).
PRIORITY = "normal"


def proxied(ep: SourceEndpoint, proxy: LinkProxy, work: Path) -> SourceEndpoint:
    key_line = ep.known_hosts.read_text().split()
    known = work / f"known_hosts-{proxy.port}"
    known.write_text(known_hosts_line(ep.host, proxy.port, f"{key_line[1]} {key_line[2]}"))
    return replace(ep, port=proxy.port, known_hosts=known)


def timed(argv: list[str], **kwargs: object) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of argv, run under GNU time.

    Measured by /usr/bin/time, not by wait4 here: a child forked from this (large) process
    inherits its RSS high-water mark, which would count as the tool's. The figure covers
    the process and the children it waited for (p2v: its qemu-storage-daemon).
    """
    with tempfile.NamedTemporaryFile("r", prefix="p2v-bench-rss-") as rss_file:
        start = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *argv],
                                **kwargs)  # type: ignore[call-overload]
        code = proc.wait()
        wall = time.monotonic() - start
        text = Path(rss_file.name).read_text().strip().splitlines()
    rss = int(text[-1]) * 1024 if text and text[-1].isdigit() else -1
    return wall, rss, code


def run_p2v(ep: SourceEndpoint, device: str, out: Path) -> tuple[float, int]:
    argv = [sys.executable, "-m", "p2v.cli", "copy", f"ssh://{ep.user}@{ep.host}:{ep.port}",
            "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
            "--ssh-config", "/dev/null", "--disk", device, "--output-dir", str(out),
            "--name", "bench", "--json", "--source-priority", PRIORITY]
    wall, rss, code = timed(argv, stdout=subprocess.DEVNULL, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"p2v copy failed ({code})")
    return wall, rss


def p2v_codec(out: Path) -> dict[str, object]:
    """The wire codec p2v's manifest records, and the data chunks sent compressed and raw
    (a baseline tool: "none", nothing compressed)."""
    manifests = sorted(out.glob("*.manifest.json"))
    if not manifests:
        return {"codec": "none", "compressed_chunks": 0, "raw_chunks": None}
    manifest = json.loads(manifests[0].read_text())
    chunks = manifest.get("wire_chunks", {})
    return {"codec": manifest.get("wire_codec", "?"),
            "compressed_chunks": chunks.get("compressed"), "raw_chunks": chunks.get("raw")}


def run_virt_p2v_path(ep: SourceEndpoint, device: str, out: Path) -> tuple[float, int]:
    remote_port, local_port = free_port(), free_port()
    start = time.monotonic()
    argv = ep.ssh_argv()                       # ends with the host
    argv[-1:-1] = ["-L", f"{local_port}:127.0.0.1:{remote_port}"]
    argv += ["--", f"nbdkit -r -f --exit-with-parent -i 127.0.0.1 -p {remote_port} file "
                   f"file={device}"]
    forward = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = runner.run(["qemu-img", "info", f"nbd://127.0.0.1:{local_port}"],
                               check=False, timeout=10)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit("nbdkit behind ssh -L did not answer: " + probe.stderr)
            time.sleep(0.2)
        _, rss, code = timed(["qemu-img", "convert", "-O", "qcow2",
                              f"nbd://127.0.0.1:{local_port}", str(out / "virt-p2v.qcow2")])
        if code != 0:
            raise SystemExit("qemu-img convert from nbd failed")
        return time.monotonic() - start, rss
    finally:
        forward.terminate()
        forward.wait()


def run_ssh_dd(ep: SourceEndpoint, device: str, out: Path) -> tuple[float, int]:
    raw = out / "ssh-dd.raw"
    start = time.monotonic()
    with raw.open("wb") as sink:
        _, rss_ssh, code = timed(ep.ssh_argv(["dd", f"if={device}", "bs=4M",
                                              "status=none"]), stdout=sink)
    if code != 0:
        raise SystemExit("ssh dd failed")
    _, rss_img, code = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                              str(out / "ssh-dd.qcow2")])
    wall = time.monotonic() - start
    raw.unlink()
    return wall, max(rss_ssh, rss_img)


def ext_used(device: str) -> int:
    header = runner.run(["dumpe2fs", "-h", device]).stdout
    count = int(re.search(r"^Block count:\s+(\d+)", header, re.M)[1])  # type: ignore[index]
    free = int(re.search(r"^Free blocks:\s+(\d+)", header, re.M)[1])  # type: ignore[index]
    block = int(re.search(r"^Block size:\s+(\d+)", header, re.M)[1])  # type: ignore[index]
    return (count - free) * block


def make_w3(path: Path, work: Path) -> None:
    """2 GiB ext4 whose free space holds 1.25 GiB of stale random data (files written, then
    deleted), with 256 MiB of live files."""
    with path.open("wb") as f:
        f.truncate(2 * GiB)
    runner.run(["mkfs.ext4", "-q", "-F", path])
    blob = work / "blob"
    for i in range(5):
        blob.write_bytes(os.urandom(256 * MiB))
        runner.run(["debugfs", "-w", "-R", f"write {blob} stale{i}", path], timeout=600)
    for i in range(5):
        runner.run(["debugfs", "-w", "-R", f"rm stale{i}", path])
    blob.write_bytes(os.urandom(256 * MiB))
    runner.run(["debugfs", "-w", "-R", f"write {blob} live", path], timeout=600)
    blob.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2,W3")
    parser.add_argument("--tools", default="p2v,virt-p2v-path,ssh-dd")
    parser.add_argument("--link-mbit", type=float, default=1000.0,
                        help="model a link of this many Mbit/s between source and host "
                             "(default 1000, i.e. 1 GbE); 0: loopback, no limit")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    link_bps = args.link_mbit * 1e6 / 8 if args.link_mbit > 0 else None
    link = f"{args.link_mbit:g} Mbit/s" if link_bps else "loopback"
    tools = args.tools.split(",")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="p2v-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for workload in args.workloads.split(","):
            if workload == "W1":
                disk = work / "w1.raw"
                write_random_disk(disk, 2 * GiB, 512 * MiB)
                source = LoopSource.from_files([disk])
                used = 512 * MiB
            elif workload == "W2":
                source = LoopSource(build_fixture("bios"), partitions=True)
                used = -1
            elif workload == "W3":
                disk = work / "w3.raw"
                make_w3(disk, work)
                source = LoopSource.from_files([disk])
                used = -1
            else:
                raise SystemExit(f"unknown workload {workload}")
            with source as ep:
                device = ep.disks[0]
                if workload == "W2":
                    used = ext_used(f"{device}p1")     # the root ext4; swap is not data
                elif workload == "W3":
                    used = ext_used(device)
                # Every tool sees a warm page cache: the first reader would pay for all.
                runner.run(["dd", f"if={device}", "of=/dev/null", "bs=4M", "status=none"],
                           timeout=600)
                proxy = LinkProxy(ep.port, link_bps)
                try:
                    via = proxied(ep, proxy, work)
                    for tool in tools:
                        out = work / f"{workload}-{tool}"
                        out.mkdir()
                        proxy.take()
                        runner_fn = {"p2v": run_p2v, "virt-p2v-path": run_virt_p2v_path,
                                     "ssh-dd": run_ssh_dd}[tool]
                        wall, rss = runner_fn(via, device, out)
                        wire = proxy.take()
                        row = {"workload": workload, "tool": tool, "wall_s": round(wall, 2),
                               "wire_bytes": wire, "used_bytes": used,
                               "peak_rss_bytes": rss, "link": link, **p2v_codec(out)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        runner.run(["rm", "-rf", out])
                finally:
                    proxy.close()
            if workload in ("W1", "W3"):
                disk.unlink()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| workload | tool | wall s | wire MiB | used MiB | wire/used | peak RSS MiB "
          "| codec (chunks compressed) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        wire, used = int(r["wire_bytes"]), int(r["used_bytes"])  # type: ignore[call-overload]
        print(f"| {r['workload']} | {r['tool']} | {r['wall_s']} | {wire / MiB:.0f} | "
              f"{used / MiB:.0f} | {wire / used:.2f} | "
              f"{int(r['peak_rss_bytes']) / MiB:.0f} | "  # type: ignore[call-overload]
              f"{r['codec']} ({r['compressed_chunks']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
