import hashlib
import os
import sys

dev, chunk, skip = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
fd = os.open(dev, os.O_RDONLY)
size = os.lseek(fd, 0, 2)
free = free_ranges(fd, dev, size) if skip else []
is_free = free_test(free)
out = sys.stdout
out.write("P2VHASH1 %d %d\n" % (size, chunk))
zero = bytes(chunk)
i = 0
while i * chunk < size:
    off = i * chunk
    n = min(chunk, size - off)
    if free and is_free(off, n):
        out.write("%d F\n" % i)
    else:
        # Past the device's cache: a mounted filesystem's data writes bypass it.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
        os.lseek(fd, off, 0)
        data = b""
        while len(data) < n:
            got = os.read(fd, n - len(data))
            if not got:
                sys.stderr.write("short read at %d\n" % off)
                sys.exit(5)
            data += got
        if data == zero[:n]:
            out.write("%d Z\n" % i)
        else:
            out.write("%d %s\n" % (i, hashlib.sha256(data).hexdigest()))
    i += 1
out.write("E\n")
out.flush()
