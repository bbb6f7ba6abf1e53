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

With a `WriteTracker` (`source/tracker.py`: the kernel's block tracepoints, read over the
session), a pass after the first skips steps 1-2: the chunks written since the previous
pass are read again, and only those. Whenever the tracker cannot vouch for an interval
(lost events, a dropped stream, a device it cannot see) that pass falls back to the hash
list for the disks concerned and says why (`rehash_why`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2v.errors import (
    FreezeExpired,
    IntegrityError,
    P2VError,
    SourceMismatch,
    SyncNotReady,
    UsageError,
)
from p2v.events import Event
from p2v.ratelimit import Limiter, job_limiter
from p2v.secure import check_path
from p2v.sink.qcow2 import Qcow2Writer
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
from p2v.source.reader import PYTHON3, READERS, choose_reader
from p2v.source.tracker import Cut, WriteTracker
from p2v.transfer.device import (
    DeviceInfo,
    ImagePaths,
    image_paths,
    probe_device,
    source_hostname,
)
from p2v.transfer.journal import Journal
from p2v.transfer.manifest import (
    FREE_MARK,
    MANIFEST_SCHEMA,
    chunk_summary,
    read_manifest,
    write_manifest,
)
from p2v.transfer.pump import Policy, Pump, ReadSpec, Wire, index_ranges

log = logging.getLogger("p2v.sync")   # the name job logs have always shown

SYNC_JOURNAL_SCHEMA = "p2v.sync-journal/1"
DIRTY = "dirty"          # journal: the chunk is being rewritten; its hash is unknown
FLUSH_SECONDS = 5.0      # at least this often, so a slow link loses little to a kill
FREEZE_MODES = (None, "strict", "best-effort")

# A pass overwrites chunks that held data: zero chunks are written as zeros. Committed by
# bytes and by time (a slow link), the chunk count never decides.
_POLICY = Policy(write_zeros=True, log=log, rerun="sends", flush_seconds=FLUSH_SECONDS)



@dataclass(frozen=True)
class SyncRequest:
    output_dir: Path
    disks: tuple[str, ...] = ()        # default: every disk with a manifest for `name`
    name: str | None = None            # default: the source's hostname
    compress: bool = True
    low_priority: bool = True
    bandwidth_limit: float | None = None
    shared_limit: tuple[Path, float] | None = None    # as CopyRequest's
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
    tracked: bool = False              # only the chunks written since the last pass read
    rehash_why: str | None = None      # why every used chunk was hashed instead
    read_chunks: int = 0               # chunks read again (tracked: every written one)

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

    @property
    def tracked(self) -> bool:
        """Every disk read only its written chunks (none was rehashed)."""
        return bool(self.disks) and all(d.tracked for d in self.disks)

    def to_dict(self) -> dict[str, Any]:
        return {"disks": [d.to_dict() for d in self.disks], "seconds": self.seconds,
                "changed_bytes": self.changed_bytes, "wire_bytes": self.wire_bytes,
                "tracked": self.tracked,
                "freeze": self.freeze.to_dict() if self.freeze else None}


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


def _check_ready(paths: ImagePaths, output_dir: Path, device: str) -> None:
    """Refuse a disk without a finished copy (a pass resumes only its own `.part`)."""
    if not paths.manifest.exists() or not (
            paths.image.exists() or paths.part.exists() and paths.sync_journal.exists()):
        raise SyncNotReady(device=device, output_dir=output_dir,
                           detail="the copy is still in progress" if paths.part.exists()
                           else "no image and manifest")


def check_source(manifest: dict[str, Any], identity: SourceIdentity, image: Path) -> None:
    """Refuse to sync an image taken from another server (or disk) than this one: its
    unchanged chunks would stay the other server's."""
    why = mismatch(manifest.get("source"), identity)
    if why is not None:
        raise SourceMismatch(path=image, detail=why, action="sync it",
                             files=f"{image} and {image.name}.manifest.json")


def _check_manifest(source: Source, manifest: dict[str, Any], paths: ImagePaths,
                    device: str, output_dir: Path, info: DeviceInfo,
                    identity: SourceIdentity | None) -> None:
    """Refuse a manifest of another source disk, or of a size that no longer holds."""
    check_source(manifest, identity or source_identity(source, device), paths.image)
    size = int(manifest["size"])
    if manifest.get("device") != device or size != info.size:
        raise SyncNotReady(device=device, output_dir=output_dir,
                           detail=f"the manifest is of {manifest.get('device')}, "
                                  f"{size} bytes; the source's {device} has {info.size}")


def _open_journal(paths: ImagePaths, manifest: dict[str, Any], hashes: list[str | None]
                  ) -> tuple[Journal, bool]:
    """The sync journal and whether it resumes a pass: an interrupted pass's (its lines
    applied to `hashes`), else a new one. From here on the image is `.part`."""
    journal_path, image = paths.sync_journal, paths.image
    loaded = Journal.load(journal_path, SYNC_JOURNAL_SCHEMA) if journal_path.exists() else None
    if loaded is None and journal_path.exists():
        if not image.exists():
            raise UsageError(detail=f"{journal_path} lost its header while {paths.part} was "
                                    "being synced; remove both and copy again")
        journal_path.unlink()          # torn as the pass started: nothing was written yet
    if loaded is not None and loaded.header.get("chunks_digest") != manifest.get(
            "chunks_digest"):
        if not image.exists():
            raise UsageError(detail=f"{journal_path} belongs to another image; remove "
                                    "it and copy again")
        # Killed after the image and its new manifest were in place: a finished pass.
        journal_path.unlink()
        loaded = None
    if loaded is not None:
        for index, digest in loaded.done.items():
            hashes[index] = digest
        if image.exists():
            image.replace(paths.part)
        return loaded, True
    journal = Journal.create(journal_path, {
        "schema": SYNC_JOURNAL_SCHEMA, "device": manifest["device"], "size": manifest["size"],
        "chunk_size": manifest["chunk_size"], "chunks_digest": manifest.get("chunks_digest")})
    image.replace(paths.part)
    return journal, False


@dataclass
class _Delta:
    """What differs between the source and the image (1-2 of the module docstring), or,
    tracked, the chunks written since the last pass (all in `changed`)."""

    size: int
    chunk: int
    changed: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str | None]] = field(default_factory=list)  # (index, new value)
    same_empty: list[tuple[int, str | None]] = field(default_factory=list)  # zero <-> free

    @property
    def changed_bytes(self) -> int:
        """Bytes of the changed and dropped chunks."""
        return sum(_chunk_len(i, self.chunk, self.size) for i in self.changed) + sum(
            _chunk_len(i, self.chunk, self.size) for i, _ in self.dropped)


