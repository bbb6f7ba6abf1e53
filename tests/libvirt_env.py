"""A real libvirtd for the register tests, and the networks, bridge, pool and guests they use.

The daemon itself is p2v.demo.libvirtd.Libvirtd (shared with `p2v demo`).

Imported by tests/integration/conftest.py and tests/e2e/conftest.py (the root conftest is
shared, so these fixtures live here). One libvirtd serves the whole session: when one already
answers at qemu:///system it is used and left running; otherwise virtlogd and libvirtd are
started in the foreground by the test run and stopped by their pids at the end, unless
another test run on this host still uses them (Libvirtd(shared=True): its users lock).
Everything a test creates (guests, the isolated network, the bridge, the pool, image dirs) is
removed even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from p2v import runner
from p2v.demo.libvirtd import Libvirtd

URI = "qemu:///system"
# Per test process: several test sessions may share one libvirtd on this host, and one's
# teardown must not destroy the network another's guests are attached to.
_ID = os.getpid() % 100000
NETWORK = f"p2vtest-isolated-{_ID}"
NETWORK_BRIDGE = f"virbr-p2vt{_ID}"       # at most 15 characters
BRIDGE = f"br-p2vt{_ID}"
POOL = f"p2vtest-pool-{_ID}"
# A URI whose daemon never answers: what "libvirtd not reachable" looks like.
DEAD_URI = "qemu:///system?socket=/nonexistent/p2v-test/libvirt-sock"


def open_conn(uri: str = URI):  # type: ignore[no-untyped-def]
    import libvirt

    return libvirt.open(uri)


def boot_checks(guest: str | None = None) -> dict[str, str]:
    """The boot check's transient domains running now: name -> XML; with `guest`, only the
    checks of that guest (another test run on this host may be running checks of its own)."""
    import libvirt

    from p2v.target.transient import PREFIX, checked_domain

    conn = open_conn()
    found = {}
    try:
        for dom in conn.listAllDomains():
            try:
                if dom.name().startswith(PREFIX):
                    found[dom.name()] = dom.XMLDesc(0)
            except libvirt.libvirtError:
                pass            # destroyed between the listing and the read
    finally:
        conn.close()
    if guest is None:
        return found
    return {name: xml for name, xml in found.items() if checked_domain(xml) == guest}


def remove_domain(conn, name: str) -> None:  # type: ignore[no-untyped-def]
    """Destroy and undefine a guest (with its NVRAM) if it exists."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                          | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    for log in (f"{name}-serial0.log", f"{name}.log"):
        Path("/var/log/libvirt/qemu", log).unlink(missing_ok=True)


# ---------------------------------------------------------------- session resources
# tests/integration and tests/e2e each import these fixtures into their conftest, so pytest
# sees two session fixtures of each name. Both must get the same daemon, network and bridge:
# the resources live here, counted, and the last user tears them down.
_shared: dict[str, tuple[Any, ExitStack, int]] = {}


@contextmanager
def _shared_resource(key: str, make: Callable[[ExitStack], Any]) -> Iterator[Any]:
    if key in _shared:
        value, stack, users = _shared[key]
        _shared[key] = (value, stack, users + 1)
    else:
        stack = ExitStack()
        try:
            value = make(stack)
        except BaseException:
            stack.close()
            raise
        _shared[key] = (value, stack, 1)
    try:
        yield value
    finally:
        value, stack, users = _shared[key]
        if users == 1:
            del _shared[key]
            stack.close()
        else:
            _shared[key] = (value, stack, users - 1)


def _make_libvirtd(stack: ExitStack) -> Libvirtd:
    # shared: a second test run on this host (make test beside make test-slow) uses the
    # daemon this one may start, and must keep it when this run ends or is killed.
    daemon = Libvirtd(shared=True)
    daemon.start()
    stack.callback(daemon.stop)
    return daemon


def _destroy_quietly(net: Any) -> None:
    """Another test session on this host may have replaced the network already."""
    try:
        net.destroy()
    except Exception:  # noqa: BLE001 - gone is what we want
        pass


