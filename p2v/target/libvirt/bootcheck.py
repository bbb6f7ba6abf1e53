"""The boot check's guest on libvirt: a transient network and domain, and the sweep of
those a killed run left behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2v.secure import private_dir, state_dir
from p2v.target.libvirt.conn import connect, libvirt, libvirt_call, quietly

# ------------------------------------------------------------ the boot check's transient guest
VERIFY_PREFIX = "p2v-verify-"
VERIFY_LOCK = "verify-libvirt.lock"


@contextmanager
def _verify_lock() -> Iterator[None]:
    """Held while a check creates its network and domain, and while leftovers are swept:
    a sweep must not take a network whose domain is about to start."""
    import fcntl

    path = private_dir(state_dir(), "state dir", tighten=False) / VERIFY_LOCK
    with path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


class TransientGuest:
    """The boot check's guest: a transient network and a transient domain, never defined.

    The domain is started with AUTODESTROY: libvirtd destroys it when this connection closes,
    also when p2v is killed. The network has no such flag: `sweep_transient` removes one left
    by a killed run.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: Any = None
        self.domain: Any = None
        self.network: Any = None

    def start(self, network_xml: str, domain_xml_text: str,
              owner_alive: Callable[[Path], bool],
              prepare_network: Callable[[], None] = lambda: None) -> None:
        """Sweep leftovers, create the network (then `prepare_network`), start the domain."""
        self.conn = connect(self.uri)
        with _verify_lock():
            sweep_transient(self.conn, owner_alive)
            with libvirt_call("creating the boot check's isolated network"):
                self.network = self.conn.networkCreateXML(network_xml)
            prepare_network()
            with libvirt_call("starting the boot check's transient domain"):
                self.domain = self.conn.createXML(domain_xml_text,
                                                  libvirt.VIR_DOMAIN_START_AUTODESTROY)

    def active(self) -> bool:
        try:
            return bool(self.domain is not None and self.domain.isActive())
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        """Destroy the domain, then its network; close the connection. Never raises."""
        if self.domain is not None:
            quietly(self.domain.destroy)
            self.domain = None
        if self.network is not None:
            quietly(self.network.destroy)
            self.network = None
        if self.conn is not None:
            quietly(self.conn.close)
            self.conn = None


def sweep_transient(conn: Any, owner_alive: Callable[[Path], bool]) -> list[str]:
    """Destroy boot-check domains whose p2v is gone, then boot-check networks with no domain.

    A domain's metadata names its scratch dir; `owner_alive(dir)` says whether the run that
    holds it lives. Callers hold `_verify_lock` (a network is made just before its domain).
    """
    from p2v.target.transient import scratch_of

    removed: list[str] = []
    running: set[str] = set()
    with libvirt_call("listing the boot check's leftover domains"):
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
    for dom in domains:
        name = dom.name()
        if not name.startswith(VERIFY_PREFIX):
            continue
        try:
            scratch = scratch_of(dom.XMLDesc(0))
        except libvirt.libvirtError:
            continue        # gone meanwhile
        if scratch is not None and owner_alive(scratch):
            running.add(name)
            continue
        quietly(dom.destroy)
        removed.append(name)
    with libvirt_call("listing the boot check's leftover networks"):
        networks = conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_TRANSIENT)
    for net in networks:
        name = net.name()
        if name.startswith(VERIFY_PREFIX) and name not in running:
            quietly(net.destroy)
            removed.append(name)
    return removed


def sweep_transient_at(uri: str, owner_alive: Callable[[Path], bool]) -> list[str]:
    """`sweep_transient` on a fresh connection to `uri` (for `p2v clean`)."""
    conn = connect(uri)
    try:
        with _verify_lock():
            return sweep_transient(conn, owner_alive)
    finally:
        quietly(conn.close)

