"""`p2v sync`: bring completed copies up to date with the running source, sending only what
changed; optionally as the final pass, with the source frozen and the user's hooks around it.

Per disk, one pass is:

1. the source lists the hash of every chunk it considers used (`source/hasher.py`; chunks in
   free filesystem space are listed as free, all-zero ones as zero) — nothing else is sent;
2. p2v compares the list with the manifest: a chunk whose hash differs (or newly in use) is
   *changed*, a chunk that held data and is now zero or free is *dropped*;
3. the changed chunks are read again with the copy's reader (hashed on the source, checked
   here, zlib on the wire) and written over the image; dropped chunks are zeroed;
4. the manifest is rewritten (atomically) and the image renamed back.

While a pass runs, the image is `<image>.part` and a sync journal (`<image>.sync-journal`)
lists, first, every chunk about to be rewritten (`"h": "dirty"`) and then, after each NBD
flush made them durable, the chunks written with their new hash. The manifest with the
journal's lines on top always describes the image, so a rerun after a kill, a cut link or
Ctrl-C sends only what is still different (a dirty chunk never matches). Nothing is
written on the source by a pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2v.errors import (
    FreezeExpired,
    IntegrityError,
    P2VError,
    SourceDeviceError,
    SourceMismatch,
    SyncNotReady,
    UsageError,
)
from p2v.events import Event
from p2v.ratelimit import RateLimiter
from p2v.secure import check_path, write_private
from p2v.sink.qcow2 import Qcow2Writer
from p2v.sink.writer import DiskWriter
from p2v.source.extents import Extent, ranges_input
from p2v.source.freeze import (
    DEFAULT_FREEZE_TIMEOUT,
    Freeze,
    FreezeReport,
    check_freeze_timeout,
    mounts_on,
    run_hook,
)
from p2v.source.hasher import FREE, ZERO, hasher_argv, read_hashes
from p2v.source.identity import SourceIdentity, mismatch, source_identity
from p2v.source.protocol import Source
from p2v.source.reader import PYTHON3, READERS, Reader, choose_reader
from p2v.transfer.device import DeviceInfo, image_paths, probe_device, source_hostname
from p2v.transfer.journal import Journal, fsync
from p2v.transfer.manifest import FREE_MARK, MANIFEST_SCHEMA, read_manifest

log = logging.getLogger("p2v.sync")   # the name job logs have always shown

SYNC_JOURNAL_SCHEMA = "p2v.sync-journal/1"
DIRTY = "dirty"          # journal: the chunk is being rewritten; its hash is unknown
FLUSH_BYTES = 64 << 20
FLUSH_SECONDS = 5.0      # and at least this often, so a slow link loses little to a kill
FREEZE_MODES = (None, "strict", "best-effort")



@dataclass(frozen=True)
class SyncRequest:
    output_dir: Path
    disks: tuple[str, ...] = ()        # default: every disk with a manifest for `name`
    name: str | None = None            # default: the source's hostname
    compress: bool = True
    low_priority: bool = True
    bandwidth_limit: float | None = None
    reader: str = "auto"               # "auto", "python3" or "sh"
    freeze: str | None = None          # None, "strict" or "best-effort"
    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT
    before_final: str | None = None    # the user's shell command, run on the source
    after_final: str | None = None


@dataclass
class SyncDiskResult:
    device: str
    image: Path
    chunks: int
    changed_chunks: int                # rewritten with new data
    dropped_chunks: int                # held data, now zero or free: zeroed
    changed_bytes: int                 # bytes of the changed and dropped chunks
    wire_bytes: int                    # hash list + data, as received
    seconds: float
    resumed: bool                      # a sync journal from an interrupted run was found
    reader: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass
class SyncResult:
    disks: list[SyncDiskResult]
    seconds: float
    freeze: FreezeReport | None = None
    hooks: dict[str, str] = field(default_factory=dict)     # hook -> its output

    @property
    def changed_bytes(self) -> int:
        return sum(d.changed_bytes for d in self.disks)

    @property
    def wire_bytes(self) -> int:
        return sum(d.wire_bytes for d in self.disks)

    def to_dict(self) -> dict[str, Any]:
        return {"disks": [d.to_dict() for d in self.disks], "seconds": self.seconds,
                "changed_bytes": self.changed_bytes, "wire_bytes": self.wire_bytes,
                "freeze": self.freeze.to_dict() if self.freeze else None}


def _paths(output_dir: Path, name: str, device: str) -> tuple[Path, Path, Path, Path]:
    paths = image_paths(output_dir, name, device)
    return paths.image, paths.part, paths.manifest, paths.sync_journal


def find_disks(output_dir: Path, name: str) -> tuple[str, ...]:
    """The source devices of the completed copies named `name` in output_dir."""
    devices = []
    for manifest in sorted(output_dir.glob(f"{name}-*.qcow2.manifest.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if data.get("schema") == MANIFEST_SCHEMA and isinstance(data.get("device"), str):
            devices.append(data["device"])
    return tuple(devices)


def _chunk_len(index: int, chunk: int, size: int) -> int:
    return min(chunk, size - index * chunk)


@contextmanager
def _data_stream(source: Source, info: DeviceInfo, reader: Reader, chunk: int,
                 ranges: list[tuple[int, int]], request: SyncRequest
                 ) -> Iterator[Iterator[Extent]]:
    """The copy's reader over `ranges`, reading every chunk (no free-space parsing)."""
    host, device = source.target.host, info.device
    argv = reader.argv(device, chunk, compress=request.compress,
                       low_priority=request.low_priority, skip_free=False)
    # The ranges on stdin: a busy server's changed chunks overflow a command line.
    with source.stream(argv, stdin=ranges_input(ranges)) as raw:
        stream = reader.parse(raw, chunk, host=host, device=device, size=info.size,
                              ranges=ranges)
        if stream.chunk_size != chunk or stream.size != info.size:
            raise SourceDeviceError(device=device, host=host,
                                    detail=f"changed size since the copy ({info.size} -> "
                                           f"{stream.size} bytes); copy it again")
        yield stream.extents


