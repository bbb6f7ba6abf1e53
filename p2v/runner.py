"""The one wrapper for local commands: argv lists only, timeouts, and a stderr tail on failure."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from p2v.errors import CommandFailed, CommandNotFound, CommandTimeout

log = logging.getLogger(__name__)

# Variables that may hold secrets are never passed on to child processes.
_SECRET_ENV = ("P2V_SUDO_PASSWORD", "SSH_ASKPASS_PASSWORD")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    if extra:
        env.update(extra)
    return env


def which(program: str) -> str:
    """Return the program's path, or raise CommandNotFound naming it."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        raise CommandNotFound(program=program)
    return found


def _tail(text: str, lines: int = 5) -> str:
    rest = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(rest[-lines:]) or "(no output)"


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = 600,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> Result:
    """Run argv (never through a shell) and return its output as text."""
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=_env(env),
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(command=shlex.join(args[:3]), timeout=timeout or 0) from exc
    result = Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(
            command=shlex.join(args[:4]) + (" …" if len(args) > 4 else ""),
            returncode=proc.returncode,
            stderr_tail=_tail(proc.stderr or proc.stdout),
        )
    return result


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    cwd: str | Path | None = None,
    die_with_parent: bool = True,
    death_signal: int = signal.SIGKILL,
    own_session: bool = True,
    keep_secrets: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running process (qemu, sshd, a batch job) in its own session (or, with
    own_session False, its own process group); the caller stops it.

    die_with_parent: the kernel sends it DEATH_SIGNAL when p2v dies, even by SIGKILL
    (`die_with_parent_fn`), so no qemu, storage daemon or lock on an image outlives a killed job.
    Call spawn from a thread that lives as long as the child: the kernel's notion of the
    parent is the forking thread. keep_secrets: the child is p2v itself and needs what
    every other command is spared (the sudo password).
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("spawn: %s", shlex.join(args))
    child_env = {**os.environ, **(env or {})} if keep_secrets else _env(env)
    return subprocess.Popen(
        args,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=child_env,
        cwd=cwd,
        start_new_session=own_session,
        process_group=None if own_session else 0,
        preexec_fn=die_with_parent_fn(death_signal) if die_with_parent else None,  # noqa: PLW1509
    )


# Resolved here, in the parent: a forked child of a threaded process must not dlopen.
_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)   # Linux only


def set_parent_death_signal(sig: int, parent: int) -> None:
    """Have the kernel send SIG to this process when PARENT dies (Linux PR_SET_PDEATHSIG).

    Called in the child. If PARENT died before the request was in place, the signal is
    sent at once: a SIGKILL a moment too early must not leave an orphan either.
    """
    if _prctl is None or _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def interrupt_on_sigint() -> None:
    """SIGINT raises KeyboardInterrupt here even if this process was started with it ignored.

    SIGINT is how p2v stops its own work: Ctrl-C, a batch stopping its jobs, the
    parent-death signal of a job whose batch died. A process started from `nohup` or a
    non-interactive shell's `&` inherits SIGINT ignored, and Python then keeps it ignored:
    such a job would run on unsupervised after its batch died, and ignore every stop.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def die_with_parent_fn(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets SIG when the calling process dies.

    The one way p2v ties a child's life to its own; SIGKILL for helpers (qemu, a storage
    daemon) whose work is worthless without p2v, SIGINT for a job process that should stop
    as on Ctrl-C.
    """
    return functools.partial(set_parent_death_signal, sig, os.getpid())


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate a spawned process, then kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of a spawned process's group (own_session: the group is its
    pid), such as the ProxyCommands an ssh child started; the process itself is reaped."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()
