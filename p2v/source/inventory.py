"""The inventory of a running source: one read-only batch of commands, parsed by pure functions.

`COLLECT_SCRIPT` runs once over SSH (as root) and prints sections, each closed by its exit
code. It needs only sh, coreutils, util-linux, /proc and /sys; the optional extras (`ip`,
LVM's `pvs`/`vgs`/`lvs`) only add detail. Every parser below takes captured text and
returns values, so each is tested with outputs recorded from real machines; whatever a
section lacks becomes null ("unknown") and a note in `Inventory.unknown`, never a crash.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from p2v.errors import UsageError
from p2v.model import (
    CpuInfo,
    DiskInfo,
    DmDevice,
    Filesystem,
    Inventory,
    LvmInfo,
    LvmLv,
    LvmPv,
    LvmVg,
    MdArray,
    NicInfo,
    OsInfo,
    Partition,
    normalise_mac,
)
from p2v.source import remote
from p2v.units import human_size

if TYPE_CHECKING:
    from p2v.model import Firmware
    from p2v.source.ssh import SshSource

# Filesystems whose free blocks the copy can skip; swap is recreated, so none of it is sent.
FS_AWARE = frozenset({"ext2", "ext3", "ext4", "xfs"})
SECTOR = 512  # /sys/block sizes and starts are always in 512-byte units
MEMORY_ROUND_MIB = 128

COLLECT_SCRIPT = remote.script("inventory.sh")

_SECTION = re.compile(r"^@@p2v (?P<name>[\w-]+)@@$")
_RC = re.compile(r"^@@p2v-rc (?P<rc>\d+)@@$")


@dataclass(frozen=True)
class Section:
    text: str
    rc: int | None   # None: the section never finished (the script was cut off)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and bool(self.text.strip())


def split_sections(output: str) -> dict[str, Section]:
    """The collection script's output as {section name: Section}."""
    sections: dict[str, Section] = {}
    name: str | None = None
    lines: list[str] = []
    for line in output.splitlines():
        if m := _SECTION.match(line):
            if name is not None:
                sections[name] = Section("\n".join(lines).strip("\n"), None)
            name, lines = m["name"], []
        elif (m := _RC.match(line)) and name is not None:
            sections[name] = Section("\n".join(lines).strip("\n"), int(m["rc"]))
            name, lines = None, []
        elif name is not None:
            lines.append(line)
    if name is not None:
        sections[name] = Section("\n".join(lines).strip("\n"), None)
    return sections


# ---------------------------------------------------------------------------------------------
# Small parsers, one per source of truth


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text or None


def parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep or not re.fullmatch(r"[A-Z0-9_]+", key):
            continue
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key] = " ".join(parts)
    return values