def _make_network(stack: ExitStack) -> str:
    conn = open_conn(URI)
    stack.callback(conn.close)
    try:
        conn.networkLookupByName(NETWORK).destroy()
    except Exception:  # noqa: BLE001 - leftover of a killed run, or none
        pass
    net = conn.networkCreateXML(
        f"<network><name>{NETWORK}</name><bridge name='{NETWORK_BRIDGE}' stp='off'/>"
        "</network>")
    stack.callback(_destroy_quietly, net)
    return NETWORK


def _make_bridge(stack: ExitStack) -> str:
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        runner.run(["ip", "link", "del", BRIDGE])
    runner.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    stack.callback(runner.run, ["ip", "link", "del", BRIDGE], check=False)
    runner.run(["ip", "link", "set", BRIDGE, "up"])
    return BRIDGE


def _make_ssh_uri(stack: ExitStack) -> str:
    from loop_sources import SshServer

    workdir = Path(tempfile.mkdtemp(prefix="p2v-ssh-uri-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    ep = stack.enter_context(SshServer([]))
    wrapper = workdir / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes"
        f" -o UserKnownHostsFile={ep.known_hosts} -o GlobalKnownHostsFile=/dev/null"
        " -o IdentitiesOnly=yes -o IdentityAgent=none \"$@\"\n")
    wrapper.chmod(0o755)
    return (f"qemu+ssh://{ep.user}@{ep.host}:{ep.port}/system"
            f"?keyfile={ep.key}&command={wrapper}&no_tty=1")


# ---------------------------------------------------------------- pytest fixtures
@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    """A libvirtd answering at qemu:///system for the whole session."""
    with _shared_resource("libvirtd", _make_libvirtd) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def isolated_network(libvirtd: Libvirtd) -> Iterator[str]:
    """A transient libvirt network with no forward, no address and no DHCP."""
    with _shared_resource("network", _make_network) as name:
        yield name


@pytest.fixture(scope="session")
def host_bridge() -> Iterator[str]:
    """A host bridge with no ports and no address (`ip link add ... type bridge`)."""
    with _shared_resource("bridge", _make_bridge) as name:
        yield name


@pytest.fixture(scope="session")
def ssh_uri(libvirtd: Libvirtd) -> Iterator[str]:
    """qemu+ssh:// to this host's libvirtd through a loopback sshd with throwaway keys.

    libvirt runs the `command=` of the URI as its ssh client: a wrapper that checks the test
    sshd's real host key strictly and keeps the user's ssh configuration out.
    """
    with _shared_resource("ssh_uri", _make_ssh_uri) as uri:
        yield uri


@pytest.fixture
def guest_dir() -> Iterator[Path]:
    """A directory qemu (running as libvirt-qemu) can reach: /var/tmp, mode 0755."""
    path = Path(tempfile.mkdtemp(prefix="p2v-register-test-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def storage_pool(libvirtd: Libvirtd, guest_dir: Path) -> Iterator[str]:
    """A transient directory storage pool inside guest_dir."""
    conn = open_conn(libvirtd.uri)
    target = guest_dir / "pool"
    target.mkdir()
    target.chmod(0o755)
    try:
        try:
            conn.storagePoolLookupByName(POOL).destroy()
        except Exception:  # noqa: BLE001 - leftover of a killed run, or none
            pass
        pool = conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{POOL}</name><target><path>{target}</path></target>"
            "</pool>", 0)
        try:
            yield POOL
        finally:
            pool.destroy()
    finally:
        conn.close()


@pytest.fixture
def guest_names(libvirtd: Libvirtd) -> Iterator[list[str]]:
    """Names of the guests a test registers: destroyed and undefined afterwards, always."""
    names: list[str] = []
    yield names
    conn = open_conn(libvirtd.uri)
    try:
        for name in names:
            remove_domain(conn, name)
    finally:
        conn.close()


def qcow2(path: Path, size: str = "64M", backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "raw", "-b", str(backing)]
    runner.run([*argv, str(path), *([] if backing is not None else [size])])
    return path

