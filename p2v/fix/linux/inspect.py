"""Look at a Linux guest before changing it: OS, kernels and their virtio support, boot,
disks, NICs.

Everything here only reads (the session may be read-only); the result, `GuestReport`, is
what `p2v fix` prints before it plans anything and what `--dry-run` stops at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from p2v.errors import GuestfsError, UnsupportedGuest
from p2v.fix.inspect import has_esp
from p2v.fix.linux import distro, network
from p2v.fix.linux.agents import Agent, find_agents
from p2v.fix.linux.devices import DeviceMap, DiskLayout, FsIdentity, MdContent
from p2v.fix.session import GuestSession

# Where grub configs live, per bootloader flavour (first existing wins).
GRUB2_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
GRUB_LEGACY_CFGS = ("/boot/grub/menu.lst", "/boot/grub/grub.conf")


@dataclass(frozen=True)
class KernelInfo:
    version: str
    initrd: str | None
    virtio: dict[str, bool]        # module -> in the initramfs (or built in)
    builtin: tuple[str, ...]       # virtio drivers built into the kernel
    available: tuple[str, ...]     # virtio drivers the kernel has at all (module or built in)

    @property
    def boots_on_virtio(self) -> bool:
        return all(self.virtio.get(m, False) for m in distro.VIRTIO_BOOT_MODULES)

    @property
    def can_get_virtio(self) -> bool:
        return all(m in self.available for m in distro.VIRTIO_BOOT_MODULES)


@dataclass(frozen=True)
class FsInfo:
    device: str                    # as the appliance names it (/dev/sda1, /dev/vg0/root)
    type: str | None
    uuid: str | None
    label: str | None
    mountpoint: str | None


@dataclass
class GuestReport:
    """What the guest is, as `p2v fix` found it."""

    root: str
    os_type: str
    distro: str
    version: str
    product: str
    family: str | None
    firmware: str                                 # bios or uefi
    bootloader: str                               # grub2, grub-legacy, none found
    grub_cfg: str | None
    kernels: list[KernelInfo] = field(default_factory=list)
    filesystems: list[FsInfo] = field(default_factory=list)
    mounts: dict[str, str] = field(default_factory=dict)
    nic_names: list[str] = field(default_factory=list)    # names its network config uses
    nic_pins: dict[str, str] = field(default_factory=dict)  # persistent-net name -> MAC
    has_systemd_udev: bool = False
    esp_loaders: list[str] = field(default_factory=list)  # \EFI\...\*.efi on the ESP
    disks: int = 0
    mapper_names: list[str] = field(default_factory=list)
    package_format: str = "unknown"                       # deb, rpm, ...
    selinux: tuple[str, str] = ("disabled", "targeted")   # mode, policy type
    agents: list[Agent] = field(default_factory=list)     # other platforms' agents

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kernels"] = [dict(asdict(k), boots_on_virtio=k.boots_on_virtio)
                           for k in self.kernels]
        return data


def _blkid(session: GuestSession, device: str) -> dict[str, str]:
    try:
        return session.blkid(device)
    except GuestfsError:
        return {}


def device_map(session: GuestSession, source_names: list[str] | None = None) -> DeviceMap:
    """The guest's disks (appliance order = source order) with their partitions' identities."""
    layouts = []
    for index, disk in enumerate(session.list_devices()):
        parts: dict[int, FsIdentity] = {}
        for part in session.list_partitions():
            if session.part_to_dev(part) != disk:
                continue
            info = _blkid(session, part)
            number = session.part_to_partnum(part)
            parts[number] = FsIdentity(info.get("UUID"), info.get("LABEL"), info.get("TYPE"))
        whole = None
        if not parts:
            info = _blkid(session, disk)
            if info.get("TYPE"):
                whole = FsIdentity(info.get("UUID"), info.get("LABEL"), info.get("TYPE"))
        name = source_names[index] if source_names and index < len(source_names) else None
        layouts.append(DiskLayout(name, parts, whole))
    return DeviceMap(layouts, arrays=_md_contents(session))


def _md_contents(session: GuestSession) -> list[MdContent]:
    """Each md array the appliance assembled: its UUID and what is on it (an LVM PV...)."""
    arrays = []
    try:
        names = session.list_md_devices()
    except GuestfsError:
        return []
    for md in names:
        try:
            uuid = session.md_detail(md).get("uuid", "")
        except GuestfsError:
            continue
        info = _blkid(session, md)
        content = FsIdentity(info.get("UUID"), info.get("LABEL"), info.get("TYPE")) \
            if info.get("TYPE") else None
        if uuid:
            arrays.append(MdContent(uuid, md, content))
    return arrays


def _kernels(session: GuestSession, family: distro.LinuxFamily | None) -> list[KernelInfo]:
    moddir = next((d for d in ("/lib/modules", "/usr/lib/modules") if session.is_dir(d)), None)
    if moddir is None:
        return []
    kernels = []
    for kver in sorted(session.ls(moddir)):
        if not session.exists(f"/boot/vmlinuz-{kver}"):
            continue   # modules left behind by a removed kernel: cannot boot
        config = f"/boot/config-{kver}"
        builtin = (distro.builtin_modules(session.read_text(config)) if session.is_file(config)
                   else set())
        available = set(builtin)
        for path in session.find(f"{moddir}/{kver}/kernel/drivers"):
            base = path.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")
            if base in distro.VIRTIO_MODULES:
                available.add(base)
        initrd = None
        virtio = {m: m in builtin for m in distro.VIRTIO_MODULES}
        if family is not None:
            initrd = next((p for p in family.initrd_candidates(kver) if session.is_file(p)), None)
            if initrd is not None:
                listing = "\n".join(session.command_lines(family.list_initrd(initrd)))
                virtio = distro.has_virtio(listing, builtin)
        kernels.append(KernelInfo(kver, initrd, virtio, tuple(sorted(builtin)),
                                  tuple(sorted(available))))
    return kernels


def _firmware(session: GuestSession, mounts: dict[str, str]) -> tuple[str, list[str]]:
    """uefi when the guest mounts an ESP holding an EFI loader, else bios."""
    loaders: list[str] = []
    if "/boot/efi" in mounts and session.is_dir("/boot/efi/EFI"):
        for path in session.find("/boot/efi/EFI"):
            if path.lower().endswith(".efi"):
                loaders.append("\\EFI\\" + path.lstrip("/").replace("/", "\\"))
    if loaders or has_esp(session):
        return "uefi", loaders
    return "bios", loaders


def _pretty_name(session: GuestSession) -> str | None:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if session.is_file(path):
            for line in session.read_text(path).splitlines():
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip("\"'")
    return None


def inspect_guest(session: GuestSession, source_names: list[str] | None = None) -> GuestReport:
    """Inspect the guest and mount it read-only; raise UnsupportedGuest for what p2v fix
    cannot handle."""
    root = session.inspect()
    os_type = session.inspect_get_type(root)
    name = session.inspect_get_distro(root)
    if os_type != "linux":
        raise UnsupportedGuest(what=f"{os_type} {name}",
                               detail="only Linux and Windows guests are converted so far")
    major, minor = session.inspect_get_version(root)
    mounts = session.inspect_get_mountpoints(root)
    session.mount_guest(root, readonly=True)
    family = _family(session, name, major)
    firmware, loaders = _firmware(session, mounts)
    bootloader, grub_cfg = _bootloader(session)
    nic_names, nic_pins, udevd = _network(session)
    return GuestReport(
        package_format=session.inspect_get_package_format(root),
        agents=find_agents(_packages(session, root)), selinux=_selinux(session),
        root=root, os_type=os_type, distro=name, version=f"{major}.{minor}",
        product=_pretty_name(session) or session.inspect_get_product_name(root),
        family=family.name if family else None, firmware=firmware, bootloader=bootloader,
        grub_cfg=grub_cfg, kernels=_kernels(session, family),
        filesystems=_filesystems(session, mounts), mounts=mounts,
        nic_names=nic_names, nic_pins=nic_pins, has_systemd_udev=udevd,
        esp_loaders=loaders, disks=len(session.list_devices()),
        mapper_names=_mapper_names(session),
    )


def _family(session: GuestSession, name: str, major: int) -> distro.LinuxFamily | None:
    """The distro family, told apart by the initramfs tool the guest has."""
    has_dracut = (session.exists("/usr/bin/dracut") or session.exists("/sbin/dracut")
                  or session.exists("/usr/sbin/dracut"))
    # initramfs-tools' own scripts dir (initramfs-tools-core): gone when dracut replaced it.
    has_initramfs_tools = (session.is_dir("/usr/share/initramfs-tools")
                           and (session.exists("/usr/sbin/mkinitramfs")
                                or session.exists("/sbin/mkinitramfs")))
    return distro.family_for(name, major, has_dracut, has_initramfs_tools)


def _bootloader(session: GuestSession) -> tuple[str, str | None]:
    """(grub2, grub-legacy or none found; its config)."""
    grub_cfg = next((p for p in GRUB2_CFGS if session.is_file(p)), None)
    if grub_cfg:
        return "grub2", grub_cfg
    grub_cfg = next((p for p in GRUB_LEGACY_CFGS if session.is_file(p)), None)
    return ("grub-legacy" if grub_cfg else "none found"), grub_cfg


def _filesystems(session: GuestSession, mounts: dict[str, str]) -> list[FsInfo]:
    """The guest's filesystems (not LVM PVs, md members and the like), with their UUIDs."""
    filesystems = []
    for device, fstype in sorted(session.list_filesystems().items()):
        if fstype in ("unknown", "") or fstype.startswith("LVM2") or fstype.endswith("_member"):
            continue
        info = _blkid(session, device)
        mountpoint = next((m for m, d in mounts.items() if d == device), None)
        filesystems.append(FsInfo(device, fstype, info.get("UUID"), info.get("LABEL"),
                                  mountpoint))
    return filesystems


