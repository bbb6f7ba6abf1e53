"""`p2v register` against a real libvirtd: define, read back, refuse, upload; no guest boots here.

The images are small empty qcow2 files: what is checked is what libvirt stores, not a boot
(that is tests/e2e/test_register_boot.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from libvirt_env import DEAD_URI, URI, Libvirtd, open_conn, qcow2
from schema_check import assert_valid

from p2v.cli import main

MACS = ("52:54:00:7e:57:01", "52:54:00:7e:57:02")


def inventory(path: Path, **extra: object) -> Path:
    data = {
        "hostname": "web01", "memory_mib": 512, "cpu": {"sockets": 1, "cores": 2, "threads": 1},
        "nics": [{"name": "eth0", "mac": MACS[0]}, {"name": "eth1", "mac": MACS[1]}],
    }
    data.update(extra)
    path.write_text(json.dumps(data))
    return path


def caps(path: Path, **values: str) -> Path:
    path.write_text(json.dumps(values))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def xml_of(name: str) -> ET.Element:
    conn = open_conn()
    try:
        return ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()


def defined(name: str) -> bool:
    """Whether libvirt knows the domain, running or not: one lookup by name (listing ids
    and then looking each up raced a run beside this one whose boot check ended between)."""
    conn = open_conn()
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise
    finally:
        conn.close()


def test_register_defines_a_guest_that_reads_back_as_built(
    libvirtd: Libvirtd, isolated_network: str, host_bridge: str, guest_dir: Path,
    guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-readback"
    guest_names.append(name)
    disks = [qcow2(guest_dir / "a.qcow2"), qcow2(guest_dir / "b.qcow2")]
    code, out, err = run([
        "register", "--name", name, *map(str, disks),
        "--inventory", str(inventory(guest_dir / "inv.json")),
        "--caps", str(caps(guest_dir / "caps.json", disk_bus="virtio", nic_model="virtio")),
        "--network", f"eth0={isolated_network}", "--bridge", f"{MACS[1]}={host_bridge}",
        "--vcpus", "2", "--json",
    ], capsys)
    assert code == 0, err
    result = assert_valid(json.loads(out), "report/domain")
    assert result["name"] == name and result["output"] == "libvirt" and not result["started"]
    root = xml_of(name)
    assert root.get("type") == ("kvm" if result["domain_type"] == "kvm" else "qemu")
    assert root.findtext("uuid") == result["uuid"]
    assert root.findtext("memory") == str(512 * 1024)          # libvirt stores KiB
    assert root.findtext("vcpu") == "2"
    topo = root.find("cpu/topology")
    assert topo is not None and (topo.get("sockets"), topo.get("cores")) == ("1", "2")
    assert root.find("os/type").get("machine").startswith("pc-q35")  # type: ignore[union-attr]
    seen_disks = [(d.find("source").get("file"), d.find("target").get("dev"),  # type: ignore[union-attr]
                   d.find("target").get("bus")) for d in root.iter("disk")]  # type: ignore[union-attr]
    assert seen_disks == [(str(disks[0]), "vda", "virtio"), (str(disks[1]), "vdb", "virtio")]
    nics = [(i.get("type"), i.find("mac").get("address"),  # type: ignore[union-attr]
             i.find("source").get("network") or i.find("source").get("bridge"))  # type: ignore[union-attr]
            for i in root.iter("interface")]
    assert nics == [("network", MACS[0], isolated_network), ("bridge", MACS[1], host_bridge)]
    devices = root.find("devices")
    assert devices is not None
    assert devices.find("serial/log").get("file") == (  # type: ignore[union-attr]
        f"/var/log/libvirt/qemu/{name}-serial0.log")
    assert devices.find("channel/target").get("name") == "org.qemu.guest_agent.0"  # type: ignore[union-attr]
    assert devices.find("graphics").get("type") == "vnc"  # type: ignore[union-attr]
    assert devices.find("rng").get("model") == "virtio"  # type: ignore[union-attr]


def test_name_collision_is_refused_and_replace_keeps_the_uuid(
    libvirtd: Libvirtd, isolated_network: str, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-collide"
    guest_names.append(name)
    disk = str(qcow2(guest_dir / "a.qcow2"))
    argv = ["register", "--name", name, disk, "--network", isolated_network, "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    first = json.loads(out)["uuid"]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"p2v: error: a domain named '{name}' already exists at {URI}; "
        "choose another --name or pass --replace"]
    code, out, err = run([*argv, "--replace", "--memory", "768"], capsys)
    assert code == 0, err
    assert json.loads(out)["uuid"] == first
    assert xml_of(name).findtext("memory") == str(768 * 1024)


def test_bad_network_is_refused_before_anything_is_defined_or_uploaded(
    libvirtd: Libvirtd, isolated_network: str, storage_pool: str, guest_dir: Path,
    guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-badnet"
    guest_names.append(name)
    code, _out, err = run([
        "register", "--name", name, str(qcow2(guest_dir / "a.qcow2")),
        "--inventory", str(inventory(guest_dir / "inv.json")),
        "--network", "eth0=no-such-net", "--bridge", "eth1=no-such-br", "--pool", storage_pool,
    ], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "nothing was defined" in line
    assert "network 'no-such-net' does not exist" in line and isolated_network in line
    assert "bridge 'no-such-br' does not exist" in line
    assert not defined(name)
    conn = open_conn()
    try:
        assert conn.storagePoolLookupByName(storage_pool).listVolumes() == []
    finally:
        conn.close()


def test_unknown_source_nic_in_a_mapping_is_refused(
    libvirtd: Libvirtd, guest_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, _out, err = run([
        "register", "--name", "p2vtest-nonic", str(qcow2(guest_dir / "a.qcow2")),
        "--inventory", str(inventory(guest_dir / "inv.json")), "--network", "eth7=x",
    ], capsys)
    assert code == 2
    assert "no NIC named or with MAC 'eth7'" in err and "eth0 (52:54:00:7e:57:01)" in err
    assert not defined("p2vtest-nonic")


def test_unreachable_libvirtd_is_one_line_naming_the_uri(
    guest_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["register", "--name", "p2vtest-dead", str(qcow2(guest_dir / "a.qcow2")),
                          "--connect", DEAD_URI], capsys)
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"p2v: error: cannot connect to libvirt at {DEAD_URI}: ")


def test_define_refused_by_libvirt_keeps_the_xml_and_says_how_to_define_it(
    libvirtd: Libvirtd, isolated_network: str, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-refused"
    guest_names.append(name)
    keep = guest_dir / "kept"
    # More vCPUs than any machine type allows: every p2v check passes, libvirt says no.
    code, _out, err = run([
        "register", "--name", name, str(qcow2(guest_dir / "a.qcow2")), "--network",
        isolated_network, "--vcpus", "5000", "--output-dir", str(keep),
    ], capsys)
    assert code == 1, err
    (line,) = err.strip().splitlines()[-1:]
    xml = keep / f"{name}.xml"
    assert f"libvirt refused to define '{name}'" in line
    assert f"virsh -c {URI} define {xml}" in line
    assert ET.parse(xml).getroot().findtext("name") == name
    assert not defined(name)


def test_a_define_refused_after_the_upload_leaves_nothing_in_the_pool(
    libvirtd: Libvirtd, isolated_network: str, storage_pool: str, guest_dir: Path,
    guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-refused-pool"
    guest_names.append(name)
    code, _out, err = run([
        "register", "--name", name, str(qcow2(guest_dir / "a.qcow2")),
        str(qcow2(guest_dir / "b.qcow2")), "--network", isolated_network, "--vcpus", "5000",
        "--pool", storage_pool, "--output-dir", str(guest_dir / "kept"),
    ], capsys)
    assert code == 1 and f"libvirt refused to define '{name}'" in err, err
    assert not defined(name)
    conn = open_conn()
    try:
        pool = conn.storagePoolLookupByName(storage_pool)
        pool.refresh(0)
        assert [v for v in pool.listVolumes() if v.startswith(name)] == []
    finally:
        conn.close()


def test_uefi_guest_gets_ovmf_and_its_own_nvram_seeded_from_the_source(
    libvirtd: Libvirtd, isolated_network: str, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-uefi"
    guest_names.append(name)
    seed = guest_dir / "source_VARS.fd"
    seed.write_bytes(Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()[:-1] + b"\x01")
    code, out, err = run([
        "register", "--name", name, str(qcow2(guest_dir / "a.qcow2")), "--network",
        isolated_network, "--caps", str(caps(guest_dir / "c.json", firmware="uefi")),
        "--nvram", str(seed), "--json",
    ], capsys)
    assert code == 0, err
    root = xml_of(name)
    loader, nvram = root.find("os/loader"), root.find("os/nvram")
    assert loader is not None and loader.text == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert nvram is not None and nvram.text == f"/var/lib/libvirt/qemu/nvram/{name}_VARS.fd"
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    assert Path(nvram.text).read_bytes() == seed.read_bytes()
    assert json.loads(out)["nvram"] == nvram.text


def test_pool_upload_places_the_images_in_the_pool(
    libvirtd: Libvirtd, isolated_network: str, storage_pool: str, guest_dir: Path,
    guest_names: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2v")
    name = "p2vtest-pool"
    guest_names.append(name)
    raw = guest_dir / "data.raw"
    with raw.open("wb") as f:                  # data, a hole, data: the sparse path too
        f.write(os.urandom(3 << 20))
        f.seek(40 << 20)
        f.write(os.urandom(1 << 20) + b"end")
    boot = guest_dir / "boot.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(boot)], check=True)
    code, out, err = run([
        "register", "--name", name, str(boot), str(raw), "--network", isolated_network,
        "--pool", storage_pool, "--json",
    ], capsys)
    assert code == 0, err
    assert f"uploading data.raw to {storage_pool}/{name}-disk1.raw: 100%" in caplog.text
    conn = open_conn()
    try:
        pool = conn.storagePoolLookupByName(storage_pool)
        pool.refresh(0)
        assert sorted(pool.listVolumes()) == [f"{name}-disk0.qcow2", f"{name}-disk1.raw"]
        paths = [pool.storageVolLookupByName(v).path()
                 for v in (f"{name}-disk0.qcow2", f"{name}-disk1.raw")]
    finally:
        conn.close()
    for src, dst in zip((boot, raw), paths, strict=True):
        assert hashlib.sha256(Path(dst).read_bytes()).digest() == \
            hashlib.sha256(src.read_bytes()).digest()
    assert Path(paths[1]).stat().st_blocks * 512 < 20 << 20   # the hole stayed a hole
    disks = list(xml_of(name).iter("disk"))
    assert [d.get("type") for d in disks] == ["volume", "volume"]
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "raw"]  # type: ignore[union-attr]
    assert json.loads(out)["disks"] == paths


def test_output_local_needs_no_libvirt_at_all(guest_dir: Path) -> None:
    """With the binding unimportable and the URI dead, --output local still writes everything."""
    disk = qcow2(guest_dir / "a.qcow2")
    out_dir = guest_dir / "out"
    inv = inventory(guest_dir / "inv.json")
    script = (
        "import sys; sys.modules['libvirt'] = None\n"
        "from p2v.cli import main\n"
        f"code = main(['register', '--name', 'p2vtest-local', '{disk}', '--inventory', '{inv}',"
        f" '--output', 'local', '--output-dir', '{out_dir}', '--connect', '{DEAD_URI}',"
        " '--bridge', 'eth1=br-nowhere', '--json'])\n"
        "assert 'libvirt' not in sys.modules or sys.modules['libvirt'] is None\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "P2V_ACCEL": "tcg"}, check=False)
    assert proc.returncode == 0, proc.stderr
    result = assert_valid(json.loads(proc.stdout), "report/domain")
    xml = out_dir / "p2vtest-local.xml"
    assert result["xml"] == str(xml)
    copied = out_dir / "p2vtest-local-disk0.qcow2"
    assert copied.read_bytes() == disk.read_bytes()
    root = ET.parse(xml).getroot()
    assert root.find("devices/disk/source").get("file") == str(copied)  # type: ignore[union-attr]
    macs = [m.get("address") for m in root.iter("mac")]
    assert macs == list(MACS)
    check = subprocess.run(["virt-xml-validate", str(xml), "domain"], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stderr
    # The same name again is refused without --replace.
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, "P2V_ACCEL": "tcg"}, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_libvirt_binding_errors_never_reach_stderr_twice(
    libvirtd: Libvirtd, capsys: pytest.CaptureFixture[str],
) -> None:
    """libvirt's default handler prints every error; p2v silences it and reports once."""
    from p2v.target.libvirt import connect

    conn = connect(URI)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName("p2vtest-no-such-domain")
    finally:
        conn.close()
    assert capsys.readouterr().err == ""


