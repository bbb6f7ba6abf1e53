"""Rewrite hardware-bound device names in a guest's config files to names that survive the move.

Pure text logic, no libguestfs: a `DeviceMap` knows, for each disk of the guest (source
order), the name it had on the physical machine (sda, nvme0n1, cciss/c0d0 ...), the name it
will have on virtio (vda, vdb ...) and the UUID/LABEL of the filesystem on each partition.
`DeviceMap.resolve` turns one device path into its stable form: `UUID=` (or `LABEL=`) where
the file format accepts it and the filesystem has one, else the virtio name. The per-file
functions (`rewrite_fstab`, `rewrite_crypttab`, `rewrite_kernel_args`, `rewrite_grub_default`,
`rewrite_grub_cfg`, `rewrite_mdadm_conf`, `rewrite_lvm_conf`) return the new text and a list
of what they changed; unchanged text comes back identical, which is what makes a second run
of `p2v fix` a no-op. Beyond kernel names, a disk is known by the source disk's serial and
WWID (`DiskLayout.ids`: /dev/disk/by-id names) and by the multipath maps that were on it
(`DeviceMap.maps`, placed by p2v.fix.linux.multipath: /dev/mapper/mpatha-part1 and its kin).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# A device path p2v knows to be bound to the old hardware or the old bus. Ordered longest
# first where prefixes overlap; the trailing context excludes partial matches (/dev/sda1x).
_DEVICE = re.compile(
    r"/dev/(?:"
    r"disk/by-(?:id|path)/[^\s\"',|;)]+"
    r"|cciss/c\d+d\d+(?:p\d+)?"
    r"|nvme\d+n\d+(?:p\d+)?"
    r"|(?:sd|hd|xvd|vd)[a-z]{1,2}\d*"
    r")(?![\w-])"
)
_LETTERS = re.compile(r"^(sd|hd|xvd|vd)([a-z]{1,2})(\d*)$")
_CCISS = re.compile(r"^cciss/c(\d+)d(\d+)(?:p(\d+))?$")
_NVME = re.compile(r"^nvme(\d+)n(\d+)(?:p(\d+))?$")
_BY_PART = re.compile(r"-part(\d+)$")
# by-id links udev makes for virtual block devices (md arrays, device-mapper maps, LVM PVs):
# they name no hardware, so a move does not change them (multipath maps are DeviceMap's).
_VIRTUAL_BY_ID = re.compile(r"^disk/by-id/(?:md-|dm-|lvm-pv-uuid-)")
# A multipath map's partition as kpartx names it: NAME-part1 (newer), NAMEp1, NAME1 (older).
_MP_PART = r"(?:-part(\d+)|p(\d+)|(?<![0-9])(\d+))?"


def letters_to_index(letters: str) -> int:
    """sda -> 0, sdz -> 25, sdaa -> 26 (the kernel's naming)."""
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def index_to_letters(index: int) -> str:
    letters = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def virtio_name(disk_index: int, partition: int | None = None) -> str:
    """The name disk N (partition P) gets on virtio-blk: /dev/vda, /dev/vdb2 ..."""
    return f"/dev/vd{index_to_letters(disk_index)}{partition or ''}"


@dataclass(frozen=True)
class ParsedDevice:
    """A kernel device name split into its disk and partition number."""

    disk: str                  # sda, hda, xvda, nvme0n1, cciss/c0d0, or by-id/... for links
    partition: int | None      # None: the whole disk
    guess_index: int | None    # the disk's position when nothing better is known


def parse_device(path: str) -> ParsedDevice | None:
    """Split /dev/sdb2, /dev/nvme0n1p1, /dev/cciss/c0d0p1, /dev/disk/by-id/...-part2."""
    if not path.startswith("/dev/"):
        return None
    name = path[len("/dev/"):]
    if m := _LETTERS.match(name):
        part = int(m.group(3)) if m.group(3) else None
        return ParsedDevice(m.group(1) + m.group(2), part, letters_to_index(m.group(2)))
    if m := _CCISS.match(name):
        part = int(m.group(3)) if m.group(3) else None
        return ParsedDevice(f"cciss/c{m.group(1)}d{m.group(2)}", part, int(m.group(2)))
    if m := _NVME.match(name):
        part = int(m.group(3)) if m.group(3) else None
        return ParsedDevice(f"nvme{m.group(1)}n{m.group(2)}", part, int(m.group(1)))
    if name.startswith("disk/by-id/") or name.startswith("disk/by-path/"):
        if _VIRTUAL_BY_ID.match(name):
            return None   # an md array, LV, crypt or multipath map: not a disk's name
        m = _BY_PART.search(name)
        disk = name[: m.start()] if m else name
        return ParsedDevice(disk, int(m.group(1)) if m else None, None)
    return None


@dataclass(frozen=True)
class FsIdentity:
    """What is on one partition: the filesystem's stable identifiers (any may be missing)."""

    uuid: str | None = None
    label: str | None = None
    fstype: str | None = None


@dataclass(frozen=True)
class DiskLayout:
    """One disk of the guest: its old name, and the identity of each partition (1-based)."""

    source_name: str | None = None     # as the physical machine named it (sda, nvme0n1)
    partitions: dict[int, FsIdentity] = field(default_factory=dict)
    whole: FsIdentity | None = None    # a filesystem on the unpartitioned disk
    ids: tuple[str, ...] = ()          # the source disk's serial, WWID (naa.…, eui.…)


@dataclass(frozen=True)
class MdContent:
    """An md array of the guest as the appliance assembled it, and what is on it."""

    uuid: str                          # the array UUID, any form (digits compared)
    device: str                        # the appliance's name for it (/dev/md127)
    content: FsIdentity | None = None  # an LVM PV, a filesystem, ...


@dataclass(frozen=True)
class Resolution:
    old: str
    new: str | None            # None: could not be resolved (reported, left as it is)
    how: str                   # "uuid", "label", "virtio-name", "unresolved"


def id_keys(ident: str) -> set[str]:
    """The forms one disk identifier takes in by-id names and multipath WWIDs, lowercase:
    naa.HEX is also 3HEX (udev's SCSI ID_SERIAL, a multipath WWID) and 0xHEX (wwn-);
    eui.HEX is also 2HEX."""
    value = " ".join(ident.split()).lower()
    keys = {value} if value else set()
    for prefix, code in (("naa.", "3"), ("eui.", "2"), ("0x", "3")):
        if value.startswith(prefix):
            keys |= {value[len(prefix):], code + value[len(prefix):]}
    if re.fullmatch(r"[23][0-9a-f]{15,}", value):
        keys.add(value[1:])            # a WWID as udev/multipath spell it: type digit + hex
    return keys


def by_id_keys(name: str) -> set[str]:
    """What a /dev/disk/by-id name (no -partN) may identify a disk by: wwn-0xHEX,
    scsi-3HEX, nvme-eui.HEX, and the serial that ata-/scsi-SATA_/nvme-/usb- names end in."""
    kind, _, rest = name.removeprefix("disk/by-id/").partition("-")
    keys = id_keys(rest)             # scsi-3HEX: a NAA WWID; wwn-0xHEX; nvme-eui.HEX
    if "_" in rest:
        keys.add(rest.rsplit("_", 1)[1].lower())
    return {k for k in keys if len(k) >= 4}   # a very short tail would match by accident


class DeviceMap:
    """The guest's disks in source order, and how each old device name maps onto them.

    `maps` names the multipath maps the source had (alias or WWID -> the index of the
    disk it was, None when that disk was not converted or is not known): their names
    under /dev/mapper never appear on virtio, so they are hardware-bound here too.
    """

    def __init__(self, disks: Sequence[DiskLayout],
                 maps: dict[str, int | None] | None = None,
                 arrays: Sequence[MdContent] = ()) -> None:
        self.disks = tuple(disks)
        self.maps = dict(maps or {})
        self.arrays = tuple(arrays)
        self._by_name = {d.source_name: i for i, d in enumerate(self.disks) if d.source_name}
        self._by_key: dict[str, set[int]] = {}
        for i, disk in enumerate(self.disks):
            for ident in disk.ids:
                for key in id_keys(ident):
                    self._by_key.setdefault(key, set()).add(i)
        for mp, index in self.maps.items():
            # A map named by its WWID tells which disk a scsi-3…/wwn-0x… name meant.
            if index is not None and re.fullmatch(r"[0-9a-f]{16,}", mp.lower()):
                for key in id_keys(mp):
                    self._by_key.setdefault(key, set()).add(index)
        names = "|".join(re.escape(n) for n in sorted(self.maps, key=len, reverse=True))
        self._mapper = re.compile(rf"/dev/(?:mapper|mpath)/({names}){_MP_PART}(?![\w-])"
                                  if names else r"(?!x)x")
        self.pattern = re.compile(f"{_DEVICE.pattern}|{self._mapper.pattern}")

    def bound(self, path: str) -> bool:
        """Whether a whole word is a device name bound to the old hardware."""
        return self.parse(path) is not None and (
            _DEVICE.fullmatch(path) is not None or self._mapper.fullmatch(path) is not None)

    def parse(self, path: str) -> ParsedDevice | None:
        """parse_device, plus the multipath maps: /dev/mapper/mpatha-part1,
        /dev/disk/by-id/dm-name-mpatha, dm-uuid-mpath-WWID, dm-uuid-part1-mpath-WWID."""
        if m := self._mapper.fullmatch(path):
            part = next((g for g in m.groups()[1:] if g), None)
            return ParsedDevice("mapper/" + m.group(1), int(part) if part else None, None)
        name = path.removeprefix("/dev/disk/by-id/")
        if name != path:
            if m := re.fullmatch(r"dm-uuid-(?:part(\d+)-)?mpath-(\S+)", name):
                wwid = next((w for w in (m.group(2), m.group(2).lower()) if w in self.maps),
                            None)
                if wwid is not None:
                    return ParsedDevice("mapper/" + wwid, int(m.group(1) or 0) or None, None)
            if (m := re.fullmatch(r"dm-name-(\S+?)(?:-part(\d+))?", name)) and \
                    m.group(1) in self.maps:
                return ParsedDevice("mapper/" + m.group(1), int(m.group(2) or 0) or None, None)
        return parse_device(path)

    def disk_index(self, parsed: ParsedDevice) -> int | None:
        if parsed.disk.startswith("mapper/"):
            return self.maps.get(parsed.disk[len("mapper/"):])
        if parsed.disk in self._by_name:
            return self._by_name[parsed.disk]
        if parsed.disk.startswith("disk/by-id/"):
            found = set().union(*(self._by_key.get(k, set())
                                  for k in by_id_keys(parsed.disk)))
            if found:
                return found.pop() if len(found) == 1 else None
            if any(d.ids for d in self.disks):
                return None            # the disks' identities are known and this is none
        if parsed.disk.startswith("disk/by-"):
            # A by-id/by-path name identifies hardware we no longer have; with one disk
            # (and nothing better known) there is no doubt which one it meant.
            return 0 if len(self.disks) == 1 else None
        if self._by_name:
            # The inventory named the source disks and this is none of them: it may be a
            # disk that was not copied. Guessing from the letter could pick the wrong disk.
            return None
        if parsed.guess_index is not None and parsed.guess_index < len(self.disks):
            return parsed.guess_index
        return None

    def identity(self, path: str) -> tuple[int, int | None, FsIdentity | None] | None:
        parsed = self.parse(path)
        if parsed is None:
            return None
        index = self.disk_index(parsed)
        if index is None:
            return None
        disk = self.disks[index]
        fs = disk.partitions.get(parsed.partition) if parsed.partition else disk.whole
        return index, parsed.partition, fs

    def resolve(self, path: str, *, allow_tags: bool = True) -> Resolution:
        """The stable replacement of one hardware-bound path (tags: UUID=/LABEL= allowed)."""
        found = self.identity(path)
        if found is None:
            return Resolution(path, None, "unresolved")
        index, partition, fs = found
        if allow_tags and fs is not None:
            if fs.uuid:
                return Resolution(path, f"UUID={fs.uuid}", "uuid")
            if fs.label and " " not in fs.label:
                return Resolution(path, f"LABEL={fs.label}", "label")
        new = virtio_name(index, partition)
        return Resolution(path, new, "virtio-name")

    def remap(self, path: str) -> Resolution:
        """Only rename onto the virtio bus (for places that take no UUID= tag)."""
        return self.resolve(path, allow_tags=False)


@dataclass(frozen=True)
class Rewrite:
    """The outcome of rewriting one file: new text, and one line per change or problem."""

    text: str
    changes: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _is_current(path: str) -> bool:
    """Names p2v itself produces are already right: the virtio names."""
    return path.startswith("/dev/vd")


_REGEX_TAIL = re.compile(r"(?:-part)?(?:\.[*+?]|\[[^\]]*\][*+?]?|\$|\\d[*+?]?)+$")


def _sub_devices(text: str, dmap: DeviceMap, changes: list[str], unresolved: list[str],
                 where: str) -> str:
    """Rename every hardware-bound device inside a text (a filter regex) onto virtio."""
    def repl(match: re.Match[str]) -> str:
        old = match.group(0)
        # A by-id name swallows the regex after it (ata-X_SER.*): resolve the name alone.
        tail = _REGEX_TAIL.search(old) if old.startswith("/dev/disk/") else None
        name, rest = (old[:tail.start()], old[tail.start():]) if tail else (old, "")
        if _is_current(name) or dmap.parse(name) is None:
            return old
        res = dmap.remap(name)
        if res.new is None:
            unresolved.append(f"{where}: {old} (no disk of this guest matches)")
            return old
        changes.append(f"{where}: {name} -> {res.new}")
        return res.new + rest.removeprefix("-part")     # vda1, not vda-part1

    return dmap.pattern.sub(repl, text)


def _fields_rewrite(text: str, column: int, dmap: DeviceMap, what: str) -> Rewrite:
    """Rewrite the device in one whitespace-separated column of a table file."""
    changes: list[str] = []
    unresolved: list[str] = []
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        parts = re.split(r"(\s+)", line)   # keep the original spacing
        words = [i for i, p in enumerate(parts) if p and not p.isspace()]
        if len(words) <= column:
            out.append(line)
            continue
        i = words[column]
        spec = parts[i]
        if dmap.bound(spec) and not _is_current(spec):
            res = dmap.resolve(spec)
            if res.new is None:
                unresolved.append(f"{what} line {number}: {spec} (no disk of this guest "
                                  "matches)")
            else:
                changes.append(f"{what}: {spec} -> {res.new}")
                parts[i] = res.new
        out.append("".join(parts))
    return Rewrite("".join(out), tuple(changes), tuple(unresolved))


def rewrite_fstab(text: str, dmap: DeviceMap) -> Rewrite:
    """fstab: the first column, to UUID=/LABEL= (or the virtio name)."""
    return _fields_rewrite(text, 0, dmap, "fstab")


def rewrite_crypttab(text: str, dmap: DeviceMap) -> Rewrite:
    """crypttab: the second column (the encrypted device) accepts UUID= too."""
    return _fields_rewrite(text, 1, dmap, "crypttab")


_KARG = re.compile(r"(?<![\w.-])(root|resume|real_root)=(/dev/\S+?)(?=[\s\"']|$)")


def rewrite_kernel_args(text: str, dmap: DeviceMap, where: str) -> Rewrite:
    """root=, resume=, real_root= on a kernel command line (any text that holds one)."""
    changes: list[str] = []
    unresolved: list[str] = []

    def repl(match: re.Match[str]) -> str:
        key, old = match.group(1), match.group(2)
        if not dmap.bound(old) or _is_current(old):
            return match.group(0)
        res = dmap.resolve(old)
        if res.new is None:
            unresolved.append(f"{where}: {key}={old} (no disk of this guest matches)")
            return match.group(0)
        changes.append(f"{where}: {key}={old} -> {key}={res.new}")
        return f"{key}={res.new}"

    new = _KARG.sub(repl, text)
    return Rewrite(new, tuple(changes), tuple(unresolved))


def _at_line(found: Sequence[str], where: str, text: str, offset: int) -> list[str]:
    """Problems reported as `where: ...`, given the line of `text` they are on."""
    line = text.count("\n", 0, offset) + 1
    return [f"{where} line {line}:{u[len(where) + 1:]}" if u.startswith(where + ":") else u
            for u in found]


_RESUME_LINE = re.compile(r"^(\s*(?:RESUME\s*=|resume device\s*[=:])\s*[\"']?)([^\s\"']+)",
                          re.MULTILINE)


def rewrite_resume(text: str, dmap: DeviceMap, where: str) -> Rewrite:
    """The hibernation device: initramfs-tools' conf.d/resume (RESUME=, takes UUID=) and
    uswsusp.conf (`resume device = PATH`, a path: the virtio name)."""
    changes: list[str] = []
    unresolved: list[str] = []

    def one(match: re.Match[str]) -> str:
        old = match.group(2)
        if not dmap.bound(old) or _is_current(old):
            return match.group(0)
        line = text.count("\n", 0, match.start()) + 1
        res = dmap.resolve(old, allow_tags=match.group(1).lstrip().startswith("RESUME"))
        if res.new is None:
            unresolved.append(f"{where} line {line}: {old} (no disk of this guest matches)")
            return match.group(0)
        changes.append(f"{where} line {line}: {old} -> {res.new}")
        return match.group(1) + res.new

    return Rewrite(_RESUME_LINE.sub(one, text), tuple(changes), tuple(unresolved))


_GRUB_CMDLINE = re.compile(r"^(\s*GRUB_CMDLINE_LINUX(?:_DEFAULT)?=)(.*)$", re.MULTILINE)
_GRUB_NO_UUID = re.compile(r"^(\s*GRUB_DISABLE_LINUX_UUID=)[\"']?true[\"']?[ \t]*$", re.MULTILINE)


def rewrite_grub_default(text: str, dmap: DeviceMap) -> Rewrite:
    """/etc/default/grub: device names in GRUB_CMDLINE_LINUX*, and GRUB_DISABLE_LINUX_UUID.

    With GRUB_DISABLE_LINUX_UUID=true grub-mkconfig writes the root device's kernel name
    (root=/dev/sda1), which does not exist on virtio; false makes it write root=UUID=.
    """
    changes: list[str] = []
    unresolved: list[str] = []

    def cmdline(match: re.Match[str]) -> str:
        res = rewrite_kernel_args(match.group(2), dmap, "/etc/default/grub")
        changes.extend(res.changes)
        unresolved.extend(_at_line(res.unresolved, "/etc/default/grub", text, match.start()))
        return match.group(1) + res.text

    new = _GRUB_CMDLINE.sub(cmdline, text)

    def no_uuid(match: re.Match[str]) -> str:
        changes.append("/etc/default/grub: GRUB_DISABLE_LINUX_UUID=true -> false")
        return match.group(1) + "false"

    new = _GRUB_NO_UUID.sub(no_uuid, new)
    return Rewrite(new, tuple(changes), tuple(unresolved))


_GRUB_KERNEL_LINE = re.compile(r"^\s*(?:linux|linuxefi|linux16|kernel|options)\s.*$",
                               re.MULTILINE)


def rewrite_grub_cfg(text: str, dmap: DeviceMap, where: str) -> Rewrite:
    """grub.cfg, menu.lst or a BLS entry: root=/resume= on the kernel lines.

    Used where the guest has no tool to regenerate its config (grub legacy), and as the
    check after regeneration.
    """
    changes: list[str] = []
    unresolved: list[str] = []

    def line(match: re.Match[str]) -> str:
        res = rewrite_kernel_args(match.group(0), dmap, where)
        changes.extend(res.changes)
        unresolved.extend(_at_line(res.unresolved, where, text, match.start()))
        return res.text

    new = _GRUB_KERNEL_LINE.sub(line, text)
    return Rewrite(new, tuple(changes), tuple(unresolved))


def kernel_roots(text: str) -> list[str]:
    """Every root= value on the kernel lines of a grub config."""
    roots = []
    for match in _GRUB_KERNEL_LINE.finditer(text):
        roots += re.findall(r"(?<![\w.-])root=(\S+)", match.group(0))
    return roots


_DRACUT_ARG = re.compile(
    r"(?<![\w.-])(rd\.lvm\.lv|rd\.lvm\.vg|rd\.md\.uuid|rd\.luks\.uuid|rd\.luks\.name)=(\S+)")


def dracut_arg_problems(cmdline_text: str, dmap: DeviceMap, mapper_names: set[str]) -> list[str]:
    """dracut's rd.lvm.lv=, rd.md.uuid= and rd.luks.uuid= on the kernel lines name storage
    by identity, not by bus: check that each names something the VM has, since dracut
    waits for exactly those (and gives up after rd.retry)."""
    luks = {_hex(fs.uuid) for disk in dmap.disks for fs in
            [*disk.partitions.values(), *([disk.whole] if disk.whole else [])]
            if fs.fstype == "crypto_LUKS" and fs.uuid}
    arrays = md_members(dmap)
    problems = []
    for key, value in sorted(set(_DRACUT_ARG.findall(cmdline_text))):
        value = value.strip("\"'")
        if key == "rd.lvm.lv":
            vg, _, lv = value.partition("/")
            ok = f"{vg.replace('-', '--')}-{lv.replace('-', '--')}" in mapper_names
        elif key == "rd.lvm.vg":        # the VG has an LV on the converted disks
            ok = any(re.match(re.escape(value.replace("-", "--")) + "-(?!-)", m)
                     for m in mapper_names)
        elif key == "rd.luks.name":     # rd.luks.name=UUID=NAME
            ok = _hex(value.split("=", 1)[0].removeprefix("luks-")) in luks
        elif key == "rd.md.uuid":
            ok = _hex(value) in arrays
        else:
            ok = _hex(value.removeprefix("luks-")) in luks
        if not ok:
            problems.append(f"kernel line: {key}={value} names nothing on the converted disks")
    return problems


def is_lv_path(path: str) -> bool:
    """/dev/VG/LV (not a kernel name such as /dev/cciss/c0d0p1, nor /dev/disk/...)."""
    return (re.fullmatch(r"/dev/[\w+.-]+/[\w+.-]+", path) is not None
            and not _DEVICE.fullmatch(path) and not path.startswith("/dev/disk/"))


def root_will_exist(spec: str, dmap: DeviceMap, known_uuids: set[str],
                    known_labels: set[str], mapper_names: set[str]) -> bool:
    """Whether a root= value names a device the converted guest will have."""
    spec = spec.strip("\"'")
    if spec.startswith("UUID="):
        return spec[5:] in known_uuids
    if spec.startswith("LABEL="):
        return spec[6:] in known_labels
    if spec.startswith("/dev/mapper/"):
        return spec[len("/dev/mapper/"):] in mapper_names
    if spec.startswith("/dev/disk/by-id/dm-name-"):
        return spec[len("/dev/disk/by-id/dm-name-"):] in mapper_names     # an LV's link
    if spec.startswith("/dev/disk/by-id/md-uuid-"):
        return _hex(spec[len("/dev/disk/by-id/md-uuid-"):]) in md_members(dmap)
    if spec.startswith("/dev/disk/by-uuid/"):
        return spec.rsplit("/", 1)[1] in known_uuids
    if spec.startswith("/dev/disk/by-label/"):
        return spec.rsplit("/", 1)[1] in known_labels
    if spec.startswith(("PARTLABEL=", "/dev/disk/by-partuuid/", "/dev/disk/by-partlabel/")):
        return True   # partition tables are copied as they are: not bus-bound
    if spec.startswith("/dev/vd"):
        parsed = parse_device(spec)
        if parsed is None or parsed.guess_index is None or parsed.guess_index >= len(dmap.disks):
            return False
        disk = dmap.disks[parsed.guess_index]
        return parsed.partition is None or parsed.partition in disk.partitions
    if spec.startswith("/dev/md") or spec.startswith("ZFS=") or spec.startswith("PARTUUID="):
        return True   # not bus-bound; trusted
    lvm = re.fullmatch(r"/dev/([\w+.-]+)/([\w+.-]+)", spec)
    if lvm and not _DEVICE.fullmatch(spec):
        vg, lv = lvm.groups()
        return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}" in mapper_names
    return False


