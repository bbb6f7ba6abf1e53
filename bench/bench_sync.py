#!/usr/bin/env python3
"""bench/sync: `p2v sync` (and its frozen final pass) vs a full `p2v copy` after 1 % changed.

Run as root from the repo: `bench/sync [--rate BYTES_PER_S]`.

The source is a 2 GiB ext4 on a writable loop device, mounted read-write here, holding
1 GiB of files (1024 files of 1 MiB, random: compression cannot flatter anyone), served by
a loopback sshd behind a TCP proxy that counts what the server sends (SSH framing and
encryption included). Every p2v run has `--bandwidth-limit` 50 MB/s (a WAN or busy LAN:
on bare loopback the source's own read would hide what a sync saves).

1. `copy`: the full first copy, timed (the baseline).
2. 1 % of the data is rewritten in place (11 files, 10.7 MiB) and a log file gets 256 KiB.
3. `sync`: a live sync pass, timed.
4. The same change again, then `sync-freeze`: `p2v sync --freeze`, timed, with its freeze
   window (fsfreeze to thaw, as p2v measured it).
5. `sync-freeze-tracked`: `p2v sync --passes 2 --freeze`, the same change made by the
   `--before-final` hook (after the live pass, before the freeze): the frozen pass reads
   only the chunks the source wrote since the live pass (write tracking), so its window
   follows the change, not the 1 GiB of data.

`changed_bytes` is what p2v found different (whole 4 MiB chunks); `written_bytes` what the
workload wrote. Results: bench/results/sync.json; the table for docs/dev/performance.md is
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the link proxy is a test helper

from loop_sources import SshServer, attach_loop, detach_loop  # noqa: E402
from tcpproxy import LinkProxy  # noqa: E402

from p2v import runner  # noqa: E402
from p2v.demo.live import SourceEndpoint, known_hosts_line  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
RESULTS = ROOT / "bench" / "results" / "sync.json"
FILES = 1024                     # of 1 MiB: 1 GiB of data
CHANGED_FILES = 11               # ~1 % of the data


def proxied(ep: SourceEndpoint, proxy: LinkProxy, work: Path) -> SourceEndpoint:
    key_line = ep.known_hosts.read_text().split()
    known = work / f"known_hosts-{proxy.port}"
    known.write_text(known_hosts_line(ep.host, proxy.port, f"{key_line[1]} {key_line[2]}"))
    return replace(ep, port=proxy.port, known_hosts=known)


def p2v(ep: SourceEndpoint, *args: str) -> tuple[float, list[dict[str, object]]]:
    argv = [sys.executable, "-m", "p2v.cli", *args[:1], f"ssh://{ep.user}@{ep.host}:{ep.port}",
            "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
            "--ssh-config", "/dev/null", "--json", "--source-priority", "normal", *args[1:]]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"p2v {args[0]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return wall, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def change(mnt: Path, rng: random.Random) -> int:
    """Rewrite CHANGED_FILES files in place and append to a log; returns bytes written."""
    written = 0
    for n in rng.sample(range(FILES), CHANGED_FILES):
        with (mnt / "data" / f"f{n:04d}").open("r+b") as f:
            f.write(os.urandom(MiB))
        written += MiB
    with (mnt / "app.log").open("ab") as log:
        log.write(os.urandom(256 << 10))
    written += 256 << 10
    os.sync()
    return written


def change_hook(mnt: Path, rng: random.Random) -> tuple[str, int]:
    """The change of `change` as a shell command for --before-final; bytes it writes."""
    files = [mnt / "data" / f"f{n:04d}" for n in rng.sample(range(FILES), CHANGED_FILES)]
    command = "; ".join(
        [f"dd if=/dev/urandom of={shlex.quote(str(f))} bs=1M count=1 conv=notrunc "
         "status=none" for f in files]
        + [f"head -c {256 << 10} /dev/urandom >> {shlex.quote(str(mnt / 'app.log'))}"])
    return command, CHANGED_FILES * MiB + (256 << 10)


def tracked_row(ep: SourceEndpoint, proxy: LinkProxy, mnt: Path, rng: random.Random,
                common: list[str]) -> dict[str, object]:
    """Case 5: a live pass, the change by the hook, the tracked frozen pass."""
    hook, written = change_hook(mnt, rng)
    proxy.take()
    wall, events = p2v(ep, "sync", *common, "--passes", "2", "--freeze",
                       "--before-final", hook)
    result = events[-1]                         # the frozen pass's sync-result
    freeze = result.get("freeze")
    return {"case": "sync-freeze-tracked", "wall_s": round(wall, 2),
            "wire_bytes": proxy.take(), "changed_bytes": result["changed_bytes"],
            "written_bytes": written, "p2v_wire_bytes": result["wire_bytes"],
            "tracked": result.get("tracked"),
            "freeze_s": (round(float(freeze["freeze_s"]), 2)
                         if isinstance(freeze, dict) else None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="50000000", help="--bandwidth-limit of every run "
                        "(default: 50000000, 50 MB/s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/sync needs root (loop devices, mount, fsfreeze)")
    rng = random.Random(9)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="p2v-bench-sync-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        raw = work / "disk.raw"
        with raw.open("wb") as f:
            f.truncate(2 * GiB)
        runner.run(["mkfs.ext4", "-q", "-b", "4096", raw])
        device = attach_loop(raw, writable=True)
        mnt = work / "mnt"
        mnt.mkdir()
        mounted = False
        try:
            runner.run(["mount", device, mnt])
            mounted = True
            (mnt / "data").mkdir()
            for n in range(FILES):
                (mnt / "data" / f"f{n:04d}").write_bytes(os.urandom(MiB))
            os.sync()
            out = work / "out"
            with SshServer([device]) as direct:
                proxy = LinkProxy(direct.port)
                try:
                    ep = proxied(direct, proxy, work)
                    common = ["--output-dir", str(out), "--name", "bench",
                              "--bandwidth-limit", args.rate]
                    wall, events = p2v(ep, "copy", "--disk", device, *common)
                    rows.append({"case": "copy", "wall_s": round(wall, 2),
                                 "wire_bytes": proxy.take(), "changed_bytes": None,
                                 "written_bytes": None, "freeze_s": None})
                    for case, extra in (("sync", []), ("sync-freeze", ["--freeze"])):
                        written = change(mnt, rng)
                        proxy.take()
                        wall, events = p2v(ep, "sync", *common, *extra)
                        result = events[-1]
                        freeze = result.get("freeze")
                        rows.append({
                            "case": case, "wall_s": round(wall, 2),
                            "wire_bytes": proxy.take(),
                            "changed_bytes": result["changed_bytes"],
                            "written_bytes": written,
                            "p2v_wire_bytes": result["wire_bytes"],
                            "freeze_s": (round(float(freeze["freeze_s"]), 2)
                                         if isinstance(freeze, dict) else None)})
                        print(json.dumps(rows[-1]), flush=True)
                    rows.append(tracked_row(ep, proxy, mnt, rng, common))
                    print(json.dumps(rows[-1]), flush=True)
                finally:
                    proxy.close()
        finally:
            if mounted:
                runner.run(["fsfreeze", "-u", mnt], check=False)
                runner.run(["umount", mnt], check=False)
            detach_loop(device)
    copy_wall = float(rows[0]["wall_s"])  # type: ignore[arg-type]
    for row in rows:
        row["vs_copy"] = round(float(row["wall_s"]) / copy_wall, 3)  # type: ignore[arg-type]
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    print("| case | wall s | × full copy | wire MiB | changed MiB (chunks) | written MiB | "
          "wire/changed | freeze s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        changed = row["changed_bytes"]
        wire = int(row["wire_bytes"])  # type: ignore[call-overload]
        ratio = f"{wire / changed:.2f}" if isinstance(changed, int) and changed else "-"
        print(f"| {row['case']} | {row['wall_s']} | {row['vs_copy']} | {wire / MiB:.1f} | "
              + (f"{changed / MiB:.1f}" if isinstance(changed, int) else "-") + " | "
              + (f"{int(row['written_bytes']) / MiB:.2f}"  # type: ignore[call-overload]
                 if row.get("written_bytes") else "-")
              + f" | {ratio} | {row['freeze_s'] if row['freeze_s'] is not None else '-'} |")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
