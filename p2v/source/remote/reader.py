import hashlib
import os
import struct
import sys
import zlib

dev, chunk, level = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
skip = len(sys.argv) > 4 and sys.argv[4] == "1"
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
out.write(struct.pack(">8sQI", b"P2VSTRM1", size, chunk))
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
        # A 64 KiB sample decides: incompressible data costs ~2 % of a compression.
        if level and len(zlib.compress(data[:65536], level)) < 0.9 * min(n, 65536):
            packed = zlib.compress(data, level)
            if len(packed) < n * 0.9:
                payload, kind = packed, 2
        out.write(frame.pack(kind, i, n, digest, len(payload)))
        out.write(payload)
out.write(frame.pack(3, 0, 0, nozero, 0))
out.flush()
