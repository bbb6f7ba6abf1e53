"""The inventory parsers over outputs recorded from the live fixtures, and degraded sources."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from schema_check import assert_valid

from p2v.errors import UsageError
from p2v.model import INVENTORY_SCHEMA, Inventory, SourceDisk, SourceInventory, SourceNic
from p2v.source.inventory import (
    build_inventory,
    format_inventory,
    parse_cpuinfo,
    parse_ip_addr,
    parse_mdstat,
    parse_meminfo_mib,
    parse_proc_addresses,
    split_sections,
)

DATA = Path(__file__).parent / "data"
GiB = 1 << 30
MiB = 1 << 20


def recorded(variant: str) -> str:
    """The collection script's output on the running fixture (tests/unit/source/data)."""
    return (DATA / f"{variant}-live.txt").read_text()


def without(output: str, *names: str) -> str:
    """The output as a source lacking those tools would give it: sections empty, rc 127."""
    for name in names:
        output = re.sub(rf"(@@p2v {re.escape(name)}@@\n).*?\n@@p2v-rc \d+@@",
                        r"\1\n@@p2v-rc 127@@", output, flags=re.S)
    return output


def test_uefi_fixture_lvm_esp_nic() -> None:
    inv = build_inventory(recorded("uefi"))
    assert (inv.hostname, inv.firmware, inv.boot_disk) == ("p2v-uefi", "uefi", "sda")
    assert (inv.os.id, inv.os.version_id, inv.os.kernel, inv.os.arch) == (
        "debian", "12", "6.1.0-56-amd64", "x86_64")
    assert inv.memory_mib == 1024 and inv.cpu is not None and inv.cpu.logical == 1
    (disk,) = inv.disks
    assert (disk.name, disk.path, disk.size_bytes, disk.table, disk.boot) == (
        "sda", "/dev/sda", 2 * GiB, "gpt", True)
    assert (disk.model, disk.serial, disk.transport) == ("QEMU HARDDISK", "QM00013", "sata")
    assert [(p.name, p.number, p.content) for p in disk.partitions] == [
        ("sda1", 1, "vfat"), ("sda2", 2, "ext4"), ("sda3", 3, "LVM2_member")]
    esp = disk.partitions[0]
    assert esp.type == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    assert (esp.start_bytes, esp.size_bytes) == (1 * MiB, 128 * MiB)
    fs = {f.device: f for f in inv.filesystems}
    assert fs["sda1"].mountpoint == "/boot/efi" and fs["sda2"].mountpoint == "/boot"
    assert fs["dm-0"].type == "ext4" and fs["dm-0"].mountpoint == "/"
    assert fs["dm-0"].path == "/dev/mapper/vg0-root"
    assert fs["dm-1"].type == "swap" and fs["dm-1"].mountpoint == "[SWAP]"
    assert fs["dm-0"].used_bytes == 739060 * 1024
    assert [(lv.vg, lv.name, lv.device) for lv in inv.lvm.lvs] == [
        ("vg0", "root", "dm-0"), ("vg0", "swap", "dm-1")]
    assert [(pv.device, pv.vg) for pv in inv.lvm.pvs] == [("sda3", "vg0")]
    assert [(vg.name, vg.pvs) for vg in inv.lvm.vgs] == [("vg0", ("sda3",))]
    assert {d.kind for d in inv.dm} == {"lvm"}
    (nic,) = inv.nics
    assert (nic.name, nic.mac, nic.driver, nic.state) == (
        "enp0s25", "52:54:00:ef:10:01", "e1000e", "up")
    assert "10.0.2.15/24" in nic.addresses
    assert inv.unknown == ()


def test_copy_estimate_skips_free_ext4_blocks_and_swap() -> None:
    inv = build_inventory(recorded("uefi"))
    fs = {f.device: f for f in inv.filesystems}
    (disk,) = inv.disks
    swap_lv = next(lv for lv in inv.lvm.lvs if lv.name == "swap")
    assert fs["sda2"].free_bytes is not None and fs["dm-0"].free_bytes is not None
    skipped = fs["sda2"].free_bytes + fs["dm-0"].free_bytes + (swap_lv.size_bytes or 0)
    # vfat (the ESP) is not skipped: only ext2/3/4, xfs and swap are.
    assert disk.copy_bytes_estimate == 2 * GiB - skipped
    assert inv.copy_bytes_estimate == disk.copy_bytes_estimate