_GLOB = re.compile(r"[*?\[]")
# mdadm.conf keywords on a DEVICE line that scan whatever the kernel has: right on any bus.
_MD_SCAN_WORDS = frozenset({"partitions", "containers"})
# mdadm takes a keyword abbreviated to its first three letters or more.
_MD_DEVICE_WORDS = frozenset({"DEV", "DEVI", "DEVIC", "DEVICE"})


def _partition_path(disk: str, partition: int) -> str:
    """The kernel's name of partition P of a disk: sda1, nvme0n1p1, cciss/c0d0p1."""
    sep = "p" if disk[-1].isdigit() else ""
    return f"/dev/{disk}{sep}{partition}"


def candidate_names(dmap: DeviceMap) -> list[tuple[str, str]]:
    """(old path, virtio path) for every disk and partition the guest will have.

    Old names come from the inventory where it named the disks; without one, each disk
    gets the names the usual buses would have given it by position (sda, hda, xvda).
    """
    pairs: list[tuple[str, str]] = []
    for index, disk in enumerate(dmap.disks):
        letters = index_to_letters(index)
        names = ([disk.source_name] if disk.source_name
                 else [f"{bus}{letters}" for bus in ("sd", "hd", "xvd")])
        for name in names:
            pairs.append((f"/dev/{name}", virtio_name(index)))
            for part in sorted(disk.partitions):
                pairs.append((_partition_path(name, part), virtio_name(index, part)))
    # The multipath maps placed on a disk (a DEVICE /dev/mapper/mpath* line): the map and
    # its partitions as kpartx names them.
    for name, at in sorted(dmap.maps.items()):
        if at is None:
            continue
        pairs.append((f"/dev/mapper/{name}", virtio_name(at)))
        for part in sorted(dmap.disks[at].partitions):
            pairs += [(f"/dev/mapper/{name}{sep}{part}", virtio_name(at, part))
                      for sep in ("-part", "p")]
    return pairs