def _delta(source: Source, spec: ReadSpec, hashes: list[str | None], skip_free: bool,
           wire: Wire) -> _Delta:
    """The source's hash list compared with `hashes` (the manifest's, journal applied)."""
    delta = _Delta(spec.size, spec.chunk_size)
    with source.stream(hasher_argv(spec.device, spec.chunk_size, reader=spec.reader.name,
                                   skip_free=skip_free, low_priority=spec.low_priority)) as raw:
        for index, state, nbytes in read_hashes(raw, spec.chunk_size, spec.size,
                                                host=spec.host, device=spec.device):
            wire.add(nbytes)
            known = hashes[index]
            empty_before = known is None or known == FREE_MARK
            if state in (ZERO, FREE):
                new = None if state == ZERO else FREE_MARK
                if known == new:
                    continue
                if empty_before:
                    delta.same_empty.append((index, new))
                else:
                    delta.dropped.append((index, new))
            elif known != state:
                delta.changed.append(index)
    return delta


def _rewrite(source: Source, spec: ReadSpec, delta: _Delta, part: Path, journal: Journal,
             wire: Wire, emit: Callable[[Event], None]) -> None:
    """Dropped chunks zeroed, changed ones read again into the image. Journaled dirty
    first, so a kill mid-write never leaves a stale hash standing."""
    journal.append([(i, DIRTY) for i in delta.changed] + [(i, DIRTY) for i, _ in delta.dropped])
    journal.append(delta.same_empty)
    if not (delta.changed or delta.dropped):
        return
    with Qcow2Writer(part) as writer:
        for index, _ in delta.dropped:
            writer.zero(index * spec.chunk_size, _chunk_len(index, spec.chunk_size, spec.size))
        writer.flush()
        journal.append(delta.dropped)
        if delta.changed:
            pump = Pump(source, spec, writer, journal, wire, _POLICY, progress=lambda: emit(
                {"event": "progress", "device": spec.device, "wire_bytes": wire.bytes}))
            pump.run(index_ranges(delta.changed))


def _final_hashes(journal: Journal, hashes: list[str | None], count: int, spec: ReadSpec
                  ) -> list[str | None]:
    """Every chunk's hash after the pass; a chunk still dirty is an IntegrityError."""
    final = [journal.done.get(i, hashes[i]) for i in range(count)]
    if any(h == DIRTY for h in final):
        index = final.index(DIRTY)
        raise IntegrityError(device=spec.device, index=index, offset=index * spec.chunk_size,
                             got="nothing", expected="a chunk")
    return final


