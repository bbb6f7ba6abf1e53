"""Distro family table, initramfs listings, NIC pinning text (pure)."""

from __future__ import annotations

import pytest

from p2v.fix.linux import distro as linux
from p2v.fix.linux import network
from p2v.fix.linux.network import NicPin


@pytest.mark.parametrize(("distro", "major", "dracut", "family"), [
    ("debian", 12, False, "debian"),
    ("debian", 12, True, "debian"),      # dracut installed beside initramfs-tools: not its tool
    ("ubuntu", 22, False, "debian"),
    ("rhel", 8, True, "rhel"),
    ("centos", 7, True, "rhel"),
    ("rocky", 9, True, "rhel"),
    ("fedora", 39, True, "rhel"),
    ("sles", 15, True, "suse"),
    ("opensuse", 15, True, "suse"),
    ("sles", 11, False, "suse-mkinitrd"),
    ("sles", 11, True, "suse-mkinitrd"),
])
def test_family_table(distro: str, major: int, dracut: bool, family: str) -> None:
    found = linux.family_for(distro, major, dracut)
    assert found is not None and found.name == family
    assert linux.family_named(family) is found


@pytest.mark.parametrize("distro", ["debian", "ubuntu"])
def test_debian_with_dracut_instead_of_initramfs_tools_rebuilds_with_dracut(distro: str) -> None:
    found = linux.family_for(distro, 12, has_dracut=True, has_initramfs_tools=False)
    assert found is linux.DEBIAN_DRACUT
    assert linux.family_named("debian-dracut") is found
    kver = "6.1.0-9-amd64"
    initrd = found.initrd_candidates(kver)[0]
    assert initrd == "/boot/initrd.img-" + kver            # Debian's name, not dracut's
    assert found.rebuild(kver, initrd) == [
        "dracut", "-f", "--add-drivers", "virtio_pci virtio_blk virtio_scsi virtio_net",
        initrd, kver]
    assert found.list_initrd(initrd) == ["lsinitrd", initrd]
    assert found.grub_mkconfig[0] == ("update-grub",)
    assert found.modules_file.startswith("/etc/dracut.conf.d/")
    # Neither tool found: keep the distro's own (p2v reports the rebuild failing).
    assert linux.family_for(distro, 12, has_dracut=False, has_initramfs_tools=False) \
        is linux.DEBIAN


def test_unknown_distro_has_no_family() -> None:
    assert linux.family_for("gentoo") is None
    assert linux.family_named(None) is None


def test_families_differ_only_in_attributes() -> None:
    kver = "6.1.0-9-amd64"
    assert linux.DEBIAN.rebuild(kver, "/boot/initrd.img-" + kver) == [
        "update-initramfs", "-u", "-k", kver]
    assert linux.DEBIAN.initrd_candidates(kver) == ["/boot/initrd.img-" + kver]
    assert linux.RHEL.rebuild("5.14.0", "/boot/initramfs-5.14.0.img") == [
        "dracut", "-f", "--add-drivers", "virtio_pci virtio_blk virtio_scsi virtio_net",
        "/boot/initramfs-5.14.0.img", "5.14.0"]
    assert linux.RHEL.list_initrd("/boot/x.img") == ["lsinitrd", "/boot/x.img"]
    assert linux.SUSE.initrd_candidates("5.14") == ["/boot/initrd-5.14"]
    assert linux.SUSE_MKINITRD.rebuild("3.0", "/boot/initrd-3.0")[:2] == ["mkinitrd", "-k"]
    assert linux.RHEL.grub_mkconfig[0] == ("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg")
    assert linux.DEBIAN.grub_mkconfig[0] == ("update-grub",)


def test_debian_modules_file_gets_missing_modules_once() -> None:
    current = "# List of modules\nahci\nsd_mod\nvirtio_blk  # already\n"
    new = linux.DEBIAN.modules_config(current)
    assert new.startswith(current)
    added = new[len(current):].splitlines()
    assert added[0].startswith("# added by p2v fix")
    assert added[1:] == ["virtio_pci", "virtio_scsi", "virtio_net"]
    assert linux.DEBIAN.modules_config(new) == new
    assert linux.DEBIAN.modules_config("ahci").startswith("ahci\n")


def test_dracut_config_line_once() -> None:
    new = linux.RHEL.modules_config("")
    assert 'add_drivers+=" virtio_pci virtio_blk virtio_scsi virtio_net "' in new
    assert linux.RHEL.modules_config(new) == new


def test_has_virtio_from_listing_and_builtin() -> None:
    listing = "\n".join([
        "usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko",
        "usr/lib/modules/6.1/kernel/drivers/virtio/virtio_pci.ko.xz",
        "usr/lib/modules/6.1/kernel/drivers/ata/ahci.ko",
        "usr/lib/modules/6.1/kernel/drivers/virtio",
    ])
    assert linux.has_virtio(listing, set()) == {
        "virtio_pci": True, "virtio_blk": True, "virtio_scsi": False, "virtio_net": False}
    assert linux.has_virtio("", {"virtio_net"})["virtio_net"] is True


def test_builtin_modules_from_kernel_config() -> None:
    config = "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\n# CONFIG_VIRTIO_NET is not set\n"
    assert linux.builtin_modules(config) == {"virtio_pci"}