def test_remote_uri_uploads_into_the_pool_and_defines_there(
    libvirtd: Libvirtd, ssh_uri: str, isolated_network: str, storage_pool: str,
    guest_dir: Path, guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """qemu+ssh:// to a loopback sshd: the images travel through the storage API stream."""
    name = "p2vtest-remote"
    guest_names.append(name)
    disk = guest_dir / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", str(disk)], check=True,
                   capture_output=True)
    argv = ["register", "--name", name, str(disk), "--connect", ssh_uri,
            "--inventory", str(inventory(guest_dir / "inv.json")),
            "--network", isolated_network,
            "--caps", str(caps(guest_dir / "c.json", firmware="uefi")), "--json"]
    code, _out, err = run(argv, capsys)
    assert code == 2 and "is a remote host: give --pool NAME" in err
    assert not defined(name)
    code, out, err = run([*argv, "--pool", storage_pool], capsys)
    assert code == 0, err
    result = assert_valid(json.loads(out), "report/domain")
    assert result["uri"] == ssh_uri
    root = xml_of(name)
    (source,) = root.iterfind("devices/disk/source")
    assert source.attrib == {"pool": storage_pool, "volume": f"{name}-disk0.qcow2"}
    loader = root.find("os/loader")
    assert loader is not None and "OVMF_CODE" in (loader.text or "")
    (path,) = result["disks"]
    assert Path(path).read_bytes() == disk.read_bytes()


