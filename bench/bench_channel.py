#!/usr/bin/env python3
"""bench/channel: the candidates for the bulk data channel (issue 16 item 1), side by side.

Run as root from the repo: `bench/channel [--gib 2] [--random-gib 1] [--links 0,1000]
[--channels paramiko,openssh,paramiko-procs-2] [--modes stream,copy] [--repeat 2]`.

One loop source (a raw file of GIB, its first RANDOM_GIB random, the rest zeros) behind a
loopback sshd, and in front of it, per link, the counting TCP proxy of tests/tcpproxy.py
(0: plain loopback with nothing but the proxy's own copy; 1000: a modelled 1 GbE link).
Each candidate, each mode, each link, in turns (A B C A B C ...: a busy host's load drifts):

- stream: the channel alone. `cat DEVICE` through `SshSource.stream()` read into a
  discarded buffer, in this process: what the receiver gets before hashing, zlib and NBD
  writes compete with it for the GIL. `paramiko-procs-N`: N worker processes, each with its
  own paramiko session, each streaming 1/N of the device with dd (the "several paramiko
  channels read by worker processes" candidate at its best: nothing merged afterwards).
- copy: the whole `p2v copy --data-channel C` (a child process) into a fresh qcow2, the
  receiver hashing, inflating and writing as it does for real.

Writes bench/results/channel.json (rows {mode, link, channel, run, wall_s, mib_s,
wire_bytes}) and prints a table with each candidate's median and its ratio to paramiko, for
docs/dev/performance.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the loop source and link proxy are test helpers

from loop_sources import LoopSource, write_random_disk  # noqa: E402
from tcpproxy import LinkProxy  # noqa: E402

from p2v import runner  # noqa: E402
from p2v.demo.live import SourceEndpoint, known_hosts_line  # noqa: E402
from p2v.source.ssh import SshOptions, SshSource  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
RESULTS = ROOT / "bench" / "results" / "channel.json"
BLOCK = 4 * MiB


def proxied(ep: SourceEndpoint, proxy: LinkProxy, work: Path) -> SourceEndpoint:
    """The endpoint as reached through the proxy (its own known_hosts line)."""
    key = ep.known_hosts.read_text().split()
    known = work / f"known_hosts-{proxy.port}"
    known.write_text(known_hosts_line(ep.host, proxy.port, f"{key[1]} {key[2]}"))
    return replace(ep, port=proxy.port, known_hosts=known)


def session(ep: SourceEndpoint, channel: str) -> SshSource:
    return SshSource.open(f"ssh://{ep.user}@{ep.host}:{ep.port}",
                          SshOptions(identity=ep.key, known_hosts=ep.known_hosts,
                                     use_agent=False, ssh_config=Path("/dev/null"),
                                     data_channel=channel))


def drain(source: SshSource, argv: list[str]) -> int:
    """Read the command's stdout to its end into one reused buffer; the bytes read."""
    got = 0
    buffer = bytearray(BLOCK)
    with source.stream(argv, timeout=600) as out:
        view = memoryview(buffer)
        while n := out.readinto(view):   # type: ignore[attr-defined]
            got += n
    return got


def stream_one(ep: SourceEndpoint, channel: str, size: int) -> int:
    with session(ep, channel) as source:
        if channel != "paramiko" and source.data_channel() == "paramiko":
            raise SystemExit(f"{channel}: fell back to paramiko (see the log)")
        got = drain(source, ["cat", ep.disks[0]])
    if got != size:
        raise SystemExit(f"{channel}: read {got} bytes of {size}")
    return got


def _slice(args: tuple[SourceEndpoint, int, int]) -> int:
    ep, index, blocks = args
    with session(ep, "paramiko") as source:
        return drain(source, ["dd", f"if={ep.disks[0]}", f"bs={BLOCK}", f"skip={index * blocks}",
                              f"count={blocks}", "status=none"])