def parse_cpuinfo(text: str) -> CpuInfo | None:
    """Sockets from distinct physical ids, cores per socket, threads per core."""
    blocks = [b for b in re.split(r"\n\s*\n", text) if "processor" in b]
    if not blocks:
        return None
    procs: list[dict[str, str]] = []
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        procs.append(fields)
    logical = len(procs)
    model = next((p.get("model name") or p.get("cpu model") for p in procs
                  if p.get("model name") or p.get("cpu model")), None)
    sockets = len({p["physical id"] for p in procs if "physical id" in p}) or 1
    cores = _int(procs[0].get("cpu cores"))
    siblings = _int(procs[0].get("siblings"))
    if cores and siblings and siblings % cores == 0 and sockets * siblings == logical:
        return CpuInfo(sockets=sockets, cores=cores, threads=siblings // cores, model=model)
    if logical % sockets == 0:
        return CpuInfo(sockets=sockets, cores=logical // sockets, threads=1, model=model)
    return CpuInfo(sockets=1, cores=logical, threads=1, model=model)


def parse_meminfo_mib(text: str) -> int | None:
    """Installed RAM: MemTotal (what the kernel did not reserve), rounded up to 128 MiB."""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    if not m:
        return None
    mib = int(m[1]) / 1024
    return int(-(-mib // MEMORY_ROUND_MIB) * MEMORY_ROUND_MIB)


def parse_tabbed(text: str) -> dict[str, dict[str, list[str]]]:
    """`name<TAB>key<TAB>value` lines as {name: {key: [values...]}}."""
    table: dict[str, dict[str, list[str]]] = {}
    for line in text.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            table.setdefault(parts[0], {}).setdefault(parts[1], []).append(parts[2])
    return table


def parse_key_tab_value(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("\t")
        if sep and value.strip():
            values[key.strip()] = value.strip()
    return values


def _unescape_lsblk(value: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), value)


def parse_lsblk_pairs(text: str) -> dict[str, dict[str, str]]:
    """`lsblk -P` output as {kernel name: {COLUMN: value}} (empty values dropped)."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        row = {k: _unescape_lsblk(v) for k, v in re.findall(r'([A-Z:_-]+)="([^"]*)"', line)}
        key = row.get("KNAME") or row.get("NAME")
        if key:
            rows[key] = {k: v for k, v in row.items() if v != ""}
    return rows


def parse_blkid_export(text: str) -> dict[str, dict[str, str]]:
    """`blkid -o export` output as {DEVNAME: {KEY: value}}."""
    devices: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        values: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        if "DEVNAME" in values:
            devices[values["DEVNAME"]] = values
    return devices


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), path)


@dataclass(frozen=True)
class Mount:
    majmin: str
    mountpoint: str
    fstype: str
    source: str


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append(Mount(fields[2], _unescape_mount(fields[4]), rest[0], rest[1]))
    return mounts


@dataclass(frozen=True)
class DfRow:
    source: str
    size_bytes: int
    used_bytes: int
    avail_bytes: int
    mountpoint: str


def parse_df(text: str) -> dict[str, DfRow]:
    """`df -P -k` as {mountpoint: DfRow}."""
    rows: dict[str, DfRow] = {}
    for line in text.splitlines()[1:]:
        parts = line.split(None, 5)
        if len(parts) < 6 or not all(p.isdigit() for p in parts[1:4]):
            continue
        row = DfRow(parts[0], int(parts[1]) * 1024, int(parts[2]) * 1024, int(parts[3]) * 1024,
                    parts[5])
        rows[row.mountpoint] = row
    return rows


def parse_swaps(text: str) -> list[str]:
    """Active swap devices (paths) from /proc/swaps."""
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


def parse_mdstat(text: str) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """/proc/mdstat as {md0: (level, members)}."""
    arrays: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for line in text.splitlines():
        m = re.match(r"^(md\w+)\s*:\s*(\w+)\s+(.*)$", line)
        if not m:
            continue
        words = m[3].split()
        level = next((w for w in words if w.startswith("raid") or w in ("linear",)), None)
        members = tuple(re.sub(r"\[\d+\].*$", "", w) for w in words if re.search(r"\[\d+\]", w))
        arrays[m[1]] = (level, members)
    return arrays


def parse_lvm_report(text: str, columns: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().split("|")]
        if len(parts) == columns:
            rows.append(parts)
    return rows


def parse_ip_addr(text: str) -> dict[str, list[str]]:
    """`ip -o addr show` as {interface: [cidr, ...]}."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\d+:\s+(\S+?)(?:@\S+)?\s+inet6?\s+(\S+)", line)
        if m:
            found.setdefault(m[1], []).append(m[2])
    return found


def _le_ipv4(hex_text: str) -> int:
    """/proc/net/route prints addresses as host-order (little-endian) hex."""
    return int.from_bytes(struct.pack("<I", int(hex_text, 16)), "big")


def parse_proc_addresses(fib_trie: str, route: str, if_inet6: str) -> dict[str, list[str]]:
    """Addresses from /proc when `ip` is missing: local IPv4s from fib_trie, their interface
    and prefix from the route table's connected routes; IPv6 from if_inet6."""
    found: dict[str, list[str]] = {}
    locals_: list[str] = []
    lines = fib_trie.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*\|--\s+(\d+\.\d+\.\d+\.\d+)\s*$", line)
        if m and i + 1 < len(lines) and "/32 host LOCAL" in lines[i + 1]:
            if m[1] not in locals_:
                locals_.append(m[1])
    routes: list[tuple[str, int, int]] = []   # (iface, network, prefix)
    for line in route.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8:
            try:
                mask = _le_ipv4(parts[7])
                routes.append((parts[0], _le_ipv4(parts[1]), bin(mask).count("1")))
            except ValueError:
                continue
    for address in locals_:
        value = int(ipaddress.IPv4Address(address))
        if address.startswith("127."):
            found.setdefault("lo", []).append(f"{address}/8")
            continue
        best: tuple[str, int] | None = None
        for iface, network, prefix in routes:
            if prefix == 0:
                continue
            mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
            if value & mask == network & mask and (best is None or prefix > best[1]):
                best = (iface, prefix)
        if best:
            found.setdefault(best[0], []).append(f"{address}/{best[1]}")
    for line in if_inet6.splitlines():
        parts = line.split()
        if len(parts) == 6 and len(parts[0]) == 32:
            address = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(parts[0]))
            found.setdefault(parts[5], []).append(f"{address}/{int(parts[2], 16)}")
    return found


# ---------------------------------------------------------------------------------------------
# Putting it together


_NOT_DISKS = re.compile(r"^(loop|ram|zram|dm-|md|sr|fd|nbd|drbd)")


def _is_disk(name: str, attrs: dict[str, list[str]]) -> bool:
    size = _int(attrs.get("size", [""])[0]) or 0
    return size > 0 and not _NOT_DISKS.match(name) and "dm/name" not in attrs


def _first(attrs: dict[str, list[str]], key: str) -> str | None:
    values = attrs.get(key)
    return _clean(values[0]) if values else None


def _serial_from_wwid(wwid: str | None) -> str | None:
    """SATA disks show their serial only inside the t10 wwid ("t10.ATA  MODEL  SERIAL")."""
    if wwid and wwid.startswith("t10.ATA"):
        parts = wwid.split()
        return parts[-1] if len(parts) >= 3 else None
    return None


@dataclass
class _Topology:
    """Block devices from /sys/block: sizes, partitions, and who sits on whom."""

    attrs: dict[str, dict[str, list[str]]]
    sizes: dict[str, int] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)      # partition -> disk
    slaves: dict[str, list[str]] = field(default_factory=dict)
    holders: dict[str, list[str]] = field(default_factory=dict)
    by_majmin: dict[str, str] = field(default_factory=dict)
    partitions: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> _Topology:
        topo = cls(parse_tabbed(text))
        for name, attrs in topo.attrs.items():
            size = _int(_first(attrs, "size"))
            if size is not None:
                topo.sizes[name] = size * SECTOR
            if dev := _first(attrs, "dev"):
                topo.by_majmin[dev] = name
            for slave in attrs.get("slave", []):
                topo.slaves.setdefault(name, []).append(slave)
                topo.holders.setdefault(slave, []).append(name)
            parts: dict[str, dict[str, str]] = {}
            for key in ("part:dev", "part:partition", "part:start", "part:size"):
                for value in attrs.get(key, []):
                    part, _, v = value.partition(" ")
                    parts.setdefault(part, {})[key[5:]] = v.strip()
            for part, values in parts.items():
                topo.parent[part] = name
                if "dev" in values:
                    topo.by_majmin[values["dev"]] = part
                if (size := _int(values.get("size"))) is not None:
                    topo.sizes[part] = size * SECTOR
            topo.partitions[name] = [{"name": p, **v} for p, v in parts.items()]
        return topo

    def disks_under(self, name: str, seen: frozenset[str] = frozenset()) -> list[str]:
        """The whole disks a device lives on (through partitions, dm and md)."""
        if name in seen:
            return []
        if name in self.parent:
            return [self.parent[name]]
        if name in self.slaves:
            found: list[str] = []
            for slave in self.slaves[name]:
                for disk in self.disks_under(slave, seen | {name}):
                    if disk not in found:
                        found.append(disk)
            return found
        return [name]


def _dev_path_to_kname(path: str, topo: _Topology, dm_names: dict[str, str]) -> str | None:
    base = path.rsplit("/", 1)[-1]
    if path.startswith("/dev/mapper/"):
        return dm_names.get(base)
    if base in topo.sizes or base in topo.attrs:
        return base
    if path.count("/") == 3 and path.startswith("/dev/"):   # /dev/vg0/root
        _, _, vg, lv = path.split("/")
        return dm_names.get(f"{vg.replace('-', '--')}-{lv.replace('-', '--')}")
    return None


def _split_dm_lvm_name(name: str) -> tuple[str, str] | None:
    """vg0-root -> (vg0, root); LVM doubles dashes inside names."""
    m = re.fullmatch(r"((?:[^-]|--)+)-((?:[^-]|--)+)", name)
    if not m:
        return None
    return m[1].replace("--", "-"), m[2].replace("--", "-")


@dataclass
class _Reader:
    """The sections by name; each one asked for and found empty leaves its note in `unknown`."""

    sections: dict[str, Section]
    unknown: list[str] = field(default_factory=list)

    def text(self, name: str, what: str | None = None) -> str:
        section = self.sections.get(name)
        if section is None or not section.text.strip():
            if what:
                self.unknown.append(what)
            return ""
        return section.text


@dataclass(frozen=True)
class _Host:
    hostname: str | None
    os: OsInfo
    cpu: CpuInfo | None
    memory_mib: int | None
    firmware: str | None
    machine: dict[str, str]


def _host(read: _Reader) -> _Host:
    """Name, OS, CPU, memory and firmware: the sections that describe the machine itself."""
    hostname = _clean(read.text("hostname", "hostname: /proc/sys/kernel/hostname unreadable"))
    uname = read.text("uname", "kernel: uname failed").splitlines()
    osr = parse_os_release(read.text("os-release", "os: no /etc/os-release"))
    os_info = OsInfo(id=osr.get("ID"), version_id=osr.get("VERSION_ID"),
                     pretty_name=osr.get("PRETTY_NAME"), id_like=osr.get("ID_LIKE"),
                     kernel=_clean(uname[0]) if uname else None,
                     arch=_clean(uname[1]) if len(uname) > 1 else None)
    cpu = parse_cpuinfo(read.text("cpuinfo", "cpu: /proc/cpuinfo unreadable"))
    memory = parse_meminfo_mib(read.text("meminfo", "memory: /proc/meminfo unreadable"))
    firmware_text = _clean(read.text("firmware", "firmware: /sys/firmware unreadable"))
    firmware = firmware_text if firmware_text in ("bios", "uefi") else None
    return _Host(hostname, os_info, cpu, memory, firmware, parse_key_tab_value(read.text("dmi")))


@dataclass(frozen=True)
class _Block:
    """The block sections joined: topology, lsblk rows, partition tables, mounts, filesystems."""

    topo: _Topology
    lsblk: dict[str, dict[str, str]]
    dm_names: dict[str, str]      # dm name (vg0-root) -> kernel name (dm-0)
    pttype: dict[str, str]        # kernel name -> partition table type, as blkid saw it
    mount_of: dict[str, Mount]    # kernel name -> its shortest mountpoint
    filesystems: tuple[Filesystem, ...]

    @property
    def fs_by_kname(self) -> dict[str, Filesystem]:
        return {fs.device: fs for fs in self.filesystems}


def _block(read: _Reader) -> _Block:
    topo = _Topology.parse(read.text("sysblock", "disks: /sys/block unreadable"))
    lsblk = parse_lsblk_pairs(read.text("lsblk", "disk details: lsblk failed (model, serial, "
                                                 "partition table may be unknown)"))
    blkid = parse_blkid_export(read.text("blkid", "filesystems: blkid found nothing"))
    mounts = parse_mountinfo(read.text("mountinfo", "mounts: /proc/self/mountinfo unreadable"))
    df = parse_df(read.text("df", "filesystem usage: df failed"))
    swaps = parse_swaps(read.text("swaps"))

    dm_names = {v[0]: k for k, a in topo.attrs.items() if (v := a.get("dm/name"))}
    content, pttype = _contents(blkid, lsblk, topo, dm_names)
    mount_of: dict[str, Mount] = {}
    for mount in mounts:
        kname = topo.by_majmin.get(mount.majmin)
        if kname and (kname not in mount_of or len(mount.mountpoint) < len(
                mount_of[kname].mountpoint)):
            mount_of[kname] = mount
    swap_on = {_dev_path_to_kname(p, topo, dm_names) for p in swaps}
    filesystems = tuple(_filesystem(kname, content[kname], mount_of.get(kname), df,
                                    kname in swap_on)
                        for kname in sorted(content, key=_natural))
    return _Block(topo, lsblk, dm_names, pttype, mount_of, filesystems)


def _contents(blkid: dict[str, dict[str, str]], lsblk: dict[str, dict[str, str]],
              topo: _Topology, dm_names: dict[str, str]
              ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """What each device holds: blkid (any device), then lsblk for what blkid could not see;
    and the partition tables blkid found."""
    content: dict[str, dict[str, str]] = {}
    pttype: dict[str, str] = {}
    for devname, values in blkid.items():
        kname = _dev_path_to_kname(devname, topo, dm_names)
        if kname and values.get("PTTYPE"):
            pttype[kname] = values["PTTYPE"]
        if kname and values.get("TYPE"):
            content[kname] = {**values, "DEVNAME": devname}
    for kname, row in lsblk.items():
        if "FSTYPE" in row and kname not in content:
            content[kname] = {"TYPE": row["FSTYPE"], "UUID": row.get("UUID", ""),
                              "LABEL": row.get("LABEL", ""), "DEVNAME": f"/dev/{kname}"}
    return content, pttype


def _filesystem(kname: str, values: dict[str, str], mounted: Mount | None,
                df: dict[str, DfRow], swap: bool) -> Filesystem:
    usage = df.get(mounted.mountpoint) if mounted else None
    mountpoint = mounted.mountpoint if mounted else ("[SWAP]" if swap else None)
    return Filesystem(
        device=kname, path=values.get("DEVNAME"), type=_clean(values.get("TYPE")),
        uuid=_clean(values.get("UUID")), label=_clean(values.get("LABEL")),
        mountpoint=mountpoint,
        size_bytes=usage.size_bytes if usage else None,
        used_bytes=usage.used_bytes if usage else None,
        free_bytes=(usage.size_bytes - usage.used_bytes) if usage else None,
    )


def _device_mapper(topo: _Topology) -> tuple[list[DmDevice], list[LvmLv]]:
    """Every dm device, and the LVs among them (named vg-lv, uuid LVM-...)."""
    dm: list[DmDevice] = []
    lvs: list[LvmLv] = []
    for name in sorted((n for n in topo.attrs if "dm/name" in topo.attrs[n]), key=_natural):
        attrs = topo.attrs[name]
        uuid = _first(attrs, "dm/uuid")
        dm_name = _first(attrs, "dm/name")
        kind = "other"
        if uuid:
            kind = {"LVM": "lvm", "CRYPT": "crypt", "mpath": "multipath"}.get(
                uuid.split("-", 1)[0], "other")
        dm.append(DmDevice(device=name, name=dm_name, uuid=uuid, kind=kind,
                           slaves=tuple(topo.slaves.get(name, [])),
                           size_bytes=topo.sizes.get(name)))
        if kind == "lvm" and dm_name and (split := _split_dm_lvm_name(dm_name)):
            lvs.append(LvmLv(name=split[1], vg=split[0], device=name,
                             path=f"/dev/mapper/{dm_name}", size_bytes=topo.sizes.get(name)))
    return dm, lvs


def _lvm(read: _Reader, block: _Block, lvs: list[LvmLv]) -> LvmInfo:
    """PVs and VGs from LVM's own report when the tools ran, else from /sys and blkid."""
    topo = block.topo
    pv_rows = parse_lvm_report(read.text("pvs"), 4)
    vg_rows = parse_lvm_report(read.text("vgs"), 5)
    pvs: list[LvmPv] = []
    pv_knames = [f.device for f in block.filesystems if f.type == "LVM2_member"]
    report_pv = {(_dev_path_to_kname(r[0], topo, block.dm_names) or r[0]): r for r in pv_rows}
    for kname in sorted(set(pv_knames) | set(report_pv), key=_natural):
        pv_row = report_pv.get(kname)
        vg = _clean(pv_row[1]) if pv_row else next(
            (lv.vg for lv in lvs if lv.device and kname in topo.slaves.get(lv.device, [])), None)
        pvs.append(LvmPv(device=kname, vg=vg,
                         size_bytes=_int(pv_row[2]) if pv_row else topo.sizes.get(kname),
                         free_bytes=_int(pv_row[3]) if pv_row else None))
    vgs: list[LvmVg] = []
    vg_names = sorted({p.vg for p in pvs if p.vg} | {lv.vg for lv in lvs} | {r[0] for r in vg_rows})
    for vg_name in vg_names:
        vg_row = next((r for r in vg_rows if r[0] == vg_name), None)
        members = tuple(p.device for p in pvs if p.vg == vg_name)
        size = _int(vg_row[1]) if vg_row else (sum(topo.sizes.get(m, 0) for m in members) or None)
        vgs.append(LvmVg(name=vg_name, size_bytes=size,
                         free_bytes=_int(vg_row[2]) if vg_row else None, pvs=members))
    if (pvs or lvs) and not vg_rows:
        read.unknown.append("lvm: pvs/vgs not available; VG sizes from /sys, free space unknown")
    return LvmInfo(pvs=tuple(pvs), vgs=tuple(vgs), lvs=tuple(lvs))


def _md_arrays(read: _Reader, topo: _Topology) -> tuple[MdArray, ...]:
    """md arrays from /sys, with /proc/mdstat for what /sys does not say."""
    mdstat = parse_mdstat(read.text("mdstat"))
    md: list[MdArray] = []
    for name in sorted((n for n in topo.attrs if n.startswith("md")), key=_natural):
        level = _first(topo.attrs[name], "md/level") or mdstat.get(name, (None, ()))[0]
        members = tuple(topo.slaves.get(name, [])) or mdstat.get(name, (None, ()))[1]
        md.append(MdArray(name=name, level=level, devices=members,
                          size_bytes=topo.sizes.get(name)))
    return tuple(md)


@dataclass(frozen=True)
class _Savings:
    """What the copy can skip on a device: free blocks of ext*/xfs, all of swap, and
    whatever its holders (LVs, arrays) skip."""

    topo: _Topology
    fs_by_kname: dict[str, Filesystem]
    md_level: dict[str, str | None]

    def __call__(self, kname: str, seen: frozenset[str] = frozenset()) -> int:
        size = self.topo.sizes.get(kname, 0)
        fs = self.fs_by_kname.get(kname)
        if fs and fs.type == "swap":
            return size
        if fs and fs.type in FS_AWARE:
            return min(size, fs.free_bytes or 0)
        total = 0
        for holder in self.topo.holders.get(kname, []):
            if holder in seen:
                continue
            share = self(holder, seen | {kname})
            members = len(self.topo.slaves.get(holder, [])) or 1
            # A mirror member holds a whole copy of the array; others hold a share of it.
            if self.md_level.get(holder) not in ("raid1",):
                share //= members
            total += share
        return min(size, total)


def _disk(name: str, block: _Block, savings: _Savings, boot: bool) -> DiskInfo:
    """One whole disk with its partitions; its copy estimate is its size minus the savings."""
    topo, lsblk, fs_by_kname = block.topo, block.lsblk, savings.fs_by_kname
    attrs = topo.attrs[name]
    row = lsblk.get(name, {})
    size = topo.sizes.get(name)
    parts: list[Partition] = []
    part_savings = 0
    for p in sorted(topo.partitions.get(name, []), key=lambda p: _natural(p["name"])):
        pname = p["name"]
        start = _int(p.get("start"))
        parts.append(Partition(
            name=pname, number=_int(p.get("partition")),
            start_bytes=start * SECTOR if start is not None else None,
            size_bytes=topo.sizes.get(pname), type=_clean(lsblk.get(pname, {}).get("PARTTYPE")),
            content=fs_by_kname[pname].type if pname in fs_by_kname else None,
        ))
        part_savings += savings(pname)
    disk_savings = part_savings if parts else savings(name)
    table = _clean(row.get("PTTYPE"))
    if table is None:
        table = block.pttype.get(name)
    return DiskInfo(
        name=name, path="/dev/" + name.replace("!", "/"), size_bytes=size,
        model=_clean(row.get("MODEL")) or _first(attrs, "device/model"),
        vendor=_first(attrs, "device/vendor"),
        serial=_clean(row.get("SERIAL")) or _first(attrs, "device/serial")
        or _first(attrs, "serial") or _serial_from_wwid(_first(attrs, "device/wwid")),
        transport=_clean(row.get("TRAN")),
        rotational=_bool(_first(attrs, "queue/rotational")),
        removable=_bool(_first(attrs, "removable")),
        read_only=_bool(_first(attrs, "ro")),
        table=table, partitions=tuple(parts), boot=boot,
        copy_bytes_estimate=None if size is None else max(0, size - disk_savings),
        wwid=_first(attrs, "device/wwid") or _first(attrs, "wwid"),
    )


def build_inventory(output: str) -> Inventory:
    """The Inventory of a source from the collection script's output (pure)."""
    read = _Reader(split_sections(output))
    host = _host(read)
    block = _block(read)
    topo = block.topo
    dm, lvs = _device_mapper(topo)
    lvm = _lvm(read, block, lvs)
    md = _md_arrays(read, topo)

    savings = _Savings(topo, block.fs_by_kname, {m.name: m.level for m in md})
    boot_disk = _boot_disk(block.mount_of, topo, host.firmware)
    disks = tuple(_disk(name, block, savings, name == boot_disk)
                  for name in sorted((n for n, a in topo.attrs.items() if _is_disk(n, a)),
                                     key=_natural))
    if not disks:
        read.unknown.append("disks: no disks found in /sys/block")
    if boot_disk is None and disks:
        read.unknown.append("boot disk: no mounted /boot, /boot/efi or / on a disk")
    estimates = [d.copy_bytes_estimate for d in disks]
    total = sum(e for e in estimates if e is not None) if None not in estimates else None

    physical, virtual = _nics(read.sections, read.text)
    if missing := [n for n, s in read.sections.items() if s.rc is None]:
        read.unknown.append("collection cut off in: " + ", ".join(missing))
    return Inventory(
        hostname=host.hostname, firmware=cast("Firmware | None", host.firmware), os=host.os,
        cpu=host.cpu, memory_mib=host.memory_mib, machine=host.machine, disks=disks,
        filesystems=block.filesystems, lvm=lvm, md=md, dm=tuple(dm), nics=physical,
        virtual_nics=virtual, boot_disk=boot_disk, copy_bytes_estimate=total,
        unknown=tuple(read.unknown),
    )


def _bool(text: str | None) -> bool | None:
    return None if text not in ("0", "1") else text == "1"


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _boot_disk(mount_of: dict[str, Mount], topo: _Topology, firmware: str | None) -> str | None:
    """The disk holding the ESP (UEFI), else /boot, else /."""
    order = ["/boot/efi", "/efi", "/boot", "/"] if firmware == "uefi" else ["/boot", "/"]
    by_mountpoint = {m.mountpoint: k for k, m in mount_of.items()}
    for mountpoint in order:
        if mountpoint in by_mountpoint:
            disks = topo.disks_under(by_mountpoint[mountpoint])
            if disks:
                return disks[0]
    return None


def _nics(sec: dict[str, Section], read: Callable[..., str]
          ) -> tuple[tuple[NicInfo, ...], tuple[NicInfo, ...]]:
    table = parse_tabbed(read("sysnet", "network: /sys/class/net unreadable"))
    ipaddr = sec.get("ipaddr")
    if ipaddr is not None and ipaddr.ok:
        addresses = parse_ip_addr(ipaddr.text)
    else:
        addresses = parse_proc_addresses(read("fib_trie"), read("route"), read("if_inet6"))
    physical: list[NicInfo] = []
    virtual: list[NicInfo] = []
    for name, attrs in sorted(table.items(), key=lambda kv: _int(_first(kv[1], "ifindex")) or 0):
        if _first(attrs, "type") == "772" or name == "lo":     # loopback
            continue
        mac = _first(attrs, "address")
        try:
            mac = normalise_mac(mac) if mac else None
        except UsageError:   # not an Ethernet MAC (InfiniBand, tunnels)
            mac = None
        speed = _int(_first(attrs, "speed"))
        nic = NicInfo(
            name=name, mac=mac, driver=_first(attrs, "driver"),
            addresses=tuple(addresses.get(name, [])), state=_first(attrs, "operstate"),
            mtu=_int(_first(attrs, "mtu")), speed_mbps=speed if speed and speed > 0 else None,
            physical="physical" in attrs, kind=_first(attrs, "kind"),
            master=_first(attrs, "master"),
        )
        (physical if nic.physical and nic.mac else virtual).append(nic)
    return tuple(physical), tuple(virtual)


def inspect_source(source: SshSource, timeout: float = 300) -> Inventory:
    """Run the collection script once on the source (as root) and build its Inventory.

    The script's own exit status is ignored: each section reports its own, and a missing
    tool only makes its section empty.
    """
    result = source.run(["sh", "-c", COLLECT_SCRIPT], timeout=timeout, check=False)
    if "@@p2v hostname@@" not in result.text:
        from p2v.errors import RemoteCommandFailed

        raise RemoteCommandFailed(command="sh -c <inventory script>", host=source.target.host,
                                  returncode=result.returncode,
                                  stderr_tail=result.stderr.strip()[-300:] or "(no output)")
    return build_inventory(result.text)


def format_inventory(inv: Inventory) -> list[str]:
    """The human table `p2v inspect` prints (the JSON holds everything)."""
    cpu = inv.cpu
    lines = [
        f"{inv.hostname or '?'}: {inv.os.pretty_name or inv.os.id or '?'}, kernel "
        f"{inv.os.kernel or '?'} ({inv.os.arch or '?'}), firmware {inv.firmware or '?'}",
        "  machine  " + (" ".join(v for k, v in inv.machine.items()
                                  if k in ("sys_vendor", "product_name")) or "?"),
        "  cpu      " + (f"{cpu.logical} ({cpu.sockets} socket x {cpu.cores} core x "
                         f"{cpu.threads} thread) {cpu.model or ''}".rstrip() if cpu else "?"),
        f"  memory   {inv.memory_mib or '?'} MiB",
    ]
    fs_of = {f.device: f for f in inv.filesystems}

    def fs_text(device: str | None) -> str:
        fs = fs_of.get(device or "")
        if fs is None:
            return ""
        usage = (f"  used {human_size(fs.used_bytes)}, free {human_size(fs.free_bytes)}"
                 if fs.used_bytes is not None else "")
        return f"{fs.type or '?'}{(' ' + fs.mountpoint) if fs.mountpoint else ''}{usage}"

    for disk in inv.disks:
        lines.append(
            f"  disk     {disk.path:<14} {human_size(disk.size_bytes):>10}  "
            f"{disk.table or '-':<4} {disk.model or '?'} (serial {disk.serial or '?'})"
            + ("  [boot]" if disk.boot else "")
            + f"  copy <= {human_size(disk.copy_bytes_estimate)}")
        for part in disk.partitions:
            lines.append(f"    {part.name:<12} {human_size(part.size_bytes):>10}  "
                         f"{fs_text(part.name)}".rstrip())
    for lv in inv.lvm.lvs:
        lines.append(f"  lvm      {lv.vg + '/' + lv.name:<14} {human_size(lv.size_bytes):>10}  "
                     f"{fs_text(lv.device)}".rstrip())
    for md in inv.md:
        lines.append(f"  md       {md.name:<14} {human_size(md.size_bytes):>10}  "
                     f"{md.level or '?'} on {', '.join(md.devices) or '?'}")
    for nic in inv.nics + inv.virtual_nics:
        lines.append(f"  nic      {nic.name:<14} {nic.mac or '-':<17}  "
                     f"{nic.driver or nic.kind or '-':<8} {nic.state or '?':<7} "
                     f"{', '.join(nic.addresses) or 'no address'}")
    lines.append(f"  boot disk {inv.boot_disk or '?'}; a copy sends at most "
                 f"{human_size(inv.copy_bytes_estimate)} (before zero skipping and compression)")
    lines += [f"  unknown: {note}" for note in inv.unknown]
    return lines