def expand_pattern(pattern: str, dmap: DeviceMap) -> list[str]:
    """The virtio names of every device of the guest that a glob over old names selects
    (mdadm's DEVICE globs: /dev/sd[ab]1, /dev/sd*), in disk order, no repeats."""
    found: list[str] = []
    for old, new in candidate_names(dmap):
        if fnmatch.fnmatchcase(old, pattern) and new not in found:
            found.append(new)
    return found


def _md_word(word: str, dmap: DeviceMap, changes: list[str], unresolved: list[str],
             where: str) -> list[str]:
    """One device or pattern of a DEVICE line or devices= list, as virtio names."""
    if not word.startswith("/dev/") or _is_current(word):
        return [word]
    if _GLOB.search(word):
        names = expand_pattern(word, dmap)
        if not names:
            unresolved.append(f"{where}: pattern {word} selects no disk of this guest")
            return [word]
        changes.append(f"{where}: {word} -> {' '.join(names)}")
        return names
    if not dmap.bound(word):
        return [word]
    res = dmap.remap(word)
    if res.new is None:
        unresolved.append(f"{where}: {word} (no disk of this guest matches)")
        return [word]
    changes.append(f"{where}: {word} -> {res.new}")
    return [res.new]


_MD_DEVICES_ARG = re.compile(r"(?<![\w-])(devices=)(\S+)")


