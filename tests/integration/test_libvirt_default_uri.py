"""Without --connect, p2v registers where virsh would: $LIBVIRT_DEFAULT_URI, against a real
libvirtd (the same daemon reached by another spelling of its URI, and a dead one)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from libvirt_env import DEAD_URI, Libvirtd, open_conn, qcow2

from p2v.cli import main

MAC = "52:54:00:7e:58:01"
# The test libvirtd's own socket, named in the URI: a URI no default would produce.
SOCKET_URI = "qemu:///system?socket=/run/libvirt/libvirt-sock"


def _inventory(path: Path) -> Path:
    path.write_text(json.dumps({"hostname": "web01", "memory_mib": 256,
                                "nics": [{"name": "eth0", "mac": MAC}]}))
    return path


def test_register_goes_where_libvirt_default_uri_points_and_takes_in_colon_out(
    libvirtd: Libvirtd, isolated_network: str, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "p2vtest-defaulturi"
    guest_names.append(name)
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", SOCKET_URI)
    code = main(["register", "--name", name, str(qcow2(guest_dir / "u.qcow2")),
                 "--inventory", str(_inventory(guest_dir / "u-inv.json")),
                 "--network", f"eth0:{isolated_network}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"libvirt: {SOCKET_URI} ($LIBVIRT_DEFAULT_URI)" in err.splitlines(), err
    assert SOCKET_URI in out, out               # the report names where the guest went
    conn = open_conn(SOCKET_URI)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()
    nics = [(i.get("type"), i.find("mac").get("address"),  # type: ignore[union-attr]
             i.find("source").get("network"))  # type: ignore[union-attr]
            for i in root.iter("interface")]
    assert nics == [("network", MAC, isolated_network)]


def test_a_libvirt_default_uri_that_does_not_answer_is_named_in_the_error(
    libvirtd: Libvirtd, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    guest_names.append("p2vtest-deaduri")       # removed should the env be ignored
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", DEAD_URI)
    code = main(["register", "--name", "p2vtest-deaduri", str(qcow2(guest_dir / "d.qcow2")),
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"p2v: error: cannot connect to libvirt at {DEAD_URI}: "), line
