"""Linux distro families: how each one rebuilds its initramfs and regenerates its grub config.

The families differ only in attributes (paths, argv templates), looked up from a table of
libguestfs distro names; the fixing logic itself lives in p2v.fix.linux.plan and is the
same for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

# The modules a guest needs to find its disk and its NIC on virtio (and what they depend on;
# initramfs tools resolve dependencies themselves, listing them too does no harm).
VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")
# What must be in the initramfs (or built into the kernel) for the root disk on virtio-blk.
VIRTIO_BOOT_MODULES = ("virtio_pci", "virtio_blk")
# Kernel config symbols of the same drivers (=y: built in, no initramfs needed).
VIRTIO_CONFIG = {"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_blk": "CONFIG_VIRTIO_BLK",
                 "virtio_scsi": "CONFIG_SCSI_VIRTIO", "virtio_net": "CONFIG_VIRTIO_NET"}


@dataclass(frozen=True)
class LinuxFamily:
    """One distro family's tools and paths. `{kver}` / `{initrd}` / `{modules}` are filled in.

    initramfs_modules_file: a file whose lines (or a config line) make every future rebuild
    keep the virtio drivers too, so a later kernel update does not lose them.
    """

    name: str
    initramfs_tool: str
    initrd_paths: tuple[str, ...]                  # candidates, first existing wins
    rebuild_argv: tuple[str, ...]
    list_argv: tuple[str, ...]
    modules_file: str
    modules_file_line: str                         # one line per module, or one config line
    grub_mkconfig: tuple[tuple[str, ...], ...]     # argv candidates, first whose tool exists
    grub_cfg_paths: tuple[str, ...]

    def initrd_candidates(self, kver: str) -> list[str]:
        return [p.format(kver=kver) for p in self.initrd_paths]

    def rebuild(self, kver: str, initrd: str) -> list[str]:
        modules = " ".join(VIRTIO_MODULES)
        return [a.format(kver=kver, initrd=initrd, modules=modules) for a in self.rebuild_argv]

    def list_initrd(self, initrd: str) -> list[str]:
        return [a.format(initrd=initrd) for a in self.list_argv]

    def modules_config(self, current: str) -> str:
        """The modules file with the virtio drivers added (unchanged when all are there)."""
        if self.modules_file_line == "{module}":
            have = {line.split("#", 1)[0].strip().split(" ")[0] for line in current.splitlines()}
            missing = [m for m in VIRTIO_MODULES if m not in have]
            if not missing:
                return current
            text = current if current.endswith("\n") or not current else current + "\n"
            text += "# added by p2v fix: virtio drivers for the virtual machine\n"
            return text + "".join(f"{m}\n" for m in missing)
        line = self.modules_file_line.format(modules=" ".join(VIRTIO_MODULES))
        if line in current:
            return current
        return (current + "\n" if current and not current.endswith("\n") else current) + \
            "# added by p2v fix: virtio drivers for the virtual machine\n" + line + "\n"


DEBIAN = LinuxFamily(
    name="debian",
    initramfs_tool="update-initramfs",
    initrd_paths=("/boot/initrd.img-{kver}",),
    rebuild_argv=("update-initramfs", "-u", "-k", "{kver}"),
    list_argv=("lsinitramfs", "{initrd}"),
    modules_file="/etc/initramfs-tools/modules",
    modules_file_line="{module}",
    grub_mkconfig=(("update-grub",), ("grub-mkconfig", "-o", "/boot/grub/grub.cfg")),
    grub_cfg_paths=("/boot/grub/grub.cfg",),
)

RHEL = LinuxFamily(
    name="rhel",
    initramfs_tool="dracut",
    initrd_paths=("/boot/initramfs-{kver}.img",),
    rebuild_argv=("dracut", "-f", "--add-drivers", "{modules}", "{initrd}", "{kver}"),
    list_argv=("lsinitrd", "{initrd}"),
    modules_file="/etc/dracut.conf.d/p2v-virtio.conf",
    modules_file_line='add_drivers+=" {modules} "',
    grub_mkconfig=(("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"),),
    grub_cfg_paths=("/boot/grub2/grub.cfg",),
)

# SUSE: RHEL's dracut and grub2 tooling; only the initrd's name differs.
SUSE = replace(RHEL, name="suse", initrd_paths=("/boot/initrd-{kver}",))

# Debian or Ubuntu with the dracut package instead of initramfs-tools (they conflict):
# dracut's tooling, Debian's initrd name and grub tools.
DEBIAN_DRACUT = replace(
    RHEL,
    name="debian-dracut",
    initrd_paths=DEBIAN.initrd_paths,
    grub_mkconfig=DEBIAN.grub_mkconfig,
    grub_cfg_paths=DEBIAN.grub_cfg_paths,
)

# Old SUSE (SLES 11 and before) has mkinitrd, not dracut.
SUSE_MKINITRD = LinuxFamily(
    name="suse-mkinitrd",
    initramfs_tool="mkinitrd",
    initrd_paths=("/boot/initrd-{kver}",),
    rebuild_argv=("mkinitrd", "-k", "/boot/vmlinuz-{kver}", "-i", "{initrd}", "-m", "{modules}"),
    list_argv=("sh", "-c", "zcat {initrd} | cpio -t"),
    modules_file="/etc/sysconfig/kernel",
    modules_file_line='INITRD_MODULES="$INITRD_MODULES {modules}"',
    grub_mkconfig=(),
    grub_cfg_paths=("/boot/grub/menu.lst",),
)

# libguestfs's inspect_get_distro names -> family.
FAMILIES: dict[str, LinuxFamily] = {
    "debian": DEBIAN, "ubuntu": DEBIAN, "linuxmint": DEBIAN, "kalilinux": DEBIAN,
    "rhel": RHEL, "centos": RHEL, "fedora": RHEL, "rocky": RHEL, "almalinux": RHEL,
    "oraclelinux": RHEL, "scientificlinux": RHEL, "circle": RHEL, "redhat-based": RHEL,
    "sles": SUSE, "opensuse": SUSE, "suse-based": SUSE,
}


def family_named(name: str | None) -> LinuxFamily | None:
    """A family by its name (as GuestReport.family records it)."""
    every = {f.name: f for f in (*FAMILIES.values(), SUSE_MKINITRD, DEBIAN_DRACUT)}
    return every.get(name or "")


def family_for(distro: str, major_version: int = 0, has_dracut: bool = True,
               has_initramfs_tools: bool = True) -> LinuxFamily | None:
    """The family of a libguestfs distro name, or None when p2v does not know it.

    The distro gives the family; the tools the guest actually has decide between its
    variants: a Debian with dracut and no initramfs-tools rebuilds with dracut, an old
    SUSE (or one without dracut) with mkinitrd.
    """
    family = FAMILIES.get(distro)
    if family is SUSE and (not has_dracut or (distro == "sles" and 0 < major_version < 12)):
        return SUSE_MKINITRD
    if family is DEBIAN and has_dracut and not has_initramfs_tools:
        return DEBIAN_DRACUT
    return family


def has_virtio(listing: str, builtin: set[str]) -> dict[str, bool]:
    """Which virtio modules an initramfs listing (one path a line) holds, or the kernel has."""
    names = set()
    for line in listing.splitlines():
        base = line.strip().rsplit("/", 1)[-1]
        for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
            if base.endswith(suffix):
                names.add(base[: -len(suffix)].replace("-", "_"))
    return {m: (m in names or m in builtin) for m in VIRTIO_MODULES}


def builtin_modules(kernel_config: str) -> set[str]:
    """The virtio drivers a kernel has built in (=y in /boot/config-KVER)."""
    found = set()
    for module, symbol in VIRTIO_CONFIG.items():
        if f"\n{symbol}=y" in "\n" + kernel_config:
            found.add(module)
    return found


SERIAL_ARGS = ("console=tty0", "console=ttyS0,115200n8")
_CMDLINE = re.compile(r"^GRUB_CMDLINE_LINUX=([\"']?)(.*?)\1[ \t]*$", re.MULTILINE)
_TERMINAL = re.compile(r"^GRUB_TERMINAL(?:_OUTPUT)?=([\"']?)(.*?)\1[ \t]*$", re.MULTILINE)


def add_serial_console(grub_default: str) -> tuple[str, list[str]]:
    """/etc/default/grub with a serial console on ttyS0 for the kernel and for grub itself.

    A VM's serial port is where `virsh console` and a boot log go; physical servers rarely
    had one. Nothing changes when a ttyS console is already configured.
    """
    text = grub_default if not grub_default or grub_default.endswith("\n") \
        else grub_default + "\n"
    changes: list[str] = []
    match = _CMDLINE.search(text)
    if match is None:
        text += f'GRUB_CMDLINE_LINUX="{" ".join(SERIAL_ARGS)}"\n'
        changes.append(f"GRUB_CMDLINE_LINUX: {' '.join(SERIAL_ARGS)}")
    elif "console=ttyS" not in match.group(2):
        args = " ".join(a for a in (match.group(2).strip(), *SERIAL_ARGS) if a)
        text = text[:match.start()] + f'GRUB_CMDLINE_LINUX="{args}"' + text[match.end():]
        changes.append(f"GRUB_CMDLINE_LINUX += {' '.join(SERIAL_ARGS)}")
    terminals = list(_TERMINAL.finditer(text))
    if not terminals:
        text += 'GRUB_TERMINAL="console serial"\n'
        changes.append("GRUB_TERMINAL=console serial")
    for term in reversed(terminals):
        if "serial" not in term.group(2).split():
            key = term.group(0).split("=", 1)[0]
            value = " ".join([*term.group(2).split(), "serial"])
            text = text[:term.start()] + f'{key}="{value}"' + text[term.end():]
            changes.append(f"{key}={value}")
    if changes and not re.search(r"^GRUB_SERIAL_COMMAND=", text, re.MULTILINE):
        text += 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
    return text, changes


ISSUE_FILE = "/etc/issue.d/p2v-addresses.issue"


def address_issue(nic_names: Sequence[str]) -> str:
    """An agetty issue snippet: the login prompt on the console shows each NIC's IPv4 address.

    agetty (util-linux 2.35+) reads /etc/issue.d/*.issue and expands \\4{NIC} when it draws
    the prompt, and again when the address changes; older gettys ignore the directory.
    """
    if not nic_names:
        return "p2v: IPv4 address \\4\n"
    return "".join(f"p2v: {name} \\4{{{name}}}\n" for name in nic_names)


def selinux_policy(config: str) -> tuple[str, str]:
    """(mode, policy type) from /etc/selinux/config: ("enforcing", "targeted"), ...

    A missing or unreadable setting counts as disabled: nothing to relabel.
    """
    values = {}
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            values[key.strip()] = value.strip().strip("\"'")
    mode = values.get("SELINUX", "disabled").lower()
    return (mode if mode in ("enforcing", "permissive") else "disabled",
            values.get("SELINUXTYPE", "targeted"))