def rewrite_mdadm_conf(text: str, dmap: DeviceMap) -> Rewrite:
    """mdadm.conf: DEVICE lines and devices= lists name member disks; rename onto virtio.

    ARRAY lines identified by UUID need nothing. A DEVICE line's words may be kernel
    names, globs over them (/dev/sd[ab]1, /dev/sd*) or the keywords partitions/containers:
    a glob is expanded against the guest's own disks and replaced by the virtio names it
    selects (mdadm takes no UUID= there); a glob selecting nothing is reported, not kept
    silently, because the array would not assemble.
    """
    changes: list[str] = []
    unresolved: list[str] = []
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        body = line.split("#", 1)[0]
        where = f"mdadm.conf line {number}"
        words = body.split()
        if not words:
            out.append(line)
            continue
        if words[0].upper() in _MD_DEVICE_WORDS:
            new_words = [words[0]]
            for word in words[1:]:
                new_words += _md_word(word, dmap, changes, unresolved, where)
            if new_words != words:
                indent = line[: len(line) - len(line.lstrip())]
                newline = "\n" if line.endswith("\n") else ""
                comment = line[len(body):].rstrip("\n")
                line = indent + " ".join(new_words) + (" " + comment if comment else "") + newline
            out.append(line)
            continue

        def devices_arg(match: re.Match[str], where: str = where) -> str:
            new: list[str] = []
            for word in match.group(2).split(","):
                new += _md_word(word, dmap, changes, unresolved, where)
            return match.group(1) + ",".join(new)

        out.append(_MD_DEVICES_ARG.sub(devices_arg, line))
    return Rewrite("".join(out), tuple(changes), tuple(unresolved))


