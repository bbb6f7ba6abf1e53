"""The libvirt connection and its errors: every libvirt error becomes a p2v error, once.

The package p2v.target.libvirt is the only home of the libvirt binding (an import
contract in pyproject.toml); this module opens connections for all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from p2v.errors import LibvirtFailed, LibvirtUnreachable

try:
    import libvirt
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; p2v reports them itself, once."""


if libvirt is not None:
    libvirt.registerErrorHandler(_silence, None)

def detail(exc: Exception) -> str:
    message = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    text = str(message or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def code(exc: Exception) -> int | None:
    return exc.get_error_code() if hasattr(exc, "get_error_code") else None


@contextmanager
def libvirt_call(action: str) -> Iterator[None]:
    """Turn a libvirt error raised inside the block into LibvirtFailed naming the action."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise LibvirtFailed(action=action, detail=detail(exc)) from None


def is_local(uri: str) -> bool:
    """A URI without a host talks to this machine's libvirtd (qemu:///system, qemu+unix://)."""
    return not urlsplit(uri).hostname


def connect(uri: str) -> Any:
    """Open a connection, or raise LibvirtUnreachable naming the URI in one line."""
    if libvirt is None:
        raise LibvirtUnreachable(uri=uri, detail=(
            "the libvirt Python binding is missing (python3-libvirt); run p2v from the venv "
            "built by `make setup`, or use --output local"))
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtUnreachable(uri=uri, detail=detail(exc)) from None
    if conn is None:  # pragma: no cover - old bindings returned None
        raise LibvirtUnreachable(uri=uri, detail="no connection")
    return conn


def quietly(action: Callable[[], object]) -> None:
    """Run a libvirt call whose failure means the thing is gone already."""
    try:
        action()
    except libvirt.libvirtError:
        pass
