"""`p2v copy`: each source disk into DIR/<name>-<dev>.qcow2, verified chunk by chunk, resumable.

Per disk: the image is written as `<image>.part` with a journal beside it
(`<image>.journal`: a JSON header line, then one line per chunk known to be on disk). A chunk
is journaled only after an NBD flush made it durable, so whatever happens (link cut, p2v
killed, Ctrl-C, destination full) a rerun of the same command re-reads only the chunks the
journal lacks. When every chunk is in, the manifest (`<image>.manifest.json`) is written,
`.part` is renamed to the image and the journal removed: an image without `.part` is
complete.

Journal header and manifest record the source's identity (`p2v.source.identity`: host key,
disk serial/WWN): a copy is resumed, or taken as complete, only from the very disk it
came from, never from a clone with the same hostname, device and size. A resume first zeroes
whatever the image holds in chunks the journal lacks (written, never journaled), since zero
and free chunks are not written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2v.errors import IntegrityError, SourceMismatch, UsageError
from p2v.events import Event
from p2v.ratelimit import Limiter, job_limiter
from p2v.secure import check_path, make_private, private_dir
from p2v.sink.qcow2 import Qcow2Writer, create_qcow2
from p2v.source.extents import missing_ranges
from p2v.source.identity import SourceIdentity, mismatch, source_identity
from p2v.source.protocol import Source
from p2v.source.reader import READERS, Reader, choose_reader
from p2v.transfer.device import (
    DeviceInfo,
    ImagePaths,
    image_paths,
    image_stem,
    probe_device,
    source_hostname,
)
from p2v.transfer.journal import Journal
from p2v.transfer.manifest import MANIFEST_SCHEMA, chunk_summary, read_manifest, write_manifest
from p2v.transfer.pump import Cancelled, Meter, Policy, Pump, QuietMeter, ReadSpec, Wire

log = logging.getLogger("p2v.copy")   # the name job logs have always shown

JOURNAL_SCHEMA = "p2v.journal/1"
DEFAULT_CHUNK = 4 << 20
MAX_BATCH_CHUNKS = 4096    # a batch is journaled at pump.FLUSH_BYTES of data or this many chunks

DEFAULT_PARALLEL = 2
# Each disk in flight costs p2v about 35 MiB (SSH window, chunk, its compressed and
# decompressed forms) and at most 16 MiB more of chunks whose writes are in flight
# (p2v.sink.nbd.IN_FLIGHT_BYTES): 4 keep the peak under 256 MiB, and this receiver is CPU-bound
# (paramiko's crypto) well before 4 disks on a few cores anyway.
MAX_PARALLEL = 4

# (device, size in bytes, bytes already in the image) -> a Meter
MeterFactory = Callable[[str, int, int], Meter]

# A fresh (or scrubbed) image reads as zeros where the journal lacks chunks: only data is
# written, and a batch of zero chunks costs no bytes, hence the chunk count too.
_POLICY = Policy(write_zeros=False, log=log, rerun="copies", max_chunks=MAX_BATCH_CHUNKS)


@dataclass(frozen=True)
class CopyRequest:
    disks: tuple[str, ...]
    output_dir: Path
    name: str | None = None            # default: the source's hostname
    full: bool = False                 # every non-zero byte (no filesystem-aware skipping)
    chunk_size: int = DEFAULT_CHUNK
    compress: bool = True
    low_priority: bool = True
    parallel: int = DEFAULT_PARALLEL   # disks copied at the same time
    bandwidth_limit: float | None = None   # bytes/s over all disks; None: unlimited
    # (bucket file, bytes/s) shared with other processes on this host (a batch's jobs)
    shared_limit: tuple[Path, float] | None = None
    reader: str = "auto"               # "auto": python3 where the source has it, else sh


@dataclass
class DiskResult:
    device: str
    image: Path
    manifest: Path
    size: int
    chunks: int
    zero_chunks: int
    data_chunks: int
    resumed_chunks: int                # already in the journal when this run started
    read_chunks: int                   # read from the source in this run (refetches too)
    refetched_chunks: int
    wire_bytes: int
    seconds: float
    already_complete: bool = False
    free_chunks: int = 0               # skipped as free filesystem/swap space
    reader: str = "python3"            # which source-side reader ran ("python3" or "sh")
    stale_zeroed_bytes: int = 0        # written before an interruption, never journaled

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def read_spec(source: Source, info: DeviceInfo, request: CopyRequest, reader: Reader
              ) -> ReadSpec:
    """How the copy reads a device: free space skipped unless --full."""
    return ReadSpec(reader, source.target.host, info.device, info.size, request.chunk_size,
                    request.compress, request.low_priority, skip_free=not request.full,
                    resized="changed size under the copy ({was} -> {now} bytes); start "
                            "again in a new --output-dir")


def _copy_chunks(source: Source, spec: ReadSpec, journal: Journal, part: Path, *,
                 meter: Meter, emit: Callable[[Event], None], limiter: Limiter | None,
                 cancel: threading.Event | None, done_bytes: int) -> tuple[int, Pump]:
    """Every chunk the journal lacks into the image; returns the wire bytes and the pump
    (its counts)."""
    count = -(-spec.size // spec.chunk_size)
    wire = Wire(limiter)

    def progress() -> None:
        emit({"event": "progress", "device": spec.device, "done_chunks": len(journal.done),
              "chunks": count, "wire_bytes": wire.bytes})

    with Qcow2Writer(part) as writer:
        pump = Pump(source, spec, writer, journal, wire, _POLICY, progress=progress,
                    meter=meter, done_bytes=done_bytes, cancel=cancel)
        pump.run(missing_ranges(set(journal.done), count))
        missing = missing_ranges(set(journal.done), count)
        if missing:
            raise IntegrityError(device=spec.device, index=missing[0][0],
                                 offset=missing[0][0] * spec.chunk_size, got="nothing",
                                 expected="a chunk")
    return wire.bytes, pump


def _complete_manifest(image: Path, manifest_path: Path, device: str, size: int,
                       identity: SourceIdentity) -> dict[str, Any]:
    """The manifest of a finished image, if it is this source disk's; else refuse: taking
    it as complete would hand back another server's disk, replacing it would lose it."""
    files = f"{image} and {manifest_path.name}"
    if not manifest_path.exists():
        raise SourceMismatch(path=image, detail="it has no manifest: p2v did not write it",
                             action="overwrite it", files=image)
    manifest = read_manifest(manifest_path)
    why = mismatch(manifest.get("source"), identity)
    if why is None and (manifest.get("device"), manifest.get("size")) != (device, size):
        why = (f"the manifest is of {manifest.get('device')}, {manifest.get('size')} bytes; "
               f"this source's {device} has {size}")
    if why is not None:
        raise SourceMismatch(path=image, detail=why, action="take it as complete",
                             files=files)
    return manifest