# Name families of the old buses, and multipath's user-friendly names (mpatha, mpathb ...).
_LVM_PREFIX = re.compile(r"/dev/(?:sd|hd|xvd|mapper/mpath)(?=[^a-z0-9_-])")
_LVM_FILTER = re.compile(r"^(\s*(?:global_)?filter\s*=\s*)(.*)$", re.MULTILINE)


def rewrite_lvm_conf(text: str, dmap: DeviceMap) -> Rewrite:
    """lvm.conf filter/global_filter: a pattern naming /dev/sdX would hide the PVs on vdX.

    Each old name inside a filter pattern is renamed onto virtio; whole-disk patterns
    (`a|/dev/sda.*|`) keep their regex tail.
    """
    changes: list[str] = []
    unresolved: list[str] = []

    def filt(match: re.Match[str]) -> str:
        body = _sub_devices(match.group(2), dmap, changes, unresolved, "lvm.conf filter")

        def prefix(m: re.Match[str]) -> str:
            changes.append(f"lvm.conf filter: {m.group(0)}... -> /dev/vd...")
            return "/dev/vd"

        # Patterns over a whole family of names (a|/dev/sd.*|) follow the disks onto virtio.
        body = _LVM_PREFIX.sub(prefix, body)
        return match.group(1) + body

    new = _LVM_FILTER.sub(filt, text)
    return Rewrite(new, tuple(changes), tuple(unresolved))