def _network(session: GuestSession) -> tuple[list[str], dict[str, str], bool]:
    """The NIC names the network config uses, those udev rules pin (name -> MAC), and
    whether udev is systemd's (reads .link files)."""
    interfaces = session.read_text("/etc/network/interfaces") \
        if session.is_file("/etc/network/interfaces") else ""
    ifcfg = tuple(session.read_text(p)
                  for p in session.glob_expand("/etc/sysconfig/network-scripts/ifcfg-*"))
    netplan = tuple(session.read_text(p) for p in session.glob_expand("/etc/netplan/*.yaml"))
    rules = session.read_text(network.RULES_FILE) if session.is_file(network.RULES_FILE) else ""
    udevd = any(session.exists(p) for p in ("/lib/systemd/systemd-udevd",
                                            "/usr/lib/systemd/systemd-udevd"))
    return (network.configured_names(interfaces, ifcfg, netplan), network.rules_names(rules),
            udevd)


def _mapper_names(session: GuestSession) -> list[str]:
    """The device-mapper names of the guest's LVs (vg--name-lv--name)."""
    try:
        return [f"{lv.split('/')[-2].replace('-', '--')}-{lv.split('/')[-1].replace('-', '--')}"
                for lv in session.lvs()]
    except GuestfsError:
        return []


def _packages(session: GuestSession, root: str) -> list[str]:
    try:
        return session.application_names(root)
    except GuestfsError:
        return []


def _selinux(session: GuestSession) -> tuple[str, str]:
    if session.is_file("/etc/selinux/config"):
        return distro.selinux_policy(session.read_text("/etc/selinux/config"))
    return ("disabled", "targeted")
