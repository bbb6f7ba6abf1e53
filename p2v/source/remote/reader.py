import hashlib
import os
import struct
import subprocess
import sys
import zlib

# argv[3], the codecs p2v accepts: "zstd" (then zlib where the source has no zstd), "zlib"
# or "none".
dev, chunk, offer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
skip = len(sys.argv) > 4 and sys.argv[4] == "1"


def zstd_packer():
    """A function compressing one chunk with zstd level 1 (None when it fails), or None
    when this source has no zstd: Python 3.14's compression.zstd, the zstandard module,
    else the zstd binary, one process per chunk (it cannot be told where a chunk ends)."""
    try:
        from compression import zstd as z314
        return lambda data: z314.compress(data, 1)
    except ImportError:
        pass
    try:
        import zstandard
        return zstandard.ZstdCompressor(level=1).compress
    except ImportError:
        pass
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        tool = os.path.join(d or ".", "zstd")
        if os.path.isfile(tool) and os.access(tool, os.X_OK):
            return lambda data: spawn_packer(tool, data)
    return None


def spawn_packer(tool, data):
    proc = subprocess.Popen([tool, "-q", "-c", "-1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    packed = proc.communicate(data)[0]
    return packed if proc.returncode == 0 else None


pack, kind_packed, codec = None, 1, b"none"
if offer == "zstd":
    pack = zstd_packer()
    kind_packed, codec = 5, b"zstd"
if pack is None and offer in ("zstd", "zlib"):
    pack, kind_packed, codec = (lambda data: zlib.compress(data, 1)), 2, b"zlib"
if pack is None:
    codec = b"none"
# The chunk ranges come on stdin ("a-b,c-d", to its end), never in argv: a busy server's
# sync can ask for more ranges than one argument may hold (128 KiB). All of it is read
# before any output, so the sender never waits on us while we wait on it.
ranges = (sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin).read()
ranges = ranges.decode("ascii") if isinstance(ranges, bytes) else ranges
fd = os.open(dev, os.O_RDONLY)
size = os.lseek(fd, 0, 2)
free = free_ranges(fd, dev, size) if skip else []
is_free = free_test(free)
out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
frame = struct.Struct(">BQI32sI")
out.write(struct.pack(">8sQI4s", b"P2VSTRM2", size, chunk, codec))
zero = bytes(chunk)
nozero = b"\0" * 32
for part in ranges.replace("\n", ",").split(","):
    if not part.strip():
        continue
    a, b = part.split("-")
    for i in range(int(a), int(b)):
        off = i * chunk
        if off >= size:
            break
        n = min(chunk, size - off)
        if free and is_free(off, n):
            out.write(frame.pack(4, i, n, nozero, 0))
            continue
        # Drop the device's cached copy first: a mounted filesystem writes its data past
        # that cache, so a cached chunk can be older than the disk (a sync would miss it).
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
        data = os.pread(fd, n, off) if hasattr(os, "pread") else None
        if data is None:
            os.lseek(fd, off, 0)
            data = os.read(fd, n)
        if len(data) != n:
            sys.stderr.write("short read at %d\n" % off)
            sys.exit(5)
        if data == zero[:n]:
            out.write(frame.pack(0, i, n, nozero, 0))
            continue
        digest = hashlib.sha256(data).digest()
        payload, kind = data, 1
        # A 64 KiB sample (zlib, cheap) decides whether to try: incompressible data then
        # costs ~2 % of a compression; a chunk that does not shrink by 5 % is sent as is.
        if pack and len(zlib.compress(data[:65536], 1)) < 0.95 * min(n, 65536):
            packed = pack(data)
            if packed and len(packed) < n * 0.95:
                payload, kind = packed, kind_packed
        out.write(frame.pack(kind, i, n, digest, len(payload)))
        out.write(payload)
out.write(frame.pack(3, 0, 0, nozero, 0))
out.flush()