def test_bios_fixture_mbr_ext4_swap_eth0() -> None:
    inv = build_inventory(recorded("bios"))
    assert (inv.hostname, inv.firmware, inv.boot_disk) == ("p2v-bios", "bios", "sda")
    (disk,) = inv.disks
    assert disk.table == "dos"
    assert [(p.name, p.type, p.content) for p in disk.partitions] == [
        ("sda1", "0x83", "ext4"), ("sda2", "0x82", "swap")]
    assert inv.lvm.lvs == () and inv.lvm.pvs == ()
    (nic,) = inv.nics
    assert (nic.name, nic.mac) == ("eth0", "52:54:00:b1:05:01")
    assert nic.addresses[0] == "10.0.2.15/24"
    root = next(f for f in inv.filesystems if f.mountpoint == "/")
    swap = disk.partitions[1].size_bytes or 0
    assert disk.copy_bytes_estimate == 2 * GiB - (root.free_bytes or 0) - swap


def test_json_is_a_superset_register_reads() -> None:
    inv = build_inventory(recorded("uefi"))
    data = json.loads(inv.to_json())
    assert data["schema"] == INVENTORY_SCHEMA
    register_view = SourceInventory.from_json(inv.to_json())
    assert register_view.hostname == "p2v-uefi" and register_view.firmware == "uefi"
    assert register_view.memory_mib == 1024
    assert register_view.nics == (SourceNic("enp0s25", "52:54:00:ef:10:01"),)
    assert register_view.disks == (SourceDisk("sda", boot=True),)
    assert register_view.cpu is not None and register_view.cpu.vcpus == 1


def test_inventory_json_round_trip() -> None:
    for variant in ("bios", "uefi"):
        inv = build_inventory(recorded(variant))
        assert Inventory.from_json(inv.to_json()) == inv


def test_wrong_schema_is_refused() -> None:
    with pytest.raises(UsageError, match="schema"):
        Inventory.from_json('{"schema": "p2v.inventory/99"}')


def test_without_lsblk_ip_and_lvm_tools_the_essentials_remain() -> None:
    """sh, coreutils, util-linux minus lsblk, /proc and /sys: still disks, LVM, NIC."""
    inv = build_inventory(without(recorded("uefi"), "lsblk", "ipaddr", "pvs", "vgs", "lvs"))
    assert_valid(inv.to_dict(), "inventory")
    (disk,) = inv.disks
    assert disk.serial == "QM00013"           # from the t10 wwid in sysfs
    assert (disk.wwid or "").split() == ["t10.ATA", "QEMU", "HARDDISK", "QM00013"]
    assert disk.model == "QEMU HARDDISK"
    assert disk.table is None and disk.transport is None
    assert [p.content for p in disk.partitions] == ["vfat", "ext4", "LVM2_member"]
    assert [(lv.vg, lv.name) for lv in inv.lvm.lvs] == [("vg0", "root"), ("vg0", "swap")]
    assert inv.lvm.vgs[0].size_bytes == disk.partitions[2].size_bytes
    assert inv.lvm.pvs[0].free_bytes is None
    (nic,) = inv.nics
    assert nic.addresses[0] == "10.0.2.15/24"  # from /proc/net/fib_trie + route
    assert "fe80::5054:ff:feef:1001/64" in nic.addresses
    assert any("lsblk" in note for note in inv.unknown)
    assert any("lvm" in note for note in inv.unknown)


def test_nothing_but_a_hostname_degrades_to_unknown() -> None:
    inv = build_inventory("\n@@p2v hostname@@\nlonely\n@@p2v-rc 0@@\n")
    assert inv.hostname == "lonely"
    assert inv.disks == () and inv.nics == () and inv.cpu is None and inv.firmware is None
    assert inv.copy_bytes_estimate == 0
    assert any("disks" in n for n in inv.unknown)
    format_inventory(inv)   # renders with every value unknown


def test_cut_off_output_is_noted() -> None:
    text = recorded("bios")
    inv = build_inventory(text[: text.index("@@p2v sysnet@@") + 40])
    assert inv.hostname == "p2v-bios" and len(inv.disks) == 1
    assert any("cut off" in n and "sysnet" in n for n in inv.unknown)


def test_garbage_does_not_crash() -> None:
    inv = build_inventory("@@p2v sysblock@@\nsda\tsize\tbanana\n\x00\xff\n@@p2v-rc 0@@\n"
                          "@@p2v cpuinfo@@\nprocessor: x\n@@p2v-rc 0@@\n@@p2v df@@\n/ a b c\n")
    assert inv.disks == ()


def test_sections_keep_exit_codes() -> None:
    sections = split_sections("\n@@p2v a@@\nx\ny\n@@p2v-rc 0@@\n@@p2v b@@\n\n@@p2v-rc 127@@\n")
    assert sections["a"].text == "x\ny" and sections["a"].ok
    assert sections["b"].rc == 127 and not sections["b"].ok


