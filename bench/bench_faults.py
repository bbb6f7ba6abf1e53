#!/usr/bin/env python3
"""bench/faults: the fault campaign: copies cut or killed, converts killed, each rerun to the end.

Run as root from the repo: `bench/faults [--copies N] [--converts M] [--seed S]`.

Copy campaign (default 20 runs). The source is two writable loop devices behind a loopback
sshd: a copy of the bios fixture's disk (2 GiB, MBR, ext4 + swap: free-space skipping and
compression at work) and a 512 MiB disk of 4 MiB blocks, about half of them random, the
rest zeros with now and then 64 KiB of random data in them. All p2v traffic goes through
one link proxy (tests/tcpproxy.py) that counts what the server sends. First an
uninterrupted reference copy; then, per run, `p2v copy` of both disks into a fresh
directory, either cut by the proxy once a random number of bytes has crossed it, or
SIGKILLed at a random time after its first disk-start event; then the same command
again until it exits 0. Each image is compared with `qemu-img compare` to the reference
image and to the source device. `resent_bytes` = wire bytes of the interrupted run and its
reruns minus the reference's. The source "changed" if its sha256 or the write/discard counters of
/sys/block/loopN/stat moved.

Convert campaign (default 10 runs; each boots a guest under TCG, several minutes). The bios
fixture on a read-only loop device behind the sshd (through the proxy), a real libvirtd
(used if one answers, else started here) and an isolated network. Per run `p2v convert`
is SIGKILLed during a stage picked at random (at a random delay after its stage-start
event; if the stage ends first, at its stage-done event), then rerun to completion. A run
is ok when the rerun exits 0 with a booted, registered guest, exactly one domain of that
name is defined, and nothing is left: no process descended from the killed job (this
script is their subreaper, so orphans come back to it), no session left on the source's
sshd, no boot-check overlay in /var/tmp, no file in the job's private TMPDIR.

Results (one object per run, written after every run so an interrupted campaign still
leaves figures): bench/results/faults.json; a campaign replaces only the rows of its own
kind. The summary table for docs/dev/performance.md is printed at the end (`--summary` prints
it from the results file alone).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the link proxy is a test helper

from loop_sources import LoopSource, copy_fixture  # noqa: E402
from tcpproxy import LinkProxy  # noqa: E402

from p2v import runner  # noqa: E402
from p2v.demo.fixtures import build_fixture  # noqa: E402
from p2v.demo.libvirtd import URI, Libvirtd, isolated_network  # noqa: E402
from p2v.demo.live import SourceEndpoint  # noqa: E402
from p2v.job import STAGES  # noqa: E402
from p2v.transfer.copy import DEFAULT_CHUNK, DEFAULT_PARALLEL  # noqa: E402
from p2v.transfer.pump import FLUSH_BYTES  # noqa: E402

MiB = 1 << 20
RESULTS = ROOT / "bench" / "results" / "faults.json"
# paramiko's default channel window: what the server may send ahead of what p2v has read.
SSH_WINDOW = 2 * MiB
# After a cut p2v commits what arrived whole, so each disk in flight loses at most the chunk
# it was receiving and the window behind it. A SIGKILL commits nothing: each disk also loses
# the chunks read since its last flush (a flush every FLUSH_BYTES of data, p2v/transfer/pump.py).
CUT_BOUND = DEFAULT_PARALLEL * (DEFAULT_CHUNK + SSH_WINDOW)
KILL_BOUND = DEFAULT_PARALLEL * (FLUSH_BYTES + DEFAULT_CHUNK + SSH_WINDOW)
# A guess at how long each convert stage lasts here (TCG, shared cores): the kill lands at a
# uniform delay in [0, guess] after the stage starts, or at its end if it ends first.
STAGE_GUESS_S = {"inspect": 3, "preflight": 3, "copy": 25, "fix": 150, "verify": 120,
                 "register": 3}
JOB_TIMEOUT = 3600
PR_SET_CHILD_SUBREAPER = 36


# ------------------------------------------------------------------------- processes
def proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, command line) of every process, from /proc."""
    table: dict[int, tuple[int, str, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        table[int(stat.parent.name)] = (int(rest[1]), rest[0], cmd or text[:64])
    return table


def descendants(pid: int, table: dict[int, tuple[int, str, str]]) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class Household:
    """The processes this script keeps (sshd, libvirtd) and the orphans it inherits."""

    keep: set[int] = field(default_factory=set)

    def strays(self) -> dict[int, str]:
        """Live descendants of this script outside the kept trees (zombies reaped)."""
        table = proc_table()
        kept = set(self.keep)
        for pid in self.keep:
            kept |= descendants(pid, table)
        found: dict[int, str] = {}
        for pid in descendants(os.getpid(), table) - kept:
            ppid, state, cmd = table[pid]
            if state == "Z":
                if ppid == os.getpid():
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                continue
            found[pid] = cmd[:160]
        return found

    def settle(self, grace: float = 10.0) -> dict[int, str]:
        """The strays still alive after up to `grace` s (a child that is exiting gets it)."""
        deadline = time.monotonic() + grace
        while (found := self.strays()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return found

    def kill(self, pids: dict[int, str]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.settle(5.0)


def source_sessions(sshd_pid: int, grace: float = 10.0) -> list[str]:
    """What still runs under the source's sshd (a reader left behind) after up to `grace` s."""
    deadline = time.monotonic() + grace
    while True:
        table = proc_table()
        left = [table[p][2][:160] for p in descendants(sshd_pid, table)
                if table[p][1] != "Z"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# ------------------------------------------------------------------------- p2v runs
@dataclass
class Run:
    code: int
    events: list[dict[str, Any]]
    stderr: str
    wall_s: float
    wire_bytes: int
    fault: str | None = None          # what was done, when it was done
    first_disk_s: float | None = None  # when the first disk-start event came


class CampaignProxy(LinkProxy):
    """The link proxy, re-armed between runs so every run uses the same port (and so the
    very same command): arm(n) cuts once n more bytes have gone to p2v."""

    def arm(self, cut_after: int | None) -> None:
        with self._lock:
            self.cut = False
            self.cut_after = None if cut_after is None else self._total + cut_after


def run_p2v(argv: list[str], proxy: CampaignProxy, *, env: dict[str, str] | None = None,
            cut_after: int | None = None, kill_after_s: float | None = None,
            kill_stage: tuple[str, float] | None = None) -> Run:
    """Run p2v with --json, reading its events; apply at most one fault.

    cut_after: the proxy drops the link after that many bytes; kill_after_s: SIGKILL that
    long after the first disk-start event (the copy is under way: a kill while Python
    starts tests nothing); kill_stage (stage, delay): SIGKILL `delay` s after that stage's
    stage-start event, or at its stage-done event if that comes first.
    """
    proxy.arm(cut_after)
    proxy.take()
    lines: queue.Queue[str | None] = queue.Queue()
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                env=env)
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        events: list[dict[str, Any]] = []
        deadline: float | None = None
        fault: str | None = None
        stage_started = 0.0
        first_disk: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                line = ""
            now = time.monotonic()
            if deadline is not None and now >= deadline and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                fault = (f"SIGKILL {now - stage_started:.1f} s into stage {kill_stage[0]}"
                         if kill_stage else f"SIGKILL at {now - start:.1f} s "
                         f"({now - (first_disk or start):.1f} s after the copy began)")
                deadline = None
            if line is None:
                break
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            events.append(event)
            if event.get("event") == "disk-start" and first_disk is None:
                first_disk = now
                if kill_after_s is not None:
                    deadline = now + kill_after_s
            if kill_stage and fault is None and event.get("stage") == kill_stage[0]:
                if event.get("event") == "stage-start":
                    stage_started = now
                    deadline = now + kill_stage[1]
                elif event.get("event") == "stage-done" and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    fault = (f"SIGKILL at the end of stage {kill_stage[0]} "
                             f"({now - stage_started:.1f} s)")
                    deadline = None
            if now - start > JOB_TIMEOUT:
                os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
        wall = time.monotonic() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if cut_after is not None:
        fault = f"cut at byte {cut_after}" + ("" if proxy.cut else " (never reached)")
    elif kill_after_s is not None and fault is None:
        fault = (f"SIGKILL {kill_after_s:.1f} s after the copy began (p2v had already "
                 "exited)")
    elif kill_stage and fault is None:
        fault = f"SIGKILL during stage {kill_stage[0]} (stage never reached)"
    return Run(code, events, stderr, wall, proxy.take(), fault,
               None if first_disk is None else first_disk - start)


def error_line(run: Run) -> str:
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("p2v: error:")]
    return lines[-1][:300] if lines else run.stderr.strip()[-300:]


def git_commit() -> str:
    """HEAD, and the last commit that changed p2v/ (what the figures measure)."""
    head = runner.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"]).stdout.strip()
    code = runner.run(["git", "-C", ROOT, "log", "-1", "--format=%h", "--abbrev=12", "--",
                       "p2v"]).stdout.strip()
    dirty = runner.run(["git", "-C", ROOT, "status", "--porcelain", "--", "p2v"]).stdout
    return f"{head} (p2v/ as of {code}{', modified' if dirty.strip() else ''})"


# ------------------------------------------------------------------------- results
def save(rows: list[dict[str, Any]], kind: str, path: Path) -> None:
    """Replace the rows of `kind` in the results file (others stay), under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)     # the directory: no lock file to leave
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else []
        merged = [r for r in old if r.get("kind") != kind] + rows
        merged.sort(key=lambda r: (r.get("kind") != "copy", r.get("run", 0)))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(merged, indent=1) + "\n")
        tmp.replace(path)
    finally:
        os.close(lock)


# ------------------------------------------------------------------------- copy campaign
def make_mixed_disk(path: Path, size: int, rng: random.Random) -> None:
    """4 MiB blocks: about half random, the rest zeros, some with 64 KiB of random data."""
    block = 4 * MiB
    with path.open("wb") as out:
        out.truncate(size)
        for offset in range(0, size, block):
            roll = rng.random()
            if roll < 0.5:
                out.seek(offset)
                out.write(os.urandom(block))
            elif roll < 0.6:
                out.seek(offset + rng.randrange(0, block - (64 << 10), 4096))
                out.write(os.urandom(64 << 10))


def device_state(device: str) -> dict[str, Any]:
    """sha256 of the device and its write and discard counters."""
    digest = hashlib.sha256()
    with open(device, "rb", buffering=0) as dev:
        while block := dev.read(8 * MiB):
            digest.update(block)
    fields = Path("/sys/block", Path(device).name, "stat").read_text().split()
    # Fields 5 and 7: write I/Os and sectors; 12 and 14 (newer kernels): discard I/Os, sectors.
    counters = [int(fields[i]) for i in (4, 6, 11, 13) if i < len(fields)]
    return {"sha256": digest.hexdigest(), "write_counters": counters}


def compare(a: Path | str, fmt_a: str, b: Path, fmt_b: str) -> bool:
    return runner.run(["qemu-img", "compare", "-q", "-f", fmt_a, "-F", fmt_b, a, b],
                      check=False, timeout=600).returncode == 0


def copy_argv(ep: SourceEndpoint, port: int, known: Path, out: Path) -> list[str]:
    disks = [a for d in ep.disks for a in ("--disk", d)]
    return [sys.executable, "-m", "p2v.cli", "copy", f"ssh://{ep.user}@{ep.host}:{port}",
            "--identity", str(ep.key), "--known-hosts", str(known), "--ssh-config",
            "/dev/null", *disks, "--output-dir", str(out), "--name", "faults", "--json",
            "--source-priority", "normal"]


def proxied_known_hosts(ep: SourceEndpoint, port: int, work: Path) -> Path:
    fields = ep.known_hosts.read_text().split()
    known = work / f"known_hosts-{port}"
    known.write_text(f"[{ep.host}]:{port} {fields[1]} {fields[2]}\n")
    return known


def images(out: Path, ep: SourceEndpoint) -> list[Path]:
    return [out / f"faults-{Path(d).name}.qcow2" for d in ep.disks]


def copy_campaign(args: argparse.Namespace, work: Path, house: Household, commit: str
                  ) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    print(f"copy campaign: {args.copies} runs, seed {args.seed}", flush=True)
    fixture = copy_fixture(build_fixture("bios"), work / "bios")
    mixed = work / "mixed.raw"
    make_mixed_disk(mixed, 512 * MiB, random.Random(args.seed))
    rows: list[dict[str, Any]] = []
    source = LoopSource.from_files([fixture.disks[0], mixed], writable=True)
    with source as ep, ExitStack() as st:
        assert source.sshd_pid is not None
        sshd = source.sshd_pid
        house.keep.add(sshd)
        proxy = CampaignProxy(ep.port)
        st.callback(proxy.close)
        known = proxied_known_hosts(ep, proxy.port, work)
        before = {d: device_state(d) for d in ep.disks}
        ref_out = work / "reference"
        ref = run_p2v(copy_argv(ep, proxy.port, known, ref_out), proxy)
        if ref.code != 0:
            raise SystemExit(f"the reference copy failed ({ref.code}): {error_line(ref)}")
        ref_images = images(ref_out, ep)
        ref_ok = all(compare(d, "raw", i, "qcow2") for d, i in zip(ep.disks, ref_images,
                                                                   strict=True))
        idle = run_p2v(copy_argv(ep, proxy.port, known, ref_out), proxy)   # all complete
        print(f"reference: {ref.wire_bytes} wire bytes in {ref.wall_s:.1f} s, identical to "
              f"the source: {ref_ok}; a session that copies nothing: {idle.wire_bytes} bytes",
              flush=True)
        for n in range(args.copies):
            out = work / f"copy-{n:02d}"
            argv = copy_argv(ep, proxy.port, known, out)
            if rng.random() < 0.5:
                first = run_p2v(argv, proxy, cut_after=rng.randrange(1 << 16, ref.wire_bytes))
                bound = CUT_BOUND
            else:
                copying = ref.wall_s - (ref.first_disk_s or 0.0)
                # 0.8: on a host whose load falls, a later copy is faster than the reference.
                first = run_p2v(argv, proxy, kill_after_s=rng.uniform(0.0, 0.8 * copying))
                bound = KILL_BOUND
            reruns: list[Run] = []
            while (not reruns or reruns[-1].code != 0) and len(reruns) < 3 and (
                    first.code != 0 or reruns):
                reruns.append(run_p2v(argv, proxy))
            strays = house.settle()
            readers = source_sessions(sshd)
            house.kill(strays)
            after = {d: device_state(d) for d in ep.disks}
            got = images(out, ep)
            done = all(i.exists() for i in got)
            same_ref = done and all(compare(r, "qcow2", i, "qcow2")
                                    for r, i in zip(ref_images, got, strict=True))
            same_src = done and all(compare(d, "raw", i, "qcow2")
                                    for d, i in zip(ep.disks, got, strict=True))
            wire = first.wire_bytes + sum(r.wire_bytes for r in reruns)
            resent = wire - ref.wire_bytes
            resumed = sum(int(e.get("resumed_chunks", 0)) for r in reruns for e in r.events
                          if e.get("event") == "disk-start")
            row = {
                "kind": "copy", "run": n, "seed": args.seed, "commit": commit,
                "fault": first.fault, "interrupted": first.code != 0,
                "first_exit_code": first.code,
                "first_error": error_line(first) if first.code > 0 else None,
                "reruns": len(reruns),
                "rerun_exit_code": reruns[-1].code if reruns else None,
                "rerun_error": error_line(reruns[-1]) if reruns and reruns[-1].code else None,
                "identical": bool(same_ref and same_src), "identical_to_reference": same_ref,
                "identical_to_source": same_src,
                "source_changed": after != before, "resent_bytes": resent,
                "in_flight_bound_bytes": bound, "session_overhead_bytes": idle.wire_bytes,
                "within_bound": resent <= bound + len(reruns) * idle.wire_bytes,
                "resumed_chunks": resumed, "wire_bytes": wire,
                "reference_wire_bytes": ref.wire_bytes,
                "wall_s_interrupted": round(first.wall_s, 2),
                "wall_s_reruns": round(sum(r.wall_s for r in reruns), 2),
                "reference_wall_s": round(ref.wall_s, 2),
                "leftover_processes": sorted(strays.values()),
                "source_sessions_left": readers,
            }
            if after != before:
                before = after          # count each change once
            rows.append(row)
            save(rows, "copy", args.results)
            print(json.dumps({k: row[k] for k in ("run", "fault", "identical",
                                                  "source_changed", "resent_bytes",
                                                  "within_bound", "reruns")}), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------- convert campaign
def qcow2_backing(path: Path) -> str:
    """The backing file name in a qcow2 header ('' when none or unreadable)."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
            if head[:4] != b"QFI\xfb":
                return ""
            offset, size = struct.unpack(">QI", head[8:20])
            f.seek(offset)
            return f.read(size).decode(errors="replace")
    except OSError:
        return ""


def overlays_of(out: Path) -> list[str]:
    """Boot-check/probe dirs in /var/tmp whose overlays stand on images under `out`."""
    found = []
    for d in Path("/var/tmp").glob("p2v-*"):
        if not d.is_dir() or d.name.startswith("p2v-bench-"):
            continue
        for q in d.glob("*.qcow2"):
            if qcow2_backing(q).startswith(str(out)):
                found.append(str(d))
                break
    return found


def domains(prefix: str) -> list[str]:
    names = runner.run(["virsh", "-c", URI, "list", "--all", "--name"]).stdout.split()
    return [n for n in names if n.startswith(prefix)]


def convert_argv(ep: SourceEndpoint, port: int, known: Path, out: Path, name: str,
                 network: str) -> list[str]:
    return [sys.executable, "-m", "p2v.cli", "convert", f"ssh://{ep.user}@{ep.host}:{port}",
            "--name", name, "--identity", str(ep.key), "--known-hosts", str(known),
            "--ssh-config", "/dev/null", "--disk", ep.disks[0], "--output-dir", str(out),
            "--network", network, "--memory", "1024", "--verify-timeout", "900", "--json"]


def convert_campaign(args: argparse.Namespace, work: Path, house: Household, commit: str
                     ) -> list[dict[str, Any]]:
    rng = random.Random(args.seed + 1)
    order = rng.sample(STAGES, len(STAGES))
    print(f"convert campaign: {args.converts} runs, seed {args.seed}, stages in the order "
          f"{order}", flush=True)
    image = build_fixture("bios")
    out = work / "jobs"
    out.mkdir()
    for d in (work, out):
        d.chmod(0o755)            # libvirt's qemu reaches the images
    rows: list[dict[str, Any]] = []
    tag = os.getpid() % 10000
    prefix = f"p2vfault{tag}-"
    daemon = Libvirtd(URI)
    daemon.start()
    try:
        house.keep |= {p.pid for p in daemon.procs}
        source = LoopSource(image)
        with source as ep, isolated_network(
                f"p2vfaults-{tag}", f"virbr-p2vf{tag}") as network, ExitStack() as st:
            assert source.sshd_pid is not None
            sshd = source.sshd_pid
            house.keep.add(sshd)
            proxy = CampaignProxy(ep.port)
            st.callback(proxy.close)
            known = proxied_known_hosts(ep, proxy.port, work)
            ref = run_p2v(copy_argv(ep, proxy.port, known, work / "cv-reference"), proxy)
            shutil.rmtree(work / "cv-reference", ignore_errors=True)
            for n in range(args.converts):
                rows.append(one_convert(n, order[n % len(order)], rng, ep, proxy, known, out,
                                        prefix, network, house, sshd, ref, args, commit))
                save(rows, "convert", args.results)
                print(json.dumps({k: rows[-1][k] for k in ("run", "fault", "ok", "problems",
                                                           "resent_bytes")}), flush=True)
    finally:
        daemon.stop()
    return rows


def one_convert(n: int, stage: str, rng: random.Random, ep: SourceEndpoint,
                proxy: CampaignProxy, known: Path, out: Path, prefix: str, network: str,
                house: Household, sshd: int, ref: Run, args: argparse.Namespace, commit: str
                ) -> dict[str, Any]:
    name = f"{prefix}{n:02d}"
    tmp = out.parent / f"tmp-{name}"
    tmp.mkdir()
    # A private TMPDIR shows what the job leaves there; libguestfs keeps its appliance cache
    # where it always is (it would otherwise rebuild it in every new TMPDIR).
    env = {**os.environ, "TMPDIR": str(tmp),
           "LIBGUESTFS_CACHEDIR": os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")}
    argv = convert_argv(ep, proxy.port, known, out, name, network)
    delay = rng.uniform(0, STAGE_GUESS_S[stage])
    killed = run_p2v(argv, proxy, env=env, kill_stage=(stage, delay))
    after_kill = house.strays()
    rerun = run_p2v(argv, proxy, env=env)
    problems: list[str] = []
    last = rerun.events[-1] if rerun.events else {}
    report = last.get("report") or {}
    verdict = report.get("verdict") or {}
    if rerun.code != 0 or last.get("event") != "job-done" or not report.get("ok"):
        problems.append(f"rerun exit {rerun.code}: {error_line(rerun)}")
    if not verdict.get("booted"):
        problems.append("no boot verdict")
    defined = domains(prefix)
    if defined != [name]:
        problems.append(f"domains {defined}")
    strays = house.settle()
    if strays:
        problems.append(f"{len(strays)} process(es) left")
    readers = source_sessions(sshd)
    if readers:
        problems.append(f"{len(readers)} session(s) left on the source")
    overlays = overlays_of(out)
    if overlays:
        problems.append(f"{len(overlays)} overlay dir(s) left")
    tmp_left = sorted(str(p.relative_to(tmp)) for p in tmp.iterdir())
    if tmp_left:
        problems.append(f"{len(tmp_left)} file(s) left in TMPDIR")
    work = out / name
    half = sorted(p.name for p in work.glob("*") if p.suffix in (".part", ".journal")
                  or p.name == "register.pending")
    if half:
        problems.append(f"half-done files {half}")
    start = next((e for e in rerun.events if e.get("event") == "job-start"), {})
    row = {
        "kind": "convert", "run": n, "seed": args.seed, "commit": commit, "stage": stage,
        "fault": killed.fault, "killed_exit_code": killed.code, "ok": not problems,
        "problems": problems, "rerun_exit_code": rerun.code,
        "resume_at": start.get("resume_at"), "booted": bool(verdict.get("booted")),
        "domains": defined, "leftover_processes": sorted(strays.values()),
        "orphans_right_after_kill": sorted(after_kill.values()),
        "source_sessions_left": readers, "leftover_overlays": overlays,
        "leftover_tmp": tmp_left[:20], "half_done_files": half,
        "resent_bytes": killed.wire_bytes + rerun.wire_bytes - ref.wire_bytes,
        "wire_bytes": killed.wire_bytes + rerun.wire_bytes,
        "reference_copy_wire_bytes": ref.wire_bytes,
        "wall_s_killed": round(killed.wall_s, 1), "wall_s_rerun": round(rerun.wall_s, 1),
    }
    house.kill(strays)
    for d in overlays:
        shutil.rmtree(d, ignore_errors=True)
    runner.run([sys.executable, "-m", "p2v.cli", "clean", name, "--output-dir", out,
                "--domain"], check=False, timeout=300, cwd=ROOT)
    shutil.rmtree(tmp, ignore_errors=True)
    return row


# ------------------------------------------------------------------------- summary
def summary(rows: list[dict[str, Any]]) -> str:
    lines = ["| campaign | runs | fault | ended right | source changed | re-sent MiB "
             "(median / max) | within the in-flight bound | left behind |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("copy", "convert"):
        for how in ("cut", "SIGKILL"):
            group = [r for r in rows if r["kind"] == kind and str(r["fault"]).startswith(how)
                     and r.get("interrupted", True)]
            if not group:
                continue
            resent = [int(r["resent_bytes"]) / MiB for r in group]
            right = sum(1 for r in group if r.get("identical", r.get("ok")))
            if kind == "copy":
                changed = str(sum(1 for r in group if r["source_changed"]))
                bound = f"{sum(1 for r in group if r['within_bound'])}/{len(group)}"
                left = sum(1 for r in group if r["leftover_processes"]
                           or r["source_sessions_left"])
                what = "identical"
            else:
                changed, bound, what = "-", "-", "ok"
                left = sum(1 for r in group if r["problems"] and not r["ok"]
                           and any("left" in p or "domains" in p for p in r["problems"]))
            lines.append(f"| {kind} | {len(group)} | {how} | {right}/{len(group)} {what} | "
                         f"{changed} | {statistics.median(resent):.1f} / {max(resent):.1f} | "
                         f"{bound} | {left} run(s) |")
    missed = [r for r in rows if not r.get("interrupted", True)]
    if missed:
        lines.append(f"\n{len(missed)} run(s) not counted: p2v had finished before the fault "
                     f"({', '.join(str(r['kind']) + ' ' + str(r['run']) for r in missed)}).")
    lines.append(f"\nIn-flight bound: a cut {CUT_BOUND / MiB:.0f} MiB ({DEFAULT_PARALLEL} disks x "
                 f"({DEFAULT_CHUNK // MiB} MiB chunk + {SSH_WINDOW // MiB} MiB SSH window)), a "
                 f"SIGKILL {KILL_BOUND / MiB:.0f} MiB (the same + FLUSH_BYTES "
                 f"{FLUSH_BYTES // MiB} MiB per disk), plus one session's overhead per rerun.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=20, help="copy runs (default 20)")
    parser.add_argument("--converts", type=int, default=10, help="convert runs (default 10)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the faults (default: random, printed and recorded)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--summary", action="store_true",
                        help="print the table from the results file and exit")
    args = parser.parse_args()
    if args.summary:
        print(summary(json.loads(args.results.read_text())))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench/faults needs root (loop devices, libvirtd, sshd)")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    # Children of a killed p2v (qemu, qemu-storage-daemon) are re-parented to us, not init.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    commit = git_commit()
    print(f"bench/faults: seed {args.seed}, commit {commit}", flush=True)
    house = Household()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="p2v-bench-faults-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for kind, count, campaign in (("copies", args.copies, copy_campaign),
                                      ("converts", args.converts, convert_campaign)):
            if count:
                (work / kind).mkdir()
                rows += campaign(args, work / kind, house, commit)
    print(summary(rows))
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