def test_link_file() -> None:
    pin = NicPin("eth0", "52:54:00:b1:05:01")
    assert network.link_path("eth0") == "/etc/systemd/network/10-p2v-eth0.link"
    text = network.link_text(pin)
    assert "[Match]\nMACAddress=52:54:00:b1:05:01\n" in text
    assert text.endswith("[Link]\nName=eth0\n")


RULES = """\
# PCI device (e1000e)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:b1:05:01", ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:11:22:33:44:55", ATTR{type}=="1", KERNEL=="eth*", NAME="eth1"
"""  # noqa: E501


def test_rules_names() -> None:
    assert network.rules_names(RULES) == {"eth0": "52:54:00:b1:05:01",
                                          "eth1": "00:11:22:33:44:55"}


def test_rules_consistent_with_pins() -> None:
    same, changes = network.update_rules(RULES, [NicPin("eth0", "52:54:00:b1:05:01")])
    assert same == RULES and changes == []
    moved, changes = network.update_rules(RULES, [NicPin("eth0", "52:54:00:00:00:09")])
    assert 'ATTR{address}=="52:54:00:00:00:09"' in moved and 'NAME="eth0"' in moved
    assert changes == [f"{network.RULES_FILE}: eth0 now matches 52:54:00:00:00:09 "
                       "(was 52:54:00:b1:05:01)"]
    # A rule giving a pinned MAC another name would fight the pin: disabled.
    swapped, changes = network.update_rules(RULES, [NicPin("lan0", "00:11:22:33:44:55")])
    assert "# disabled by p2v fix: " in swapped and len(changes) == 1
    assert network.update_rules(swapped, [NicPin("lan0", "00:11:22:33:44:55")]) == (swapped, [])


def test_rules_line_for_old_udev() -> None:
    line = network.rules_line(NicPin("eth0", "52:54:00:b1:05:01"))
    assert network.rules_names(line) == {"eth0": "52:54:00:b1:05:01"}


def test_configured_names() -> None:
    interfaces = ("auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet static\n"
                  "allow-hotplug enp0s25\niface eth0:1 inet static\n")
    ifcfg = ('DEVICE="em1"\nBOOTPROTO=static\n',)
    netplan = ("network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n"
               "    eno1:\n      addresses: [10.0.0.2/24]\n",)
    assert network.configured_names(interfaces, ifcfg, netplan) == [
        "eth0", "enp0s25", "em1", "ens3", "eno1"]


@pytest.mark.parametrize(("name", "ok"), [("eth0", True), ("enp0s25", True),
                                          ("a" * 16, False), ("bad/name", False), ("", False)])
def test_valid_name(name: str, ok: bool) -> None:
    assert network.valid_name(name) is ok


def test_serial_console_grub_defaults() -> None:
    text = 'GRUB_CMDLINE_LINUX="quiet"\nGRUB_TERMINAL=gfxterm\n'
    new, changes = linux.add_serial_console(text)
    assert 'GRUB_CMDLINE_LINUX="quiet console=tty0 console=ttyS0,115200n8"' in new
    assert 'GRUB_TERMINAL="gfxterm serial"' in new
    assert 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"' in new
    assert len(changes) == 2
    assert linux.add_serial_console(new) == (new, [])
    already = 'GRUB_CMDLINE_LINUX="console=ttyS1,9600"\nGRUB_TERMINAL="serial console"\n'
    assert linux.add_serial_console(already) == (already, [])


def test_selinux_policy() -> None:
    assert linux.selinux_policy("SELINUX=enforcing\nSELINUXTYPE=targeted\n") == (
        "enforcing", "targeted")
    assert linux.selinux_policy("# SELINUX=enforcing\nSELINUX=permissive\nSELINUXTYPE=mls") == (
        "permissive", "mls")
    assert linux.selinux_policy("SELINUX=disabled\n")[0] == "disabled"
    assert linux.selinux_policy("")[0] == "disabled"


OLD, NEW = "00:1b:21:aa:bb:cc", "52:54:00:12:34:56"


@pytest.mark.parametrize(("text", "want"), [
    ("[Match]\nMACAddress=00:1b:21:aa:bb:cc\n[Network]\nAddress=10.0.0.5/24\n",
     "[Match]\nMACAddress=52:54:00:12:34:56\n[Network]\nAddress=10.0.0.5/24\n"),
    ("[ethernet]\nmac-address=00:1B:21:AA:BB:CC\n", "[ethernet]\nmac-address=52:54:00:12:34:56\n"),
    ("      match:\n        macaddress: 00:1b:21:aa:bb:cc\n",
     "      match:\n        macaddress: 52:54:00:12:34:56\n"),
    ('HWADDR="00-1B-21-AA-BB-CC"\n', 'HWADDR="52-54-00-12-34-56"\n'),
    ("# old NIC 00:1b:21:aa:bb:cc\n", "# old NIC 00:1b:21:aa:bb:cc\n"),
    ("MACAddress=00:1b:21:aa:bb:cd\n", "MACAddress=00:1b:21:aa:bb:cd\n"),   # another NIC
    ("x=00:1b:21:aa:bb:cc:dd:ee\n", "x=00:1b:21:aa:bb:cc:dd:ee\n"),        # not a MAC
])
def test_configs_keyed_by_the_old_mac_follow_the_new_one(text: str, want: str) -> None:
    new_text, changes = network.follow_macs(text, {OLD: NEW}, "f")
    assert new_text == want
    assert bool(changes) == (text != want)
    assert network.follow_macs(new_text, {OLD: NEW}, "f")[1] == []
