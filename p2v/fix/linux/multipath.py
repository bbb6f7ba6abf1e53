"""Multipath on the source: which map was which disk, and multipath kept off the virtio disks.

Pure text logic, no libguestfs. A server booting from a SAN (or a dual-path disk) names its
storage by multipath maps: /dev/mapper/mpatha-part1 (an alias from /etc/multipath/bindings
or a `multipaths { multipath { wwid alias } }` section of /etc/multipath.conf) or a map named
by the LUN's WWID. A virtio disk has no such WWID, so multipath never creates those maps in
the guest and everything that names one (fstab, root=, crypttab, LVM) waits for a device
that never appears. `known_maps` reads the guest's multipath files, `place_maps` decides which
converted disk each map was (the inventory's dm table, a disk's WWID, or the root and PVs
found on the images), and `DeviceMap(disks, maps)` then rewrites those names like any other
hardware-bound name. `dropin_text` is the blacklist that keeps multipath off the new disks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2v.fix.linux.devices import DeviceMap, ParsedDevice, id_keys, parse_device
from p2v.model import DmDevice

CONF = "/etc/multipath.conf"
BINDINGS = "/etc/multipath/bindings"
WWIDS = "/etc/multipath/wwids"
CONF_DIR = "/etc/multipath/conf.d"
DROPIN = "p2v-virtio.conf"
# Where multipath-tools lives (a guest without it only has leftover config files).
TOOLS = ("/sbin/multipath", "/usr/sbin/multipath", "/usr/bin/multipath")


def parse_bindings(text: str) -> dict[str, str]:
    """/etc/multipath/bindings: `alias WWID` lines (user_friendly_names' memory)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            found[words[0]] = words[1]
    return found


def parse_wwids(text: str) -> list[str]:
    """/etc/multipath/wwids: `/WWID/` lines (the WWIDs find_multipaths admits)."""
    return [w.strip("/") for line in text.splitlines()
            if (w := line.split("#", 1)[0].strip()).startswith("/") and w.strip("/")]


_TOKEN = re.compile(r'"[^"]*"|[{}]|[^\s{}"]+')


@dataclass(frozen=True)
class MultipathConf:
    """What p2v needs from multipath.conf."""

    aliases: dict[str, str]            # alias -> WWID, from multipaths { multipath { } }
    config_dir: str = CONF_DIR         # defaults { config_dir ... }


def parse_conf(text: str) -> MultipathConf:
    """multipath.conf: sections `name { key value ... }`, `#` and `!` comments."""
    tokens: list[str] = []
    for line in text.splitlines():
        body = re.split(r"[#!]", line, maxsplit=1)[0]
        tokens += _TOKEN.findall(body) + ["\n"]
    stack: list[str] = []
    entry: dict[str, str] = {}
    aliases: dict[str, str] = {}
    config_dir = CONF_DIR
    words: list[str] = []
    pending = ""                       # a section name alone on its line, "{" on the next
    for tok in tokens:
        if tok == "{":
            stack.append(words[0] if words else pending)
            if stack[-1] == "multipath":
                entry = {}
            words, pending = [], ""
        elif tok == "}":
            if stack and stack.pop() == "multipath" and "wwid" in entry and "alias" in entry:
                aliases[entry["alias"]] = entry["wwid"]
            words = []
        elif tok == "\n":
            if len(words) >= 2:
                if stack[-1:] == ["multipath"]:
                    entry[words[0]] = words[1]
                elif stack[-1:] == ["defaults"] and words[0] == "config_dir":
                    config_dir = words[1]
            elif words:
                pending = words[0]
            words = []
        else:
            words.append(tok.strip('"'))
    return MultipathConf(aliases, config_dir)


def known_maps(bindings: str | None, wwids: str | None, conf: str | None) -> dict[str, str]:
    """Every name a multipath map of the source may have had -> its WWID: the aliases
    (multipath.conf's win over the bindings file, as in multipath itself) and each WWID,
    the map's name when user_friendly_names is off."""
    names: dict[str, str] = {}
    if bindings:
        names.update(parse_bindings(bindings))
    if conf:
        names.update(parse_conf(conf).aliases)
    for wwid in [*names.values(), *parse_wwids(wwids or "")]:
        names.setdefault(wwid, wwid)
    return names


@dataclass(frozen=True)
class SourceMap:
    """A multipath map the inventory saw on the running source (kind multipath in its dm
    table): its name, WWID and the disks (paths) under it."""

    name: str
    wwid: str | None
    slaves: tuple[str, ...]


def maps_from_dm(dm: Iterable[DmDevice]) -> tuple[SourceMap, ...]:
    """The multipath maps of an inventory's dm table (uuid mpath-WWID, slaves its paths)."""
    return tuple(SourceMap(d.name, d.uuid.split("-", 1)[1] if d.uuid else None, d.slaves)
                 for d in dm if d.kind == "multipath" and d.name)


def place_maps(names: dict[str, str], dmap: DeviceMap, source_maps: Sequence[SourceMap] = (),
               hints: dict[str, int] | None = None) -> dict[str, int | None]:
    """Which converted disk (index) each multipath map was; None: not converted or unknown.

    Evidence, strongest first: the inventory (the map's paths are source disks, in image
    order in dmap), the WWID of a disk the inventory describes, then `hints` read off the
    images themselves (see `root_hints`, `pv_hints`). Nothing is guessed from position: a
    wrong guess would mount another disk's partition in its place.
    """
    names = dict(names)
    for sm in source_maps:
        names.setdefault(sm.name, sm.wwid or sm.name)
        if sm.wwid:
            names.setdefault(sm.wwid, sm.wwid)
    by_source = {d.source_name: i for i, d in enumerate(dmap.disks) if d.source_name}
    by_wwid: dict[str, int] = {}
    for sm in source_maps:
        index = next((by_source[s] for s in sm.slaves if s in by_source), None)
        if index is not None:
            for key in (sm.name, *([sm.wwid] if sm.wwid else [])):
                by_wwid[key] = index
    disk_keys = [(i, set().union(*(id_keys(x) for x in d.ids)) if d.ids else set())
                 for i, d in enumerate(dmap.disks)]
    placed: dict[str, int | None] = {}
    for name, wwid in names.items():
        index = by_wwid.get(name, by_wwid.get(wwid))
        if index is None:
            keys = id_keys(wwid)
            owners = [i for i, k in disk_keys if keys & k]
            index = owners[0] if len(owners) == 1 else None
        if index is None and hints:
            index = hints.get(name, hints.get(wwid))
        placed[name] = index
    # A map's alias and its WWID are the same map.
    for name, wwid in names.items():
        if placed.get(name) is None and placed.get(wwid) is not None:
            placed[name] = placed[wwid]
        elif placed.get(wwid) is None and placed.get(name) is not None:
            placed[wwid] = placed[name]
    return placed


def _map_of(spec: str, probe: DeviceMap) -> ParsedDevice | None:
    parsed = probe.parse(spec)
    return parsed if parsed is not None and parsed.disk.startswith("mapper/") else None


def root_hints(names: dict[str, str], dmap: DeviceMap, root_specs: Iterable[str],
               root_device: str) -> dict[str, int]:
    """The root filesystem's own evidence: the guest's fstab `/` (or root=) names map M
    partition P, and libguestfs found that root on partition P of appliance disk N
    (/dev/sdb2 is disk 1, partition 2): M was disk N."""
    probe = DeviceMap(dmap.disks, {n: None for n in names})
    found = parse_device(root_device)
    if found is None or found.guess_index is None:
        return {}
    hints: dict[str, int] = {}
    for spec in root_specs:
        parsed = _map_of(spec.strip("\"'"), probe)
        if parsed is not None and parsed.partition == found.partition:
            hints[parsed.disk[len("mapper/"):]] = found.guess_index
    return hints


_LVM_FIELD = re.compile(r"(\w+)=(\S*)")


def pv_hints(names: dict[str, str], dmap: DeviceMap, devices_file: str | None) -> dict[str, int]:
    """The LVM devices file's evidence: an entry for PVID X names map M (DEVNAME
    /dev/mapper/M..., or IDNAME mpath-WWID) and the PV with UUID X is on disk N: M was N."""
    probe = DeviceMap(dmap.disks, {n: None for n in names})
    pv_disk = {fs.uuid.replace("-", ""): i for i, d in enumerate(dmap.disks)
               for fs in [*d.partitions.values(), *([d.whole] if d.whole else [])]
               if fs.fstype == "LVM2_member" and fs.uuid}
    hints: dict[str, int] = {}
    for line in (devices_file or "").splitlines():
        fields = dict(_LVM_FIELD.findall(line.split("#", 1)[0]))
        index = pv_disk.get(fields.get("PVID", ""))
        if index is None:
            continue
        parsed = _map_of(fields.get("DEVNAME", ""), probe)
        if parsed is not None:
            hints[parsed.disk[len("mapper/"):]] = index
        idname = fields.get("IDNAME", "")
        if fields.get("IDTYPE") == "mpath_uuid" and "mpath-" in idname:
            hints[idname.split("mpath-", 1)[1]] = index
    return hints


def dropin_path(conf: str | None) -> str:
    """Where multipath reads extra config: config_dir (default /etc/multipath/conf.d)."""
    folder = parse_conf(conf).config_dir if conf else CONF_DIR
    return f"{folder.rstrip('/')}/{DROPIN}"


def dropin_text() -> str:
    """A blacklist for the disks a KVM guest has: virtio-blk (vdX) and QEMU's emulated
    SCSI/SATA disks. Added as its own file, so removing it undoes it; bindings, wwids and
    multipath.conf are left as they are, so the guest can go back to its SAN paths."""
    return ("# Written by p2v: this guest was moved from multipathed (SAN) disks onto\n"
            "# single-path virtual disks. Keep multipath off them. Delete this file (and\n"
            "# rebuild the initramfs) if the guest goes back to multipathed storage.\n"
            "blacklist {\n"
            '\tdevnode "^vd[a-z]+"\n'
            "\tdevice {\n"
            '\t\tvendor "QEMU"\n'
            '\t\tproduct "QEMU HARDDISK"\n'
            "\t}\n"
            "}\n")