def test_cpuinfo_two_sockets_with_hyperthreads() -> None:
    blocks = []
    for cpu in range(16):
        socket, core, thread = cpu // 8, (cpu % 8) // 2, cpu % 2
        blocks.append(f"processor\t: {cpu}\nmodel name\t: Xeon E5-2620\nphysical id\t: "
                      f"{socket}\nsiblings\t: 8\ncore id\t\t: {core}\ncpu cores\t: 4\n"
                      f"# thread {thread}\n")
    cpu_info = parse_cpuinfo("\n".join(blocks))
    assert cpu_info is not None
    assert (cpu_info.sockets, cpu_info.cores, cpu_info.threads) == (2, 4, 2)
    assert cpu_info.logical == 16 and cpu_info.model == "Xeon E5-2620"
    # No topology fields (some ARM and old kernels): a flat count.
    flat = parse_cpuinfo("processor : 0\n\nprocessor : 1\n\nprocessor : 2\n")
    assert flat is not None and (flat.sockets, flat.cores, flat.threads) == (1, 3, 1)


def test_meminfo_rounds_up_to_installed_ram() -> None:
    assert parse_meminfo_mib("MemTotal:       16323048 kB\n") == 16000
    assert parse_meminfo_mib("MemTotal:         975588 kB\n") == 1024
    assert parse_meminfo_mib("nothing") is None


def test_mdstat_raid1() -> None:
    text = ("Personalities : [raid1]\nmd0 : active raid1 sdb1[1] sda1[0]\n"
            "      1047552 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n")
    assert parse_mdstat(text) == {"md0": ("raid1", ("sdb1", "sda1"))}


def test_md_mirror_members_each_skip_the_arrays_free_space() -> None:
    """Two disks, md0 = raid1 of sda1+sdb1 holding ext4 /: each disk sends the used part."""
    size = 2097152   # sectors: 1 GiB
    out = (
        "\n@@p2v sysblock@@\n"
        f"sda\tdev\t8:0\nsda\tsize\t{size + 2048}\nsda\tpart:dev\tsda1 8:1\n"
        f"sda\tpart:partition\tsda1 1\nsda\tpart:start\tsda1 2048\nsda\tpart:size\tsda1 {size}\n"
        f"sdb\tdev\t8:16\nsdb\tsize\t{size + 2048}\nsdb\tpart:dev\tsdb1 8:17\n"
        f"sdb\tpart:partition\tsdb1 1\nsdb\tpart:start\tsdb1 2048\nsdb\tpart:size\tsdb1 {size}\n"
        f"md0\tdev\t9:0\nmd0\tsize\t{size - 2048}\nmd0\tmd/level\traid1\n"
        "md0\tslave\tsda1\nmd0\tslave\tsdb1\n@@p2v-rc 0@@\n"
        "@@p2v blkid@@\nDEVNAME=/dev/md0\nTYPE=ext4\n\nDEVNAME=/dev/sda1\n"
        "TYPE=linux_raid_member\n\nDEVNAME=/dev/sdb1\nTYPE=linux_raid_member\n@@p2v-rc 0@@\n"
        "@@p2v mountinfo@@\n20 1 9:0 / / rw - ext4 /dev/md0 rw\n@@p2v-rc 0@@\n"
        "@@p2v df@@\nFilesystem 1024-blocks Used Available Capacity Mounted on\n"
        "/dev/md0 1000000 200000 800000 20% /\n@@p2v-rc 0@@\n"
    )
    inv = build_inventory(out)
    assert_valid(inv.to_dict(), "inventory")
    assert [(m.name, m.level, m.devices) for m in inv.md] == [("md0", "raid1", ("sda1", "sdb1"))]
    assert [d.name for d in inv.disks] == ["sda", "sdb"]
    assert inv.boot_disk == "sda"
    free = 800000 * 1024
    for disk in inv.disks:
        assert disk.copy_bytes_estimate == (size + 2048) * 512 - free


def test_ip_addr_and_proc_fallback_agree() -> None:
    sections = split_sections(recorded("bios"))
    from_ip = parse_ip_addr(sections["ipaddr"].text)
    from_proc = parse_proc_addresses(sections["fib_trie"].text, sections["route"].text,
                                     sections["if_inet6"].text)
    assert sorted(from_ip["eth0"]) == sorted(from_proc["eth0"])
    assert "127.0.0.1/8" in from_proc["lo"]


def test_human_table_names_the_essentials() -> None:
    text = "\n".join(format_inventory(build_inventory(recorded("uefi"))))
    for expected in ("p2v-uefi", "firmware uefi", "/dev/sda", "[boot]", "vg0/root",
                     "vfat /boot/efi", "enp0s25", "52:54:00:ef:10:01", "10.0.2.15/24"):
        assert expected in text