def _ranges(indexes: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class _Counter:
    """Wire bytes of one disk, under the shared bandwidth limit."""

    def __init__(self, limiter: RateLimiter | None) -> None:
        self.limiter = limiter
        self.bytes = 0

    def add(self, n: int) -> None:
        self.bytes += n
        if self.limiter is not None:
            self.limiter.consume(n)


def check_source(manifest: dict[str, Any], identity: SourceIdentity, image: Path) -> None:
    """Refuse to sync an image taken from another server (or disk) than this one: its
    unchanged chunks would stay the other server's."""
    why = mismatch(manifest.get("source"), identity)
    if why is not None:
        raise SourceMismatch(path=image, detail=why, action="sync it",
                             files=f"{image} and {image.name}.manifest.json")


def sync_disk(source: Source, device: str, request: SyncRequest, name: str,
              emit: Callable[[Event], None] = lambda e: None, *,
              limiter: RateLimiter | None = None,
              info: DeviceInfo | None = None,
              identity: SourceIdentity | None = None) -> SyncDiskResult:
    """One pass over one disk (see the module docstring); `info`, `identity`: the probe's
    answers if already known (probed before a freeze, to keep the frozen window short)."""
    started = time.monotonic()
    image, part, manifest_path, journal_path = _paths(request.output_dir, name, device)
    for path in (request.output_dir, image, part, manifest_path, journal_path):
        check_path(path, "output dir" if path == request.output_dir else "image")
    if not manifest_path.exists() or not (image.exists() or part.exists() and
                                          journal_path.exists()):
        detail = ("the copy is still in progress" if part.exists() else "no image and "
                  "manifest")
        raise SyncNotReady(device=device, output_dir=request.output_dir, detail=detail)
    manifest = read_manifest(manifest_path)
    info = info or probe_device(source, device)
    check_source(manifest, identity or source_identity(source, device), image)
    host = source.target.host
    chunk, size = int(manifest["chunk_size"]), int(manifest["size"])
    if manifest.get("device") != device or size != info.size:
        raise SyncNotReady(device=device, output_dir=request.output_dir,
                           detail=f"the manifest is of {manifest.get('device')}, "
                                  f"{size} bytes; the source's {device} has {info.size}")
    count = -(-size // chunk)
    hashes: list[str | None] = list(manifest["chunk_hashes"])
    reader = choose_reader(request.reader, python3=info.python3, gzip=info.gzip, host=host,
                           device=device, preferred=manifest.get("reader", PYTHON3))

    loaded = Journal.load(journal_path, SYNC_JOURNAL_SCHEMA) if journal_path.exists() else None
    if loaded is None and journal_path.exists():
        if not image.exists():
            raise UsageError(detail=f"{journal_path} lost its header while {part} was being "
                                    "synced; remove both and copy again")
        journal_path.unlink()          # torn as the pass started: nothing was written yet
    resumed = loaded is not None
    if loaded is not None:
        journal = loaded
        if journal.header.get("chunks_digest") != manifest.get("chunks_digest"):
            if not image.exists():
                raise UsageError(detail=f"{journal_path} belongs to another image; remove "
                                        "it and copy again")
            # Killed after the image and its new manifest were in place: a finished pass.
            journal_path.unlink()
            resumed = False
    if resumed:
        for index, digest in journal.done.items():
            hashes[index] = digest
        if image.exists():
            image.replace(part)
    else:
        journal = Journal.create(journal_path, {
            "schema": SYNC_JOURNAL_SCHEMA, "device": device, "size": size,
            "chunk_size": chunk, "chunks_digest": manifest.get("chunks_digest")})
        image.replace(part)
    emit({"event": "sync-start", "device": device, "image": str(image), "chunks": count,
          "resumed": resumed, "reader": reader.name})

    # 1-2: what differs.
    wire = _Counter(limiter)
    changed: list[int] = []
    dropped: list[tuple[int, str | None]] = []          # (index, new manifest value)
    same_empty: list[tuple[int, str | None]] = []       # zero <-> free: no write needed
    skip_free = not manifest.get("full", False) and reader.name == PYTHON3
    with source.stream(hasher_argv(device, chunk, reader=reader.name, skip_free=skip_free,
                                   low_priority=request.low_priority)) as raw:
        for index, state, nbytes in read_hashes(raw, chunk, size, host=host, device=device):
            wire.add(nbytes)
            known = hashes[index]
            empty_before = known is None or known == FREE_MARK
            if state in (ZERO, FREE):
                new = None if state == ZERO else FREE_MARK
                if known == new:
                    continue
                if empty_before:
                    same_empty.append((index, new))
                else:
                    dropped.append((index, new))
            elif known != state:
                changed.append(index)
    hash_done = time.monotonic()
    changed_bytes = sum(_chunk_len(i, chunk, size) for i in changed) + sum(
        _chunk_len(i, chunk, size) for i, _ in dropped)
    emit({"event": "sync-delta", "device": device, "changed_chunks": len(changed),
          "dropped_chunks": len(dropped), "changed_bytes": changed_bytes,
          "hash_seconds": round(hash_done - started, 3), "wire_bytes": wire.bytes})
    log.info("%s: %d chunk(s) changed, %d dropped (%d bytes), hashed in %.1f s", device,
             len(changed), len(dropped), changed_bytes, hash_done - started)

    # 3: rewrite. Dirty first, so a kill mid-write never leaves a stale hash standing.
    dirty: list[tuple[int, str | None]] = [(i, DIRTY) for i in changed]
    journal.append(dirty + [(i, DIRTY) for i, _ in dropped])
    journal.append(same_empty)
    if changed or dropped:
        with Qcow2Writer(part) as writer:
            for index, _ in dropped:
                writer.zero(index * chunk, _chunk_len(index, chunk, size))
            writer.flush()
            journal.append(dropped)
            _rewrite(source, info, reader, chunk, changed, request, writer, journal, wire,
                     emit)

    # 4: the manifest, then the image under its name again.
    final = [journal.done.get(i, hashes[i]) for i in range(count)]
    if any(h == DIRTY for h in final):
        index = final.index(DIRTY)
        raise IntegrityError(device=device, index=index, offset=index * chunk,
                             got="nothing", expected="a chunk")
    # In this order, a kill between any two steps leaves a state the rerun understands:
    # the image with the journal (resumed against the old manifest), or the image with its
    # new manifest and a stale journal (dropped).
    part.replace(image)
    _write_manifest(manifest_path, manifest, final, size, chunk, {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "frozen": bool(request.freeze), "changed_chunks": len(changed),
        "dropped_chunks": len(dropped)})
    journal_path.unlink()
    result = SyncDiskResult(device, image, count, len(changed), len(dropped), changed_bytes,
                            wire.bytes, time.monotonic() - started, resumed, reader.name)
    emit({"event": "sync-done", **result.to_dict()})
    return result


def _rewrite(source: Source, info: DeviceInfo, reader: Reader, chunk: int,
             changed: list[int], request: SyncRequest, writer: DiskWriter,
             journal: Journal, wire: _Counter, emit: Callable[[Event], None]) -> None:
    """Read the changed chunks (again once if one arrives corrupt) into the image."""
    pending: list[tuple[int, str | None]] = []
    pending_bytes = 0
    last = time.monotonic()

    def commit() -> None:
        nonlocal pending_bytes, last
        if pending:
            writer.flush()
            journal.append(pending)
            pending.clear()
            pending_bytes = 0
            last = time.monotonic()
            emit({"event": "progress", "device": info.device, "wire_bytes": wire.bytes})

    def take(indexes: list[int]) -> list[int]:
        nonlocal pending_bytes
        corrupt: list[int] = []
        if not indexes:
            return corrupt
        try:
            with _data_stream(source, info, reader, chunk, _ranges(indexes), request) as ext:
                for extent in ext:
                    wire.add(extent.wire_bytes)
                    if extent.corrupt:
                        corrupt.append(extent.index)
                        continue
                    if extent.zero:
                        writer.zero(extent.offset, extent.length)
                    else:
                        writer.write(extent.offset, extent.data)
                    pending.append((extent.index, None if extent.zero else extent.sha256))
                    pending_bytes += extent.length
                    if pending_bytes >= FLUSH_BYTES or time.monotonic() - last > FLUSH_SECONDS:
                        commit()
        except BaseException:
            try:
                commit()
            except Exception as exc:
                log.warning("%s: the last %d chunk(s) could not be saved (%s); the rerun "
                            "sends them again", info.device, len(pending), exc)
            raise
        commit()
        return corrupt

    bad = take(changed)
    if bad:
        log.warning("%d chunk(s) of %s arrived corrupt; fetching them again", len(bad),
                    info.device)
        again = take(bad)
        if again:
            raise IntegrityError(device=info.device, index=again[0], offset=again[0] * chunk,
                                 got="(mismatch)", expected="the source's hash")


def _write_manifest(path: Path, manifest: dict[str, Any], hashes: list[str | None],
                    size: int, chunk: int, sync: dict[str, Any]) -> None:
    zero = hashlib.sha256(bytes(chunk)).hexdigest()
    digest = hashlib.sha256()
    for i, h in enumerate(hashes):
        if h is None or h == FREE_MARK:
            length = _chunk_len(i, chunk, size)
            h = zero if length == chunk else hashlib.sha256(bytes(length)).hexdigest()
        digest.update(bytes.fromhex(h))
    zero_chunks = sum(1 for h in hashes if h is None)
    free_chunks = sum(1 for h in hashes if h == FREE_MARK)
    new = dict(manifest)
    new.update({"chunk_hashes": hashes, "chunks_digest": digest.hexdigest(),
                "zero_chunks": zero_chunks, "free_chunks": free_chunks,
                "data_chunks": len(hashes) - zero_chunks - free_chunks,
                "syncs": [*manifest.get("syncs", []), sync]})
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, json.dumps(new, indent=1) + "\n", "manifest")
    fsync(tmp)
    tmp.replace(path)


def sync_pass(source: Source, request: SyncRequest, name: str, infos: list[DeviceInfo],
              emit: Callable[[Event], None], limiter: RateLimiter | None,
              identities: dict[str, SourceIdentity] | None = None
              ) -> list[SyncDiskResult]:
    ids = identities or {}
    return [sync_disk(source, info.device, request, name, emit, limiter=limiter, info=info,
                      identity=ids.get(info.device))
            for info in infos]


def _check(request: SyncRequest) -> None:
    if request.freeze not in FREEZE_MODES:
        raise UsageError(detail=f"--freeze must be given alone or as --freeze=best-effort, "
                                f"not {request.freeze!r}")
    check_freeze_timeout(request.freeze_timeout)
    if request.reader not in READERS:
        raise UsageError(detail=f"unknown reader {request.reader!r}")


def _ready_disks(request: SyncRequest, name: str) -> tuple[str, ...]:
    """The disks to sync, each with a finished copy; refused before anything is touched."""
    disks = request.disks or find_disks(request.output_dir, name)
    if not disks:
        raise SyncNotReady(device=f"any disk of {name!r}", output_dir=request.output_dir,
                           detail="no manifest found")
    for device in disks:
        image, part, manifest, journal = _paths(request.output_dir, name, device)
        if not manifest.exists() or not (image.exists() or part.exists() and journal.exists()):
            raise SyncNotReady(device=device, output_dir=request.output_dir,
                               detail="the copy is still in progress" if part.exists()
                               else "no image and manifest")
    return tuple(disks)


def sync(source: Source, request: SyncRequest,
         emit: Callable[[Event], None] = lambda e: None) -> SyncResult:
    """One sync pass over every disk; with hooks or --freeze, the final pass: before-final
    hook, freeze (timer first), the pass, thaw, after-final hook (always, once started)."""
    _check(request)
    started = time.monotonic()
    name = request.name or source_hostname(source)
    disks = _ready_disks(request, name)
    infos = [probe_device(source, device) for device in disks]
    identities = {device: source_identity(source, device) for device in disks}
    for device in disks:                       # another server's image: no hook, no freeze
        image, _, manifest_path, _ = _paths(request.output_dir, name, device)
        check_source(read_manifest(manifest_path), identities[device], image)
    limiter = RateLimiter(request.bandwidth_limit) if request.bandwidth_limit else None
    hooks: dict[str, str] = {}
    report: FreezeReport | None = None
    failed = False
    try:
        if request.before_final:
            hooks["before-final"] = run_hook(
                source, "before-final", request.before_final,
                outcome="nothing was frozen or synced" + (
                    "; the --after-final hook ran" if request.after_final else ""))
        if request.freeze:
            mounts = mounts_on(source, disks)
            freeze = Freeze(source, mounts, timeout=request.freeze_timeout,
                            best_effort=request.freeze == "best-effort")
            with freeze as report:
                emit({"event": "frozen", "frozen": [m.mountpoint for m in report.frozen],
                      "not_frozen": [{"mountpoint": m.mountpoint, "why": why}
                                     for m, why in report.not_frozen]})
                # Writers wait while frozen: the frozen pass runs at normal priority (the
                # live passes may stay under nice/ionice), each second of it is downtime.
                frozen_pass = replace(request, low_priority=False)
                results = sync_pass(source, frozen_pass, name, infos, emit, limiter,
                                    identities)
                if freeze.expired():
                    raise FreezeExpired(host=source.target.host,
                                        timeout=request.freeze_timeout)
            emit({"event": "thawed", "freeze_s": report.seconds})
        else:
            results = sync_pass(source, request, name, infos, emit, limiter, identities)
    except BaseException:
        failed = True
        raise
    finally:
        if request.after_final:
            try:
                hooks["after-final"] = run_hook(source, "after-final", request.after_final,
                                                outcome="the sync itself is complete")
            except P2VError as exc:
                if not failed:
                    raise
                log.error("%s", exc.message)
    return SyncResult(results, time.monotonic() - started, report, hooks)


__all__ = ["FREEZE_MODES", "SyncDiskResult", "SyncRequest", "SyncResult", "find_disks",
           "sync", "sync_disk"]