def _resumable(journal_path: Path, part: Path, header: dict[str, Any],
               identity: SourceIdentity) -> Journal | None:
    """The journal of an interrupted copy of this very source disk, None if there is
    nothing to resume; a copy of another source (or of this one with another device, size
    or chunk size) is refused, its files left as they are."""
    if not journal_path.exists():
        return None
    journal = Journal.load(journal_path, JOURNAL_SCHEMA)
    if journal is None:
        log.warning("%s: the journal's header was torn (killed or power lost as the copy "
                    "started); nothing was journaled, starting afresh", journal_path)
        return None
    why = mismatch(journal.header.get("source"), identity)
    if why is not None:
        raise SourceMismatch(path=part, detail=why, action="resume it",
                             files=f"{part} and {journal_path.name}")
    theirs = {k: journal.header.get(k) for k in ("device", "size", "chunk_size")}
    if theirs != {k: header[k] for k in ("device", "size", "chunk_size")}:
        raise UsageError(detail=f"{journal_path} belongs to another copy ({theirs}); "
                                "remove it and the .part image, or use another "
                                "--output-dir")
    return journal


def _stale_ranges(data: list[tuple[int, int]], missing: list[tuple[int, int]], chunk: int
                  ) -> list[tuple[int, int]]:
    """Byte ranges (offset, length) both holding data in the image and in unjournaled
    chunks (`missing`: half-open chunk index ranges); both lists sorted."""
    out: list[tuple[int, int]] = []
    j = 0
    for first, last in missing:
        lo, hi = first * chunk, last * chunk
        while j < len(data) and data[j][0] + data[j][1] <= lo:
            j += 1
        k = j
        while k < len(data) and data[k][0] < hi:
            start, end = max(lo, data[k][0]), min(hi, data[k][0] + data[k][1])
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((start, end - start))
            k += 1
    return out


def _scrub(part: Path, journal: Journal, count: int, chunk: int) -> int:
    """Zero what the image holds in chunks the journal lacks; returns the bytes zeroed.

    Written and flushed but never journaled (killed, or the power lost, before the journal
    line was durable), such a chunk keeps the old data, and the copy writes nothing where
    the source is now zero or free: left alone, the image would mix then and now while the
    manifest calls the chunk zero.
    """
    missing = missing_ranges(set(journal.done), count)
    if not missing:
        return 0
    with Qcow2Writer(part) as writer:
        stale = _stale_ranges(writer.data_ranges(), missing, chunk)
        for offset, length in stale:
            writer.zero(offset, length)
        if stale:
            writer.flush()
    zeroed = sum(length for _, length in stale)
    if zeroed:
        log.info("%s: zeroed %d byte(s) written before the interruption but never journaled",
                 part, zeroed)
    return zeroed