_UNIT_WHAT = re.compile(r"^(\s*What\s*=\s*)(\S+)(\s*)$", re.MULTILINE)


def rewrite_unit(text: str, dmap: DeviceMap, where: str) -> Rewrite:
    """A systemd .mount/.swap unit: What= names the device.

    A mount unit's What= becomes /dev/disk/by-uuid/UUID (systemd takes no UUID= there) or
    the virtio name. A swap unit is named after its device (dev-sda2.swap), so its What=
    cannot change without renaming the unit and its links: that is reported, not done.
    """
    changes: list[str] = []
    unresolved: list[str] = []
    swap = where.endswith(".swap")

    def what(match: re.Match[str]) -> str:
        old = match.group(2)
        if not dmap.bound(old) or _is_current(old):
            return match.group(0)
        line = text.count("\n", 0, match.start()) + 1
        if swap:
            unresolved.append(f"{where} line {line}: What={old} (a swap unit is named after "
                              "its device: rename it for the new name, or use fstab)")
            return match.group(0)
        res = dmap.resolve(old)
        if res.new is None:
            unresolved.append(f"{where} line {line}: What={old} (no disk of this guest matches)")
            return match.group(0)
        new = res.new
        if new.startswith("UUID="):
            new = "/dev/disk/by-uuid/" + new[5:]
        elif new.startswith("LABEL="):
            new = "/dev/disk/by-label/" + new[6:]
        changes.append(f"{where} line {line}: What={old} -> What={new}")
        return match.group(1) + new + match.group(3)

    return Rewrite(_UNIT_WHAT.sub(what, text), tuple(changes), tuple(unresolved))


# Mount points without which the guest does not come up (systemd drops to emergency mode).
BOOT_MOUNTS = frozenset({"/", "/usr", "/var", "/boot", "/boot/efi", "/efi"})
_LOCAL_SPEC = re.compile(r"^(?:/dev/|UUID=|LABEL=|PARTUUID=|PARTLABEL=)")


@dataclass(frozen=True)
class MissingMounts:
    """fstab after marking what will be missing: new text, what changed, what cannot boot."""

    rewrite: Rewrite
    fatal: tuple[str, ...] = ()        # mounts needed to boot whose device will not exist


def mark_missing_nofail(text: str, will_exist: Callable[[str], bool]) -> MissingMounts:
    """fstab: an entry whose device the VM will not have (a disk left out, a SAN LUN) gets
    `nofail`, so the boot goes on without it instead of stopping in emergency mode.

    Network and pseudo filesystems are left alone, and so is / (mounted from the kernel's
    root=, which is checked on its own); another entry needed to boot (/usr, /boot, ...)
    cannot be helped by nofail and is returned as fatal.
    """
    changes: list[str] = []
    fatal: list[str] = []
    out = []
    for line in text.splitlines(keepends=True):
        fields = line.split()
        if (len(fields) < 3 or fields[0].startswith("#") or not _LOCAL_SPEC.match(fields[0])
                or will_exist(fields[0])):
            out.append(line)
            continue
        spec, mountpoint = fields[0], fields[1]
        options = fields[3].split(",") if len(fields) > 3 else ["defaults"]
        if mountpoint == "/":
            # The initramfs mounts the root from the kernel's root= (checked on the grub
            # config's kernel lines); systemd only remounts it by mount point.
            out.append(line)
            continue
        if mountpoint in BOOT_MOUNTS:
            fatal.append(f"fstab: {mountpoint} is on {spec}, which the VM will not have")
            out.append(line)
            continue
        if "nofail" in options or "noauto" in options:
            out.append(line)
            continue
        new_options = ",".join(options + ["nofail"])
        if len(fields) > 3:
            # Replace the fourth field in place, keeping the line's spacing.
            parts = re.split(r"(\s+)", line)
            words = [i for i, p in enumerate(parts) if p and not p.isspace()]
            parts[words[3]] = new_options
            line = "".join(parts)
        else:
            line = line.rstrip("\n") + f" {new_options}" + ("\n" if line.endswith("\n") else "")
        changes.append(f"fstab: {mountpoint} on {spec}: the VM will not have this device, "
                       "marked nofail")
        out.append(line)
    return MissingMounts(Rewrite("".join(out), tuple(changes)), tuple(fatal))


def _hex(uuid: str) -> str:
    """md UUIDs are written 8:8:8:8 by mdadm and 8-4-4-4-12 by blkid: compare the digits."""
    return re.sub(r"[^0-9a-f]", "", uuid.lower())


def md_members(dmap: DeviceMap) -> dict[str, list[str]]:
    """Array UUID (digits only) -> the virtio names of its members on the guest's disks."""
    members: dict[str, list[str]] = {}
    for index, disk in enumerate(dmap.disks):
        parts: list[tuple[int | None, FsIdentity]] = [(None, disk.whole)] if disk.whole else []
        parts += sorted(disk.partitions.items())
        for part, fs in parts:
            if fs is not None and fs.fstype == "linux_raid_member" and fs.uuid:
                members.setdefault(_hex(fs.uuid), []).append(virtio_name(index, part))
    return members