def _tracked_delta(spec: ReadSpec, cut: Cut | None, resumed: bool) -> tuple[
        _Delta | None, str | None]:
    """The written chunks as the delta when the tracker vouches for them, else None and
    why the pass rehashes."""
    if cut is None:
        return None, None
    if resumed:
        return None, "an interrupted pass is resumed: its chunks are compared"
    if cut.chunks is None:
        return None, cut.why
    count = -(-spec.size // spec.chunk_size)
    return _Delta(spec.size, spec.chunk_size, sorted(i for i in cut.chunks if i < count)), None


def _written_outcome(delta: _Delta, before: list[str | None], final: list[str | None]
                     ) -> _Delta:
    """A tracked pass's delta as a rehash would have counted it: the written chunks whose
    content changed, and those that held data and are zero now."""
    out = _Delta(delta.size, delta.chunk)
    for i in delta.changed:
        if final[i] is None and before[i] not in (None, FREE_MARK):
            out.dropped.append((i, None))
        elif final[i] != before[i] and final[i] is not None:
            out.changed.append(i)
    return out


def sync_disk(source: Source, device: str, request: SyncRequest, name: str,
              emit: Callable[[Event], None] = lambda e: None, *,
              limiter: Limiter | None = None,
              info: DeviceInfo | None = None,
              identity: SourceIdentity | None = None,
              cut: Cut | None = None) -> SyncDiskResult:
    """One pass over one disk (see the module docstring); `info`, `identity`: the probe's
    answers if already known (probed before a freeze, to keep the frozen window short);
    `cut`: the tracker's writes since the last pass (None: no tracker)."""
    started = time.monotonic()
    paths = image_paths(request.output_dir, name, device)
    for path in (request.output_dir, paths.image, paths.part, paths.manifest,
                 paths.sync_journal):
        check_path(path, "output dir" if path == request.output_dir else "image")
    _check_ready(paths, request.output_dir, device)
    manifest = read_manifest(paths.manifest)
    info = info or probe_device(source, device)
    _check_manifest(source, manifest, paths, device, request.output_dir, info, identity)
    hashes: list[str | None] = list(manifest["chunk_hashes"])
    reader = choose_reader(request.reader, python3=info.python3, gzip=info.gzip,
                           zstd=info.zstd, host=source.target.host, device=device,
                           preferred=manifest.get("reader", PYTHON3))
    journal, resumed = _open_journal(paths, manifest, hashes)
    emit({"event": "sync-start", "device": device, "image": str(paths.image),
          "chunks": len(hashes), "resumed": resumed, "reader": reader.name})
    wire = Wire(limiter)
    # Every chunk asked for is read (no free-space parsing): the hash list said it is used.
    spec = ReadSpec(reader, source.target.host, device, info.size, int(manifest["chunk_size"]),
                    request.compress, request.low_priority, skip_free=False,
                    resized="changed size since the copy ({was} -> {now} bytes); copy it again")
    delta, why = _tracked_delta(spec, cut, resumed)
    tracked = delta is not None
    if delta is None:
        delta = _delta(source, spec, hashes, wire=wire, skip_free=not manifest.get(
            "full", False) and reader.name == PYTHON3)
    _announce(emit, device, delta, started, wire, tracked, why)
    before = list(hashes)
    _rewrite(source, spec, delta, paths.part, journal, wire, emit)
    final = _final_hashes(journal, hashes, len(hashes), spec)
    read_chunks = len(delta.changed)
    if tracked:
        delta = _written_outcome(delta, before, final)
    _commit(paths, manifest, final, spec, {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "frozen": bool(request.freeze), "changed_chunks": len(delta.changed),
        "dropped_chunks": len(delta.dropped), "tracked": tracked, "rehash_why": why})
    result = SyncDiskResult(device, paths.image, len(hashes), len(delta.changed),
                            len(delta.dropped), delta.changed_bytes, wire.bytes,
                            time.monotonic() - started, resumed, reader.name, tracked, why,
                            read_chunks)
    emit({"event": "sync-done", **result.to_dict()})
    return result


def _announce(emit: Callable[[Event], None], device: str, delta: _Delta, started: float,
              wire: Wire, tracked: bool, why: str | None) -> None:
    """The sync-delta event and log line: what this pass is about to read."""
    seconds = time.monotonic() - started
    emit({"event": "sync-delta", "device": device, "changed_chunks": len(delta.changed),
          "dropped_chunks": len(delta.dropped), "changed_bytes": delta.changed_bytes,
          "hash_seconds": round(seconds, 3), "wire_bytes": wire.bytes, "tracked": tracked,
          "rehash_why": why})
    if tracked:
        log.info("%s: %d chunk(s) written since the last pass (tracked, nothing hashed)",
                 device, len(delta.changed))
        return
    log.info("%s: %d chunk(s) changed, %d dropped (%d bytes), hashed in %.1f s%s", device,
             len(delta.changed), len(delta.dropped), delta.changed_bytes, seconds,
             f" (rehashed: {why})" if why else "")


def _commit(paths: ImagePaths, manifest: dict[str, Any], final: list[str | None],
            spec: ReadSpec, sync: dict[str, Any]) -> None:
    """The image renamed back, its new manifest, the journal gone: in this order, a kill
    between any two steps leaves a state the rerun understands (the image with the journal:
    resumed against the old manifest; the image with its new manifest and a stale journal:
    dropped)."""
    paths.part.replace(paths.image)
    _write_manifest(paths.manifest, manifest, final, int(manifest["size"]), spec.chunk_size,
                    sync)
    paths.sync_journal.unlink()


def _write_manifest(path: Path, manifest: dict[str, Any], hashes: list[str | None],
                    size: int, chunk: int, sync: dict[str, Any]) -> None:
    digest, zero_chunks, free_chunks = chunk_summary(hashes, size, chunk)
    new = dict(manifest)
    new.update({"chunk_hashes": hashes, "chunks_digest": digest,
                "zero_chunks": zero_chunks, "free_chunks": free_chunks,
                "data_chunks": len(hashes) - zero_chunks - free_chunks,
                "syncs": [*manifest.get("syncs", []), sync]})
    write_manifest(path, new)


def sync_pass(source: Source, request: SyncRequest, name: str, infos: list[DeviceInfo],
              emit: Callable[[Event], None], limiter: Limiter | None,
              identities: dict[str, SourceIdentity] | None = None,
              tracker: WriteTracker | None = None) -> list[SyncDiskResult]:
    """Every disk once; with a tracker, its cut first: the writes since the last pass (for
    the frozen pass: up to after the freeze)."""
    ids = identities or {}
    cuts = tracker.cut() if tracker is not None else {}
    return [sync_disk(source, info.device, request, name, emit, limiter=limiter, info=info,
                      identity=ids.get(info.device), cut=cuts.get(info.device))
            for info in infos]


def write_tracker(source: Source, request: SyncRequest, **options: Any) -> WriteTracker:
    """A tracker of the writes to the disks `request` syncs, at their copies' chunk sizes;
    `with` it around the passes (options: WriteTracker's grace, buffer_kb)."""
    name = request.name or source_hostname(source)
    sizes = {device: int(read_manifest(image_paths(request.output_dir, name, device
                                                   ).manifest)["chunk_size"])
             for device in _ready_disks(request, name)}
    return WriteTracker(source, sizes, **options)


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
        _check_ready(image_paths(request.output_dir, name, device), request.output_dir, device)
    return tuple(disks)


def sync(source: Source, request: SyncRequest,
         emit: Callable[[Event], None] = lambda e: None,
         tracker: WriteTracker | None = None) -> SyncResult:
    """One sync pass over every disk; with hooks or --freeze, the final pass: before-final
    hook, freeze (timer first), the pass, thaw, after-final hook (always, once started).
    With a tracker (`write_tracker`), the pass reads only what was written since the last."""
    _check(request)
    started = time.monotonic()
    name = request.name or source_hostname(source)
    disks = _ready_disks(request, name)
    infos = [probe_device(source, device) for device in disks]
    identities = {device: source_identity(source, device) for device in disks}
    for device in disks:                       # another server's image: no hook, no freeze
        paths = image_paths(request.output_dir, name, device)
        check_source(read_manifest(paths.manifest), identities[device], paths.image)
    limiter = job_limiter(request.bandwidth_limit, request.shared_limit)
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
                                    identities, tracker)
                if freeze.expired():
                    raise FreezeExpired(host=source.target.host,
                                        timeout=request.freeze_timeout)
            emit({"event": "thawed", "freeze_s": report.seconds})
        else:
            results = sync_pass(source, request, name, infos, emit, limiter, identities,
                                tracker)
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


def sync_passes(source: Source, request: SyncRequest, passes: int,
                emit: Callable[[Event], None] = lambda e: None, **tracker_options: Any
                ) -> list[SyncResult]:
    """`passes` passes in one session with the writes tracked between them: the first
    hashes every used chunk, each later one reads only what was written since the one
    before; the hooks and the freeze belong to the last (the final) pass."""
    if passes <= 1:
        return [sync(source, request, emit)]
    _check(request)
    live = replace(request, freeze=None, before_final=None, after_final=None)
    with write_tracker(source, request, **tracker_options) as tracker:
        results = [sync(source, live, emit, tracker) for _ in range(passes - 1)]
        results.append(sync(source, request, emit, tracker))
    return results


__all__ = ["FREEZE_MODES", "SyncDiskResult", "SyncRequest", "SyncResult", "find_disks",
           "sync", "sync_disk", "sync_passes", "write_tracker"]