def _already_complete(paths: ImagePaths, device: str, size: int, count: int,
                      identity: SourceIdentity, emit: Callable[[Event], None],
                      started: float) -> DiskResult:
    """The result for an image already copied (its manifest this source disk's)."""
    manifest = _complete_manifest(paths.image, paths.manifest, device, size, identity)
    paths.journal.unlink(missing_ok=True)     # left by a kill after the final rename
    emit({"event": "disk-complete", "device": device, "image": str(paths.image)})
    return DiskResult(device, paths.image, paths.manifest, size, count,
                      manifest.get("zero_chunks", 0), manifest.get("data_chunks", 0),
                      count, 0, 0, 0, time.monotonic() - started, already_complete=True)


def _open_journal(paths: ImagePaths, request: CopyRequest, header: dict[str, Any],
                  identity: SourceIdentity) -> tuple[Journal, int]:
    """The journal to copy against and the bytes the resume zeroed: an interrupted copy's
    (its image scrubbed), else a new one beside a new, empty image."""
    if paths.sync_journal.exists():
        raise UsageError(detail=f"a `p2v sync` of {paths.image} was interrupted; rerun that "
                                "sync to finish it (a copy would start the image afresh)")
    size, chunk = header["size"], header["chunk_size"]
    journal = (_resumable(paths.journal, paths.part, header, identity)
               if paths.part.exists() else None)
    if journal is not None:
        return journal, _scrub(paths.part, journal, -(-size // chunk), chunk)
    for stale in (paths.part, paths.journal, paths.manifest):
        stale.unlink(missing_ok=True)
    private_dir(request.output_dir, "output dir", tighten=False)
    create_qcow2(paths.part, size)
    make_private(paths.part, "image")
    return Journal.create(paths.journal, header), 0


def _manifest(header: dict[str, Any], image: Path, hashes: list[str | None], full: bool,
              reader: str, pump: Pump) -> dict[str, Any]:
    """The finished image's manifest (`hashes`: every chunk's, from the journal; `pump`:
    this run's, whose codec and counts it records)."""
    size, chunk = header["size"], header["chunk_size"]
    digest, zero_chunks, free_chunks = chunk_summary(hashes, size, chunk)
    return {
        "schema": MANIFEST_SCHEMA, "host": header["host"], "device": header["device"],
        "source": header["source"], "image": image.name, "size": size,
        "chunk_size": chunk, "chunks": len(hashes),
        "zero_chunks": zero_chunks, "free_chunks": free_chunks,
        "data_chunks": len(hashes) - zero_chunks - free_chunks, "full": full,
        "reader": reader,
        "wire_codec": pump.codec,
        "wire_chunks": {"compressed": pump.packed, "raw": pump.raw},
        "wire_is": "the codec the source compressed with in the run that finished the "
                   "copy, and the data chunks it sent compressed and as they were (a "
                   "chunk that would not shrink by 5 % is sent raw); chunks an earlier, "
                   "interrupted run sent are not counted",
        "skipped": {"zero": "all-zero chunks are not sent and not written (they read as "
                            "zeros in the image)",
                    "free": "chunks wholly inside ext2/3/4 or XFS free blocks or a swap "
                            "area past its header page: not read, not sent, zeros in the "
                            "image"},
        "hash": "sha256 of each chunk on the source; null: all-zero; \"free\": skipped",
        "chunk_hashes": hashes,
        "chunks_digest": digest,
        "chunks_digest_is": "sha256 over the concatenated sha256 digests of every chunk "
                            "of the image in order (zero and free chunks as zeros)",
    }


def copy_disk(source: Source, device: str, request: CopyRequest, name: str,
              emit: Callable[[Event], None] = lambda e: None, *,
              info: DeviceInfo | None = None, meter_factory: MeterFactory | None = None,
              limiter: Limiter | None = None,
              cancel: threading.Event | None = None,
              identity: SourceIdentity | None = None) -> DiskResult:
    """Copy one disk (see the module docstring). `info`: the probe's answer if already
    known; `cancel`: set by another disk's failure, stops this one at the next chunk;
    `identity`: the source disk's, if already known (see `p2v.source.identity`)."""
    started = time.monotonic()
    chunk = request.chunk_size
    paths = image_paths(request.output_dir, name, device)
    info = info or probe_device(source, device)
    reader = choose_reader(request.reader, python3=info.python3, gzip=info.gzip,
                           zstd=info.zstd, host=source.target.host, device=device)
    identity = identity or source_identity(source, device)
    size = info.size
    count = -(-size // chunk)
    header = {"schema": JOURNAL_SCHEMA, "host": source.target.host, "device": device,
              "size": size, "chunk_size": chunk, "source": identity.to_dict()}
    check_path(request.output_dir, "output dir")
    for path in (paths.image, paths.part, paths.journal, paths.manifest):
        check_path(path, "image")
    if paths.image.exists():
        return _already_complete(paths, device, size, count, identity, emit, started)
    journal, scrubbed = _open_journal(paths, request, header, identity)
    resumed = len(journal.done)
    emit({"event": "disk-start", "device": device, "image": str(paths.image), "size": size,
          "chunks": count, "resumed_chunks": resumed, "reader": reader.name,
          "stale_zeroed_bytes": scrubbed})
    done_bytes = sum(min(chunk, size - i * chunk) for i in journal.done)
    meter = (meter_factory or (lambda d, s, n: QuietMeter()))(device, size, done_bytes)
    try:
        wire, pump = _copy_chunks(
            source, read_spec(source, info, request, reader), journal, paths.part,
            meter=meter, emit=emit, limiter=limiter, cancel=cancel, done_bytes=done_bytes)
    finally:
        meter.close()
    manifest = _manifest(header, paths.image, [journal.done[i] for i in range(count)],
                         request.full, reader.name, pump)
    write_manifest(paths.manifest, manifest)
    paths.part.replace(paths.image)
    paths.journal.unlink()
    result = DiskResult(device, paths.image, paths.manifest, size, count,
                        manifest["zero_chunks"], manifest["data_chunks"], resumed, pump.read,
                        pump.refetched, wire, time.monotonic() - started,
                        free_chunks=manifest["free_chunks"], reader=reader.name,
                        stale_zeroed_bytes=scrubbed)
    emit({"event": "disk-done", **result.to_dict()})
    return result


def copy_disks(source: Source, request: CopyRequest,
               emit: Callable[[Event], None] = lambda e: None,
               meter_factory: MeterFactory | None = None) -> list[DiskResult]:
    """Copy every disk, `request.parallel` at a time, all under one bandwidth limit.

    Every device is probed before anything is created locally, so a bad --disk costs
    nothing. If one disk fails, the others stop at their next chunk (their journals
    committed) and the first error is raised: rerun the same command to resume them all.
    """
    if not request.disks:
        raise UsageError(detail="name at least one --disk")
    if request.chunk_size < 65536 or request.chunk_size % 65536:
        raise UsageError(detail="--chunk-size must be a multiple of 64 KiB")
    if not 1 <= request.parallel <= MAX_PARALLEL:
        raise UsageError(detail=f"--parallel must be 1 to {MAX_PARALLEL}")
    if request.reader not in READERS:
        raise UsageError(detail=f"unknown reader {request.reader!r} (one of {READERS})")
    stems = [image_stem(d) for d in request.disks]
    if len(set(stems)) != len(stems):
        twice = next(d for d, s in zip(request.disks, stems, strict=True) if stems.count(s) > 1)
        raise UsageError(detail=f"--disk {twice} is named twice (or two disks would share "
                                "one image name)")
    infos = [probe_device(source, device) for device in request.disks]
    identities = {info.device: source_identity(source, info.device) for info in infos}
    name = request.name or source_hostname(source)
    limiter = job_limiter(request.bandwidth_limit, request.shared_limit)
    lock = threading.Lock()

    def emit_locked(event: Event) -> None:
        with lock:
            emit(event)

    def one(info: DeviceInfo) -> DiskResult:
        return copy_disk(source, info.device, request, name, emit_locked, info=info,
                         meter_factory=meter_factory, limiter=limiter, cancel=cancel,
                         identity=identities[info.device])

    cancel = threading.Event()
    workers = min(request.parallel, len(infos))
    if workers == 1:
        return [one(info) for info in infos]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p2v-copy")
    futures = [pool.submit(one, info) for info in infos]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:            # Ctrl-C: let every disk commit its journal first
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
    if failed:
        cancel.set()
    pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:       # the first real error, not another disk's Cancelled
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not isinstance(exc, Cancelled):
            raise exc
    return [f.result() for f in futures]


__all__ = ["CopyRequest", "DeviceInfo", "DiskResult", "Meter", "MeterFactory", "copy_disk",
           "copy_disks", "image_stem", "probe_device", "read_manifest"]