def _md_selected(path: str, selectors: Sequence[str]) -> bool:
    for word in selectors:
        if word == "partitions" or fnmatch.fnmatchcase(path, word):
            return True
    return False


def _mdadm_conf(conf: str | None) -> tuple[list[str], list[tuple[str, str, list[str] | None]]]:
    """DEVICE selectors (mdadm's default when none: partitions) and ARRAY lines as
    (name, UUID digits, devices= list or None)."""
    selectors: list[str] = []
    arrays: list[tuple[str, str, list[str] | None]] = []
    for line in (conf or "").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        key = words[0].upper()
        if key in _MD_DEVICE_WORDS:
            selectors += words[1:]
        elif key.startswith("ARR"):
            args = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            uuid = args.get("UUID") or args.get("uuid")
            listed = args.get("devices")
            if uuid:
                arrays.append((words[1] if len(words) > 1 else "?", _hex(uuid),
                               listed.split(",") if listed else None))
    return selectors or ["partitions"], arrays


def md_arrays_left_behind(conf: str | None, dmap: DeviceMap) -> set[str]:
    """Arrays mdadm.conf names whose members are on no converted disk (a data array left
    behind): the VM will not have them."""
    found = md_members(dmap)
    return {name for name, uuid, _ in _mdadm_conf(conf)[1] if uuid not in found}


@dataclass(frozen=True)
class _MdVerdict:
    name: str
    members: tuple[str, ...]          # virtio names of its members on the converted disks
    chosen: tuple[str, ...]           # those mdadm.conf selects
    how: str                          # the selectors, for the report


def _md_verdicts(conf: str | None, dmap: DeviceMap) -> list[_MdVerdict]:
    selectors, arrays = _mdadm_conf(conf)
    found = md_members(dmap)
    verdicts = []
    for name, uuid, devs in arrays:
        members = found.get(uuid, [])
        if not members:
            continue
        chosen = [m for m in members if _md_selected(m, selectors)
                  and (devs is None or _md_selected(m, devs))]
        how = f"DEVICE {' '.join(selectors)}" + (f", devices={','.join(devs)}" if devs else "")
        verdicts.append(_MdVerdict(name, tuple(members), tuple(chosen), how))
    return verdicts


def md_assembly_problems(conf: str | None, dmap: DeviceMap) -> list[str]:
    """Why an md array of the guest would not assemble on virtio under this mdadm.conf.

    Models what mdadm --assemble --scan does in the initramfs: the DEVICE lines (default
    `partitions`) choose the candidate devices, an ARRAY line's devices= narrows them, and
    members are found by the array UUID in their superblocks (blkid's linux_raid_member).
    Arrays whose members were not converted are md_arrays_left_behind's business.
    """
    problems = []
    for v in _md_verdicts(conf, dmap):
        if not v.chosen:
            problems.append(f"md array {v.name}: none of its members ({', '.join(v.members)}) "
                            f"is selected by mdadm.conf ({v.how})")
        elif len(v.chosen) < len(v.members):
            problems.append(f"md array {v.name}: only {', '.join(v.chosen)} of its members "
                            f"({', '.join(v.members)}) selected by mdadm.conf: it would start "
                            "degraded or not at all")
    return problems


def md_guest_name(uuid: str, conf: str | None) -> str | None:
    """The name the guest gives an array (its ARRAY line in mdadm.conf), if it names one."""
    return next((name for name, digits, _ in _mdadm_conf(conf)[1] if digits == _hex(uuid)),
                None)


# LVM devices-file ID types bound to the physical disk (its WWID, serial, ...; a multipath
# map's UUID is mpath-WWID); the others (devname, md_uuid, crypt_uuid, lvmlv_uuid,
# loop_file) survive the move.
_LVM_HW_IDTYPES = frozenset({"sys_wwid", "sys_serial", "wwid_naa", "wwid_eui", "wwid_t10",
                             "mpath_uuid"})
_LVM_FIELD = re.compile(r"(\w+)=(\S*)")


def rewrite_lvm_devices(text: str, dmap: DeviceMap) -> Rewrite:
    """/etc/lvm/devices/system.devices: LVM uses only the PVs listed there.

    An entry naming its PV by the physical disk's WWID or serial matches no virtio disk,
    so LVM would ignore the PV and the root LV would never appear. Such an entry (and one
    whose devname is an old kernel name) becomes a devname entry for the PV's virtio name;
    the PVID stays, and LVM checks it before using the device.
    """
    changes: list[str] = []
    unresolved: list[str] = []
    out = []
    pvs = {uuid.replace("-", ""): path for path, uuid in _pv_names(dmap) if uuid}
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        fields = dict(_LVM_FIELD.findall(line)) if not line.lstrip().startswith("#") else {}
        idtype, devname = fields.get("IDTYPE"), fields.get("DEVNAME", "")
        if idtype is None:
            out.append(line)
            continue
        where = f"system.devices line {number}"
        stale_name = idtype == "devname" and not _is_current(fields.get("IDNAME", ""))
        if idtype not in _LVM_HW_IDTYPES and not stale_name:
            out.append(line)
            continue
        res = dmap.remap(devname) if dmap.bound(devname) else None
        by_pvid = pvs.get(fields.get("PVID", ""))
        if by_pvid is not None:
            # The PV itself is on a converted disk: its UUID says which, whatever the name.
            res = Resolution(devname, by_pvid, "pvid")
        if res is None or res.new is None:
            unresolved.append(f"{where}: PV {fields.get('PVID', '?')} named by {idtype} "
                              f"{fields.get('IDNAME', '?')} (DEVNAME {devname or 'missing'}"
                              " is no disk of this guest)")
            out.append(line)
            continue
        new = f"IDTYPE=devname IDNAME={res.new} DEVNAME={res.new}"
        for key in ("PVID", "PART"):
            if key in fields:
                new += f" {key}={fields[key]}"
        changes.append(f"{where}: {idtype} {fields.get('IDNAME', '?')} -> devname {res.new}")
        out.append(new + ("\n" if line.endswith("\n") else ""))
    return Rewrite("".join(out), tuple(changes), tuple(unresolved))