def test_replace_refuses_a_running_guest(
    libvirtd: Libvirtd, isolated_network: str, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-running"
    guest_names.append(name)
    argv = ["register", "--name", name, str(qcow2(guest_dir / "a.qcow2")), "--network",
            isolated_network, "--memory", "128"]
    code, out, err = run([*argv, "--start"], capsys)   # an empty disk: it idles in firmware
    assert code == 0, err
    assert "started" in out
    code, _out, err = run([*argv, "--replace"], capsys)
    assert code == 2
    assert f"domain '{name}' is running; shut it down before --replace" in err


def test_start_failure_leaves_the_guest_defined_and_says_how_to_start_it(
    libvirtd: Libvirtd, isolated_network: str, tmp_path: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An image whose backing file is gone: libvirt defines the guest, qemu cannot open it.

    (This used an image under a 0700 dir; register now lets qemu's group through those.)
    """
    name = "p2vtest-nostart"
    guest_names.append(name)
    base = qcow2(tmp_path / "base.raw")
    image = qcow2(tmp_path / "a.qcow2", backing=base)
    base.unlink()
    code, _out, err = run(["register", "--name", name, str(image),
                           "--network", isolated_network, "--memory", "128", "--start"], capsys)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert f"p2v: error: domain '{name}' is defined but did not start: " in line
    assert f"start it with `virsh -c {URI} start {name}`" in line
    assert defined(name)
