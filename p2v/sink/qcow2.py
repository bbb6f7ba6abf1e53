"""Writing a qcow2 image in place: qemu-storage-daemon exports it over NBD, p2v writes extents.

No raw staging copy: only the chunks written allocate clusters, so the image needs about
its final size on disk, and an image can be reopened to resume a copy.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from p2v import qemuimg, runner
from p2v.errors import CommandFailed, DestinationFull, P2VError
from p2v.scratch import scratch_dir, socket_root
from p2v.sink import nbd
from p2v.sink.nbd import NbdClient, NbdError

log = logging.getLogger(__name__)


class SinkError(P2VError):
    """writing {image} failed: {detail}"""


def create_qcow2(path: Path, size: int) -> None:
    """A new, empty qcow2 of `size` virtual bytes (reads as zeros)."""
    try:
        qemuimg.create(path, size)
    except CommandFailed as exc:
        if "No space left" in exc.message:
            raise DestinationFull(image=path, detail="qemu-img create failed") from None
        raise


def data_ranges(image: Path, *, force_share: bool = False) -> list[tuple[int, int]]:
    """(offset, length) of every range of a qcow2 that may not read as zeros: allocated
    data, as `qemu-img map` reports it (unallocated and zero clusters are left out).

    force_share: read while another process holds the image open (see Qcow2Writer)."""
    return [(int(e["start"]), int(e["length"]))
            for e in qemuimg.allocation_map(image, share=force_share) if not e.get("zero", False)]


class Qcow2Writer:
    """An open qcow2 image (a `writer.DiskWriter`): `write(offset, data)`, `flush()`, `close()`.

    Writes are asynchronous (see `nbd.NbdClient`): `flush` waits for them all and raises
    the first failure, so the journal, written after a flush, only ever holds chunks on
    disk; `unwritten` then names what did not land (all else is durable).

    Zero chunks are never written into a fresh image: its unallocated clusters already
    read as zeros. A reopened one may hold data the journal does not know of: `zero` it.
    """

    def __init__(self, image: Path, start_timeout: float = 30.0,
                 request_timeout: float = 300.0) -> None:
        self.image = image
        self._request_timeout = request_timeout
        if not nbd.available():
            raise SinkError(image=image, detail="the libnbd Python binding is missing: "
                            "install python3-libnbd (scripts/install-system-deps) and run "
                            "p2v from the venv `make setup` builds")
        # A scratch dir, not a temp dir: the next writer sweeps what a killed p2v left.
        self._scratch = ExitStack()
        tmp = self._scratch.enter_context(scratch_dir("nbd", socket_root()))
        self.socket_path = tmp / "nbd.sock"
        self._log = tmp / "qsd.log"
        with self._log.open("wb") as log_file:
            self._proc = runner.spawn(
                ["qemu-storage-daemon",
                 "--blockdev", f"driver=file,filename={_escape(image)},node-name=file0,"
                               "cache.direct=off",
                 "--blockdev", "driver=qcow2,file=file0,node-name=disk0",
                 "--nbd-server", f"addr.type=unix,addr.path={_escape(self.socket_path)}",
                 "--export", "type=nbd,id=exp0,node-name=disk0,name=disk0,writable=on"],
                stdout=log_file.fileno(), stderr=log_file.fileno(), die_with_parent=True,
            )
        try:
            self.client = self._connect(start_timeout)
        except BaseException:
            self._stop()
            raise
        self.size = self.client.size

    def _connect(self, timeout: float) -> NbdClient:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise SinkError(image=self.image, detail="qemu-storage-daemon exited: "
                                + self._log.read_text(errors="replace").strip()[-300:])
            if self.socket_path.exists():
                try:
                    return NbdClient(self.socket_path, "disk0", self._request_timeout)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise SinkError(image=self.image, detail="qemu-storage-daemon did not start")
            time.sleep(0.05)

    def _raise(self, exc: OSError, action: str) -> NoReturn:
        """The sink's one-line error for a failed request: the image, what failed where
        (an asynchronous write's failure names that write, not the call that saw it)."""
        where = exc.where if isinstance(exc, NbdError) else action
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DestinationFull(image=self.image, detail=f"{where}: {reason}") from None
        if self._proc.poll() is not None:
            reason = f"qemu-storage-daemon exited ({_exit_status(self._proc.returncode)})"
        raise SinkError(image=self.image, detail=f"{where}: {reason}") from None

    def write(self, offset: int, data: bytes) -> None:
        """Queue a write (several are in flight); a failure is raised by a later call."""
        try:
            self.client.pwrite(data, offset)
        except OSError as exc:
            self._raise(exc, f"write at {offset}")

    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeros again (a sync dropping a chunk no longer used)."""
        try:
            self.client.zero(offset, length)
        except OSError as exc:
            self._raise(exc, f"zeroing at {offset}")

    def data_ranges(self) -> list[tuple[int, int]]:
        """The image's ranges that may hold data (see `data_ranges`), as of the last flush.

        Read from the file beside this writer's daemon: sound because the daemon holds the
        image's write lock (no one else changes it) and its metadata is on disk once
        opened or flushed."""
        return data_ranges(self.image, force_share=True)

    def read(self, offset: int, length: int) -> bytes:
        try:
            return self.client.pread(length, offset)
        except OSError as exc:
            self._raise(exc, f"read at {offset}")

    def unwritten(self) -> list[tuple[int, int]] | None:
        """After a flush raised: the ranges that did not land (see `writer.DiskWriter`)."""
        return self.client.unwritten()

    def flush(self) -> None:
        """Everything written so far is on disk when this returns (journal after it)."""
        try:
            self.client.flush()
        except OSError as exc:
            self._raise(exc, "flush")

    def _stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._scratch.close()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self._stop()

    def __enter__(self) -> Qcow2Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _exit_status(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _escape(path: Path) -> str:
    """qemu's option syntax: a comma inside a value is written twice."""
    return str(path).replace(",", ",,")