def _pv_names(dmap: DeviceMap) -> list[tuple[str, str]]:
    """(virtio name, PV UUID) of every LVM PV on the guest's disks."""
    return [(virtio_name(i, p), fs.uuid or "")
            for i, disk in enumerate(dmap.disks)
            for p, fs in ([(None, disk.whole)] if disk.whole else [])
            + sorted(disk.partitions.items())
            if fs is not None and fs.fstype == "LVM2_member"]


_LVM_ARRAY = re.compile(r"^[ \t]*(global_filter|filter)\s*=\s*\[(.*?)\]", re.MULTILINE | re.DOTALL)


def _lvm_rules(conf: str) -> dict[str, list[tuple[bool, str]]]:
    """lvm.conf's filter and global_filter as [(accept, regex)], comments dropped."""
    text = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    rules: dict[str, list[tuple[bool, str]]] = {}
    for key, body in _LVM_ARRAY.findall(text):
        items = []
        for item in re.findall(r'"([^"]*)"', body):
            if len(item) >= 3 and item[0] in "ar" and item[1] in item[2:]:
                items.append((item[0] == "a", item[2:item.rindex(item[1])]))
        rules[key] = items
    return rules


def _lvm_accepts(rules: list[tuple[bool, str]], path: str) -> bool:
    for accept, regex in rules:
        try:
            if re.search(regex, path):
                return accept
        except re.error:
            continue
    return True                        # no pattern matched: LVM accepts the device


def _guest_pvs(dmap: DeviceMap, md_conf: str | None) -> list[tuple[str, str]]:
    """(the name the guest's LVM sees it by, PV UUID) for each PV of the converted disks:
    on a partition or disk (its virtio name), or on an md array (its mdadm.conf name, else
    the name it was assembled under)."""
    pvs = [(virtio_name(i, p), fs.uuid or "")
           for i, disk in enumerate(dmap.disks)
           for p, fs in ([(None, disk.whole)] if disk.whole else [])
           + sorted(disk.partitions.items())
           if fs is not None and fs.fstype == "LVM2_member"]
    pvs += [(md_guest_name(md.uuid, md_conf) or md.device, md.content.uuid or "")
            for md in dmap.arrays
            if md.content is not None and md.content.fstype == "LVM2_member"]
    return pvs


def _devices_file_pvids(conf: str | None, devices_file: str | None) -> set[str] | None:
    """PVIDs the devices file lets LVM use on virtio (None: no devices file in force).
    Entries by devname (checked by PVID wherever the PV now is) and by md/mpath/crypt UUID
    survive the move; WWID and serial entries name the physical disk."""
    ignored = re.search(r"^[ \t]*use_devicesfile\s*=\s*0", conf or "", re.MULTILINE)
    if devices_file is None or ignored:
        return None
    listed = set()
    for line in devices_file.splitlines():
        fields = dict(_LVM_FIELD.findall(line.split("#", 1)[0]))
        if fields.get("IDTYPE") not in (None, *_LVM_HW_IDTYPES) and fields.get("PVID"):
            listed.add(fields["PVID"])
    return listed


def _lvm_verdicts(conf: str | None, devices_file: str | None, dmap: DeviceMap,
                  md_conf: str | None) -> list[tuple[str, str | None, str]]:
    """(PV name, why LVM ignores it or None, how it is accepted) for each PV."""
    rules = _lvm_rules(conf or "")
    listed = _devices_file_pvids(conf, devices_file)
    verdicts: list[tuple[str, str | None, str]] = []
    for path, uuid in _guest_pvs(dmap, md_conf):
        rejected = next((key for key in ("global_filter", "filter")
                         if key in rules and not _lvm_accepts(rules[key], path)), None)
        if rejected:
            verdicts.append((path, f"LVM PV {path}: rejected by lvm.conf {rejected}", ""))
        elif listed is not None and uuid.replace("-", "") not in listed:
            verdicts.append((path, f"LVM PV {path}: not in /etc/lvm/devices/system.devices by "
                                   "a name the VM has", ""))
        else:
            how = " and ".join(k for k in ("global_filter", "filter") if k in rules)
            how = f"accepted by lvm.conf {how}" if how else "no lvm.conf filter"
            verdicts.append((path, None, how + ("" if listed is None
                                                else ", listed in system.devices")))
    return verdicts


def lvm_pv_problems(conf: str | None, devices_file: str | None, dmap: DeviceMap,
                    md_conf: str | None = None) -> list[str]:
    """Why LVM would ignore a PV of the guest on virtio.

    Models the filters (first matching pattern decides, against the PV's kernel name: the
    /dev/disk/by-* aliases of a virtio disk are not known here) and the devices file (a PV
    is used only when an entry names it: by PVID for devname and md_uuid entries;
    WWID/serial entries match no virtio disk). A PV on an md array is checked by the
    array's name in mdadm.conf.
    """
    return [problem for _, problem, _ in _lvm_verdicts(conf, devices_file, dmap, md_conf)
            if problem]


def storage_checks(md_conf: str | None, lvm_conf: str | None, devices_file: str | None,
                   dmap: DeviceMap) -> list[str]:
    """What the model found will work on virtio: each md array assembled from all its
    members, each PV LVM will use (for the report, beside the problems)."""
    lines = [f"md array {v.name} assembles on virtio from {', '.join(v.chosen)} "
             f"(mdadm.conf {v.how})"
             for v in _md_verdicts(md_conf, dmap) if v.chosen and v.chosen == v.members]
    lines += [f"LVM PV {path} will be used on virtio ({how})"
              for path, problem, how in _lvm_verdicts(lvm_conf, devices_file, dmap, md_conf)
              if problem is None]
    return lines


def find_devices(text: str) -> list[str]:
    """Every hardware-bound device path in a text (for the report)."""
    return [m.group(0) for m in _DEVICE.finditer(text) if not _is_current(m.group(0))]