def stream_procs(ep: SourceEndpoint, procs: int, size: int) -> int:
    blocks = -(-size // BLOCK // procs)
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        got = sum(pool.map(_slice, [(ep, i, blocks) for i in range(procs)]))
    if got != size:
        raise SystemExit(f"paramiko-procs-{procs}: read {got} bytes of {size}")
    return got


def copy_one(ep: SourceEndpoint, channel: str, out: Path) -> int:
    argv = [sys.executable, "-m", "p2v.cli", "copy", f"ssh://{ep.user}@{ep.host}:{ep.port}",
            "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
            "--ssh-config", "/dev/null", "--disk", ep.disks[0], "--output-dir", str(out),
            "--name", "bench", "--source-priority", "normal", "--data-channel",
            "paramiko" if channel.startswith("paramiko-procs") else channel, "-v"]
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"p2v copy --data-channel {channel} failed: {proc.stderr[-2000:]}")
    if channel == "openssh" and "goes through an OpenSSH child" not in proc.stderr:
        raise SystemExit("p2v copy did not use the OpenSSH child: " + proc.stderr[-2000:])
    runner.run(["rm", "-rf", out])
    return 0


def measure(mode: str, channel: str, ep: SourceEndpoint, size: int, work: Path
            ) -> Callable[[], int]:
    if mode == "copy":
        return lambda: copy_one(ep, channel, work / f"out-{channel}")
    if channel.startswith("paramiko-procs-"):
        procs = int(channel.rsplit("-", 1)[1])
        return lambda: stream_procs(ep, procs, size)
    return lambda: stream_one(ep, channel, size)


def run_link(args: argparse.Namespace, ep: SourceEndpoint, size: int, mbit: float,
             work: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    proxy = LinkProxy(ep.port, mbit * 1e6 / 8 if mbit > 0 else None)
    link = f"{mbit:g} Mbit/s" if mbit > 0 else "loopback"
    try:
        via = proxied(ep, proxy, work)
        for mode in args.modes.split(","):
            for run in range(args.repeat):
                for channel in args.channels.split(","):
                    if mode == "copy" and channel.startswith("paramiko-procs"):
                        continue        # not a p2v channel (yet): stream mode only
                    proxy.take()
                    start = time.monotonic()
                    measure(mode, channel, via, size, work)()
                    wall = time.monotonic() - start
                    row = {"mode": mode, "link": link, "channel": channel, "run": run,
                           "wall_s": round(wall, 3), "mib_s": round(size / MiB / wall, 1),
                           "wire_bytes": proxy.take()}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        proxy.close()
    return rows


def table(rows: list[dict[str, object]]) -> None:
    print("\n| mode | link | channel | runs | median wall s | median MiB/s | × paramiko speed |")
    print("|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((str(r["mode"]), str(r["link"]), str(r["channel"])),
                          []).append(float(r["wall_s"]))  # type: ignore[arg-type]
    for (mode, link, channel), walls in groups.items():
        median = statistics.median(walls)
        base = statistics.median(groups.get((mode, link, "paramiko"), walls))
        speed = [float(r["mib_s"]) for r in rows  # type: ignore[arg-type]
                 if (r["mode"], r["link"], r["channel"]) == (mode, link, channel)]
        print(f"| {mode} | {link} | {channel} | {len(walls)} | {median:.2f} | "
              f"{statistics.median(speed):.0f} | {base / median:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="source disk size (GiB)")
    parser.add_argument("--random-gib", type=float, default=1.0,
                        help="how much of it is random (the rest zeros)")
    parser.add_argument("--links", default="0,1000",
                        help="link models in Mbit/s, 0 for loopback (default 0,1000)")
    parser.add_argument("--channels", default="paramiko,openssh,paramiko-procs-2")
    parser.add_argument("--modes", default="stream,copy")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/channel: run as root (loop devices)")
    size = int(args.gib * GiB)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="p2v-bench-chan-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        disk = work / "disk.raw"
        write_random_disk(disk, size, int(args.random_gib * GiB))
        with LoopSource.from_files([disk]) as ep:
            # Every candidate sees a warm page cache: the first reader would pay for all.
            runner.run(["dd", f"if={ep.disks[0]}", "of=/dev/null", "bs=4M", "status=none"],
                       timeout=600)
            for mbit in (float(x) for x in args.links.split(",")):
                rows += run_link(args, ep, size, mbit, work)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n")
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
