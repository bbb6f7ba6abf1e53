"""`p2v register --replace` and private images against a real libvirtd: the input is never
deleted, a define libvirt refuses leaves the old guest and its disk, and qemu reaches an
image in p2v's 0700 dirs (no guest boots: an empty disk idles in the firmware)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from libvirt_env import Libvirtd, open_conn, qcow2

from p2v.cli import main
from p2v.errors import ExitCode
from p2v.secure import private_dir


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_with(path: Path, seed: bytes) -> Path:
    """A qcow2 whose first MiB is `seed` over and over: another seed, another disk."""
    qcow2(path, "16M")
    subprocess.run(["qemu-io", "-c", f"write -P {seed[0]} 0 1M", str(path)], check=True,
                   capture_output=True)
    return path


def domain(name: str) -> ET.Element:
    conn = open_conn()
    try:
        return ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()


def volumes(pool: str) -> dict[str, str]:
    conn = open_conn()
    try:
        p = conn.storagePoolLookupByName(pool)
        p.refresh(0)
        return {v: p.storageVolLookupByName(v).path() for v in p.listVolumes()}
    finally:
        conn.close()


def test_replace_whose_input_is_the_old_volume_keeps_it(
    libvirtd: Libvirtd, isolated_network: str, storage_pool: str, guest_dir: Path,
    guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-selfreplace"
    guest_names.append(name)
    base = ["register", "--name", name, "--network", isolated_network, "--pool", storage_pool]
    code, out, err = run([*base, str(image_with(guest_dir / "a.qcow2", b"A")), "--json"], capsys)
    assert code == 0, err
    (disk,) = json.loads(out)["disks"]
    before = sha(disk)
    # The admin re-registers the guest from the disk it already has (a new --memory).
    code, out, err = run([*base, disk, "--replace", "--memory", "768", "--json"], capsys)
    assert code == 0, err
    assert Path(disk).is_file() and sha(disk) == before
    assert json.loads(out)["disks"] == [disk]
    assert domain(name).findtext("memory") == str(768 * 1024)
    assert sorted(volumes(storage_pool)) == [f"{name}-disk0.qcow2"]


def test_replace_whose_define_libvirt_refuses_keeps_the_old_guest_and_its_disk(
    libvirtd: Libvirtd, isolated_network: str, storage_pool: str, guest_dir: Path,
    guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    name = "p2vtest-keepold"
    guest_names.append(name)
    base = ["register", "--name", name, "--network", isolated_network, "--pool", storage_pool]
    old_image = image_with(guest_dir / "old.qcow2", b"O")
    code, out, err = run([*base, str(old_image), "--vcpus", "2", "--json"], capsys)
    assert code == 0, err
    uuid = json.loads(out)["uuid"]
    (disk,) = json.loads(out)["disks"]
    # A new image, and a definition libvirt refuses for real (more vCPUs than any machine).
    new_image = image_with(guest_dir / "new.qcow2", b"N")
    code, _out, err = run([*base, str(new_image), "--replace", "--vcpus", "5000",
                           "--output-dir", str(guest_dir / "kept")], capsys)
    assert code == ExitCode.FAILURE and f"libvirt refused to define '{name}'" in err, err
    root = domain(name)
    assert root.findtext("uuid") == uuid and root.findtext("vcpu") == "2"
    assert sha(disk) == sha(old_image)              # the old guest's disk, untouched
    assert sorted(volumes(storage_pool)) == [f"{name}-disk0.qcow2"]   # no staged leftover
    # The same replace with a definition libvirt takes: the new disk is in place.
    code, out, err = run([*base, str(new_image), "--replace", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["uuid"] == uuid and json.loads(out)["disks"] == [disk]
    assert sha(disk) == sha(new_image)
    assert sorted(volumes(storage_pool)) == [f"{name}-disk0.qcow2"]


def test_output_local_replace_whose_input_is_the_old_copy_keeps_it(
    guest_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = guest_dir / "local"
    argv = ["register", "--name", "p2vtest-local", "--output", "local", "--output-dir",
            str(out_dir)]
    code, _out, err = run([*argv, str(image_with(guest_dir / "a.qcow2", b"L"))], capsys)
    assert code == 0, err
    copy = out_dir / "p2vtest-local-disk0.qcow2"
    before = sha(copy)
    code, _out, err = run([*argv, str(copy), "--replace", "--memory", "256"], capsys)
    assert code == 0, err
    assert copy.is_file() and sha(copy) == before
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "p2vtest-local-disk0.qcow2", "p2vtest-local.xml"]


def test_an_image_in_private_dirs_is_reachable_by_qemu_and_nobody_else(
    libvirtd: Libvirtd, isolated_network: str, guest_dir: Path, guest_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A work dir as p2v makes it (0700 all the way, image 0600): register --start runs."""
    name = "p2vtest-private"
    guest_names.append(name)
    work = private_dir(guest_dir / "state" / "jobs" / name)
    image = qcow2(work / f"{name}-sda.qcow2")
    os.chmod(image, 0o600)
    code, out, err = run(["register", "--name", name, str(image), "--network",
                          isolated_network, "--memory", "128", "--start"], capsys)
    assert code == 0, err
    assert "started" in out
    qemu = grp.getgrnam("libvirt-qemu").gr_gid
    for directory in (guest_dir / "state", guest_dir / "state" / "jobs", work):
        st = directory.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, qemu), directory
    # A rerun's private_dir keeps that one bit (the guest must still start later).
    private_dir(work)
    assert stat.S_IMODE(work.stat().st_mode) == 0o710


def test_replace_over_a_remote_uri_clones_the_staged_volume_into_place(
    libvirtd: Libvirtd, ssh_uri: str, isolated_network: str, storage_pool: str,
    guest_dir: Path, guest_names: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """qemu+ssh:// (no rename there): the old volume goes only after the define, and the
    staged one is cloned to its name, then removed."""
    name = "p2vtest-remote-replace"
    guest_names.append(name)
    base = ["register", "--name", name, "--connect", ssh_uri, "--network", isolated_network,
            "--pool", storage_pool, "--json"]
    code, out, err = run([*base, str(image_with(guest_dir / "a.qcow2", b"R"))], capsys)
    assert code == 0, err
    (disk,) = json.loads(out)["disks"]
    new_image = image_with(guest_dir / "b.qcow2", b"S")
    code, out, err = run([*base, str(new_image), "--replace"], capsys)
    assert code == 0, err
    assert json.loads(out)["disks"] == [disk]
    # libvirt's clone of a qcow2 is `qemu-img convert`: the same disk, not the same bytes.
    assert subprocess.run(["qemu-img", "compare", "-q", str(new_image), disk]).returncode == 0
    assert sorted(volumes(storage_pool)) == [f"{name}-disk0.qcow2"]
