import collections
import os
import re
import struct
import zlib


def _pread(fd, n, off):
    if not isinstance(fd, int):
        return fd.pread(n, off)     # an LVM logical volume: _LvView
    os.lseek(fd, off, 0)
    return os.read(fd, n)

_ExtGeometry = collections.namedtuple(
    "_ExtGeometry", "blocks first_data bs per_group groups itable_len desc_size reserved_gdt "
    "ro_compat")

def _ext_geometry(sb):
    # What the free map needs from an ext2/3/4 superblock; None when it is not one, or one
    # laid out in a way this reader does not follow.
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 56)[0] != 0xEF53:
        return None
    (blocks_lo, first_data, log_bs, per_group, inodes_per_group) = (
        struct.unpack_from("<I", sb, 4)[0], struct.unpack_from("<I", sb, 20)[0],
        struct.unpack_from("<I", sb, 24)[0], struct.unpack_from("<I", sb, 32)[0],
        struct.unpack_from("<I", sb, 40)[0])
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 92)
    inode_size = struct.unpack_from("<H", sb, 88)[0] or 128
    bs = 1024 << log_bs
    if incompat & 0x10 or compat & 0x200 or per_group == 0 or per_group > bs * 8:
        return None                 # meta_bg or sparse_super2: not worth the risk
    wide = bool(incompat & 0x80)
    blocks = blocks_lo | ((struct.unpack_from("<I", sb, 0x150)[0] << 32) if wide else 0)
    desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if wide else 32
    return _ExtGeometry(
        blocks, first_data, bs, per_group, (blocks - first_data + per_group - 1) // per_group,
        (inodes_per_group * inode_size + bs - 1) // bs, desc_size or 32,
        struct.unpack_from("<H", sb, 0xCE)[0], ro_compat)

def _ext_descriptors(fd, base, geo):
    # ([(block bitmap block, flags)] per group, [(first, last+1) block of every group's
    # metadata]) from the group descriptor table; None when it is cut short.
    gdt = _pread(fd, geo.groups * geo.desc_size, base + (geo.first_data + 1) * geo.bs)
    if len(gdt) < geo.groups * geo.desc_size:
        return None
    def field(d, lo, hi):
        v = struct.unpack_from("<I", d, lo)[0]
        if geo.desc_size >= 64:
            v |= struct.unpack_from("<I", d, hi)[0] << 32
        return v
    meta = []
    descs = []
    for g in range(geo.groups):
        d = gdt[g * geo.desc_size:(g + 1) * geo.desc_size]
        bb, ib, it = field(d, 0, 0x20), field(d, 4, 0x24), field(d, 8, 0x28)
        flags = struct.unpack_from("<H", d, 0x12)[0]
        descs.append((bb, flags))
        meta += [(bb, bb + 1), (ib, ib + 1), (it, it + geo.itable_len)]
    return descs, meta

def _ext_has_backup(g, ro_compat):
    # Whether group g holds a superblock backup: all do, unless sparse_super keeps them
    # in groups 0, 1 and the powers of 3, 5 and 7.
    if g <= 1 or not ro_compat & 1:
        return True
    for p in (3, 5, 7):
        n = p
        while n < g:
            n *= p
        if n == g:
            return True
    return False

def _ext_uninit_free(base, geo, g, start, count, meta):
    # A BLOCK_UNINIT group: free but for the superblock backup and the metadata in it.
    gdt_blocks = (geo.groups * geo.desc_size + geo.bs - 1) // geo.bs
    bs = geo.bs
    lo = start + (1 + gdt_blocks + geo.reserved_gdt if _ext_has_backup(g, geo.ro_compat) else 0)
    cuts = sorted((max(a, lo), min(z, start + count)) for a, z in meta
                  if z > lo and a < start + count)
    free = []
    for a, z in cuts:
        if a > lo:
            free.append((base + lo * bs, base + a * bs))
        lo = max(lo, z)
    if lo < start + count:
        free.append((base + lo * bs, base + (start + count) * bs))
    return free

def _ext_free(fd, base, limit):
    geo = _ext_geometry(_pread(fd, 1024, base + 1024))
    if geo is None or geo.blocks * geo.bs > limit:
        return None
    got = _ext_descriptors(fd, base, geo)
    if got is None:
        return None
    descs, meta = got
    bs = geo.bs
    free = []
    for g in range(geo.groups):
        start = geo.first_data + g * geo.per_group
        count = min(geo.per_group, geo.blocks - start)
        bb, flags = descs[g]
        if flags & 0x2:             # BLOCK_UNINIT
            free += _ext_uninit_free(base, geo, g, start, count, meta)
            continue
        bitmap = _pread(fd, bs, base + bb * bs)
        if len(bitmap) < bs:
            return None
        # Whole zero bytes only (8 free blocks each): partial bytes count as used.
        for m in re.finditer(b"\\x00+", bitmap[: count // 8]):
            free.append((base + (start + m.start() * 8) * bs, base + (start + m.end() * 8) * bs))
    return free

_XfsGeometry = collections.namedtuple(
    "_XfsGeometry", "bs agblocks agcount sectsize v5 hdr magic node_max leaf_max")

def _xfs_geometry(sb, limit):
    # What the free map needs from an XFS superblock; None when it is not one it can read.
    if len(sb) < 512 or sb[:4] != b"XFSB":
        return None
    bs, dblocks = struct.unpack_from(">IQ", sb, 4)
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    version, sectsize = struct.unpack_from(">HH", sb, 100)
    if (bs < 512 or bs > 65536 or bs & (bs - 1) or sectsize < 512 or sectsize > bs
            or not agblocks or not agcount or dblocks * bs > limit
            or agcount * agblocks < dblocks or (agcount - 1) * agblocks >= dblocks):
        return None
    v5 = version & 0xF == 5
    hdr, magic = (56, b"AB3B") if v5 else (16, b"ABTB")
    # A node's keys and pointers; a leaf's records.
    return _XfsGeometry(bs, agblocks, agcount, sectsize, v5, hdr, magic, (bs - hdr) // 12,
                        (bs - hdr) // 8)

def _xfs_block(fd, base, geo, ag, agbno, length):
    # Block agbno of allocation group ag when it is a bnobt block; else None.
    if not 0 < agbno < length:
        return None
    daddr = ag * geo.agblocks + agbno
    b = _pread(fd, geo.bs, base + daddr * geo.bs)
    if len(b) < geo.bs or b[:4] != geo.magic:
        return None
    if geo.v5 and struct.unpack_from(">Q", b, 16)[0] != daddr * (geo.bs // 512):
        return None
    return b

def _xfs_leftmost_leaf(fd, base, geo, ag):
    # (the leftmost leaf of ag's bnobt, the AG's length in blocks), found from its AGF;
    # None when the tree is not as expected.
    agf = _pread(fd, 64, base + ag * geo.agblocks * geo.bs + geo.sectsize)
    if len(agf) < 64 or agf[:4] != b"XAGF" or struct.unpack_from(">I", agf, 8)[0] != ag:
        return None
    length, root = struct.unpack_from(">II", agf, 12)
    levels = struct.unpack_from(">I", agf, 28)[0]
    if length > geo.agblocks or not 0 < levels <= 8:
        return None
    b = _xfs_block(fd, base, geo, ag, root, length)
    for depth in range(levels - 1, 0, -1):
        if b is None or struct.unpack_from(">HH", b, 4)[0] != depth:
            return None
        if struct.unpack_from(">HH", b, 4)[1] < 1:
            return None
        b = _xfs_block(fd, base, geo, ag,
                       struct.unpack_from(">I", b, geo.hdr + geo.node_max * 8)[0], length)
    return None if b is None else (b, length)

def _xfs_ag_free(fd, base, geo, ag):
    # The free extents of allocation group ag: its bnobt leaves' records, from the leftmost
    # leaf along the right-sibling chain. None when anything does not add up.
    got = _xfs_leftmost_leaf(fd, base, geo, ag)
    if got is None:
        return None
    b, length = got
    hdr, bs, ag_start = geo.hdr, geo.bs, ag * geo.agblocks
    free = []
    hops = 0
    while True:
        if b is None:
            return None
        level, n, right = struct.unpack_from(">HH", b, 4) + struct.unpack_from(">I", b, 12)
        if level != 0 or n > geo.leaf_max:
            return None
        for k in range(n):
            start, count = struct.unpack_from(">II", b, hdr + 8 * k)
            if not count or start + count > length:
                return None
            first = base + (ag_start + start) * bs
            free.append((first, first + count * bs))
        if right == 0xFFFFFFFF:
            return free
        hops += 1
        if hops > length:
            return None
        b = _xfs_block(fd, base, geo, ag, right, length)

def _xfs_free(fd, base, limit):
    # The free extents of every allocation group's by-block-number B+tree (bnobt), from
    # its AGF: leftmost path down to the leaves, then the leaves' right-sibling chain.
    geo = _xfs_geometry(_pread(fd, 512, base), limit)
    if geo is None:
        return None
    free = []
    for ag in range(geo.agcount):
        got = _xfs_ag_free(fd, base, geo, ag)
        if got is None:
            return None
        free += got
    return free

def _swap_free(fd, base, size):
    for page in (4096, 8192, 16384, 65536):
        if page <= size and _pread(fd, 10, base + page - 10) == b"SWAPSPACE2":
            return [(base + page, base + size)]
    return None

def _crc(data, crc=0xF597A6CF):
    # LVM2's checksum: CRC-32 (zlib's polynomial) seeded with 0xf597a6cf, no final inversion.
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\]=,]|[^\s{}\[\]=,"#]+')

def _lvm_parse(text):
    # LVM2 text metadata (sections, key = value, arrays) -> nested dicts. Anything odd raises.
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError("bad metadata text")
        t = m.group()
        pos = m.end()
        if not (t[0].isspace() or t[0] == "#"):
            toks.append(t)
    def value(t):
        if t[0] == '"':
            return re.sub(r"\\(.)", r"\1", t[1:-1])
        if re.match(r"-?[0-9]+$", t):
            return int(t)
        raise ValueError("bad value " + t)
    def section(i, top):
        out = {}
        while i < len(toks):
            name = toks[i]
            if name == "}":
                if top:
                    raise ValueError("stray }")
                return out, i + 1
            if name in "{}[]=,\"" or name[0] == '"' or name in out:
                raise ValueError("bad or repeated key " + name)
            op = toks[i + 1]
            if op == "{":
                out[name], i = section(i + 2, False)
            elif op == "=" and toks[i + 2] == "[":
                items, i = [], i + 3
                while toks[i] != "]":
                    items.append(value(toks[i]))
                    i += 1
                    if toks[i] == ",":
                        i += 1
                    elif toks[i] != "]":
                        raise ValueError("bad array")
                out[name], i = items, i + 1
            elif op == "=":
                out[name], i = value(toks[i + 2]), i + 3
            else:
                raise ValueError("bad token " + op)
        if not top:
            raise ValueError("unclosed section")
        return out, i
    return section(0, True)[0]

def _lvm_texts(fd, base, size):
    # (PV uuid, data area offset, [metadata text of each in-use metadata area]) of the PV
    # at base, or None when there is no LVM2 label; raises on anything inconsistent.
    for sector in range(4):
        s = _pread(fd, 512, base + sector * 512)
        if len(s) == 512 and s[:8] == b"LABELONE":
            break
    else:
        return None
    number, crc, offset = struct.unpack_from("<QII", s, 8)
    if (number != sector or crc != _crc(s[20:]) or s[24:32] != b"LVM2 001"
            or not 32 <= offset <= 400):
        raise ValueError("bad LVM label")
    uuid = s[offset:offset + 32]
    rest = _pread(fd, 4096, base + sector * 512 + offset + 40)
    locns, lists, k = [], [], 0
    while len(lists) < 2:
        o, z = struct.unpack_from("<QQ", rest, k)
        k += 16
        if o == 0 and z == 0:
            lists.append(locns)
            locns = []
        else:
            locns.append((o, z))
    (data, mdas) = lists
    if len(data) != 1 or not mdas:
        raise ValueError("unexpected PV areas")
    texts = []
    for mda_off, mda_size in mdas:
        if mda_off + mda_size > size or mda_size < 1024:
            raise ValueError("metadata area out of range")
        h = _pread(fd, 512, base + mda_off)
        if (len(h) < 512 or struct.unpack_from("<I", h)[0] != _crc(h[4:])
                or h[4:20] != b" LVM2 x[5A%r0N*>"
                or struct.unpack_from("<IQQ", h, 20) != (1, mda_off, mda_size)):
            raise ValueError("bad metadata area header")
        o, z, crc, flags = struct.unpack_from("<QQII", h, 40)
        if struct.unpack_from("<QQII", h, 64) != (0, 0, 0, 0):
            raise ValueError("pending metadata")        # a precommitted copy: in flux
        if flags & 1:
            continue                                    # metadataignore: not kept up to date
        if not z or z > mda_size - 512 or not 512 <= o < mda_size:
            raise ValueError("no metadata")
        first = min(z, mda_size - o)
        text = _pread(fd, first, base + mda_off + o)
        if first < z:                                   # wraps to just past the header
            text += _pread(fd, z - first, base + mda_off + 512)
        if len(text) != z or _crc(text) != crc:
            raise ValueError("metadata checksum")
        texts.append(text)
    if not texts or any(t != texts[0] for t in texts):
        raise ValueError("metadata areas disagree")
    return uuid.decode("ascii"), data[0][0], texts

class _LvView:
    # A logical volume read through its segment map: [(lv offset, device offset, length)].
    def __init__(self, fd, segs):
        self.fd, self.segs = fd, segs
        self.size = sum(n for _, _, n in segs)
    def pread(self, n, off):
        out = b""
        for lv, dev, length in self.segs:
            if n <= 0:
                break
            if lv <= off < lv + length:
                take = min(n, lv + length - off)
                got = _pread(self.fd, take, dev + off - lv)
                out += got
                if len(got) < take:
                    break
                off, n = off + take, n - take
        return out
    def to_device(self, a, z):
        out = []
        for lv, dev, length in self.segs:
            lo, hi = max(a, lv), min(z, lv + length)
            if lo < hi:
                out.append((dev + lo - lv, dev + hi - lv))
        return out

def _lvm_layout(text, uuid, data_off, size):
    # From a PV's VG metadata: (byte ranges of its extents no LV uses, {LV name: [(LV
    # offset, PV offset, length)]} of the visible linear LVs wholly on it that nothing
    # else refers to), offsets from the PV's start. Raises on anything not understood.
    vg, mine, start, count, ext = _lvm_pv(text, uuid, data_off, size)
    used = [False] * count
    refs = set()            # names other segments use: origins, sub-LVs, pools, PVs
    plain = {}              # LV name -> [(first LV extent, extents, first PV extent)]
    for name, lv in vg.get("logical_volumes", {}).items():
        mapped = _lvm_lv_extents(lv, vg["physical_volumes"], mine, count, used, refs)
        if mapped is not None:
            plain[name] = mapped
    if mine in refs:
        raise ValueError("PV named outside striped segments")   # pvmove, old mirrors
    free = []
    e = 0
    while e < count:
        if used[e]:
            e += 1
            continue
        f = e
        while e < count and not used[e]:
            e += 1
        free.append((start + f * ext, start + e * ext))
    lvmap = {}
    for name, mapped in plain.items():
        if name not in refs:
            segs = _lvm_linear(mapped, start, ext)
            if segs:
                lvmap[name] = segs
    return free, lvmap

def _lvm_pv(text, uuid, data_off, size):
    # (the VG, this PV's name in it, its first extent's offset, its extent count, the
    # extent size in bytes), checked against what its label says.
    meta = _lvm_parse(text)
    vgs = [v for v in meta.values() if isinstance(v, dict)]
    if (len(vgs) != 1 or meta.get("contents") != "Text Format Volume Group"
            or meta.get("version") != 1):
        raise ValueError("not one VG")
    vg = vgs[0]
    ext = vg["extent_size"] * 512
    pvs = vg["physical_volumes"]
    mine = [k for k, pv in pvs.items() if pv["id"].replace("-", "") == uuid]
    if len(mine) != 1 or ext <= 0:
        raise ValueError("PV not in its VG")
    pv = pvs[mine[0]]
    start, count = pv["pe_start"] * 512, pv["pe_count"]
    if start != data_off or start + count * ext > size:
        raise ValueError("extents out of range")
    return vg, mine[0], start, count, ext

def _lvm_lv_extents(lv, pvs, mine, count, used, refs):
    # Marks the extents of PV `mine` that LV lv uses, and adds to refs the names its
    # segments refer to; [(first LV extent, extents, first PV extent)] when lv is a visible
    # linear LV wholly on this PV, else None.
    segs = [v for v in lv.values() if isinstance(v, dict)]
    if len(segs) != lv["segment_count"]:
        raise ValueError("segment count")
    status = lv["status"]
    ok = (isinstance(status, list) and "VISIBLE" in status and "LOCKED" not in status
          and not lv.get("flags"))
    mapped = []
    for seg in segs:
        n, stripes = seg["extent_count"], seg.get("stripes")
        if seg["type"] != "striped" or not isinstance(stripes, list):
            ok = False
            for v in seg.values():
                for item in v if isinstance(v, list) else [v]:
                    if isinstance(item, str):
                        refs.add(item)
            continue
        width = seg["stripe_count"]
        if width < 1 or len(stripes) != 2 * width or n % width:
            raise ValueError("bad stripes")
        for i in range(width):
            where, first = stripes[2 * i], stripes[2 * i + 1]
            if where not in pvs:
                refs.add(where)
                ok = False
            elif where == mine:
                _lvm_use(used, first, n // width, count)
                if width == 1:
                    mapped.append((seg["start_extent"], n, first))
                else:
                    ok = False
            else:
                ok = False      # on another PV
    return mapped if ok else None

def _lvm_use(used, first, n, count):
    # Marks extents first .. first+n-1 of the PV's count used; raises when one is out of
    # range or already taken.
    if first < 0 or first + n > count:
        raise ValueError("segment out of range")
    for e in range(first, first + n):
        if used[e]:
            raise ValueError("extent used twice")
        used[e] = True

def _lvm_linear(mapped, start, ext):
    # An LV's segments as [(LV offset, PV offset, length)] in bytes, as far as they run on
    # from its start without a gap.
    mapped.sort()
    segs, at = [], 0
    for first, n, pe in mapped:
        if first != at:
            return []
        segs.append((first * ext, start + pe * ext, n * ext))
        at += n
    return segs

def _lvm_free(fd, base, size):
    # Free space of an LVM2 PV: its extents no LV uses, and the free space of the
    # filesystems on its plain linear LVs. None: not a PV. Raises when unsure.
    got = _lvm_texts(fd, base, size)
    if got is None:
        return None
    uuid, data_off, texts = got
    free, lvmap = _lvm_layout(texts[0].rstrip(b"\0").decode("utf-8"), uuid, data_off, size)
    free = [(base + a, base + z) for a, z in free]
    for segs in lvmap.values():
        view = _LvView(fd, [(lv, base + dev, n) for lv, dev, n in segs])
        try:
            got = _ext_free(view, 0, view.size)
            if got is None:
                got = _xfs_free(view, 0, view.size)
            if got is None:
                got = _swap_free(view, 0, view.size)
        except (OSError, struct.error, IndexError, ValueError):
            got = None
        for a, z in got or []:
            if not 0 <= a < z <= view.size:
                raise ValueError("free range outside the LV")
            free += view.to_device(a, z)
    return free

def _md1_data(fd, base, size):
    # The data area (start, length) of an in-sync RAID1 member whose v1.1 or v1.2
    # superblock (at 0 or 4 KiB) precedes its data: each member holds the whole array, so
    # what is on the array lies there as it is (0.90 and 1.0 keep theirs at the end, their
    # data at the start is seen directly). None: not such a member, or one whose data may
    # not be current (a spare, faulty, recovering, resyncing or reshaping member, a bad
    # checksum).
    for sector in (0, 8):
        if (sector << 9) + 1024 > size:
            continue
        sb = _pread(fd, 1024, base + (sector << 9))
        if len(sb) < 1024 or struct.unpack_from("<II", sb, 0) != (0xA92B4EFC, 1):
            continue
        features, level = struct.unpack_from("<I", sb, 8)[0], struct.unpack_from("<i", sb, 72)[0]
        used, data_off = struct.unpack_from("<Q", sb, 80)[0], struct.unpack_from("<Q", sb, 128)[0]
        super_off = struct.unpack_from("<Q", sb, 144)[0]
        resync = struct.unpack_from("<Q", sb, 208)[0]
        devnum, max_dev = struct.unpack_from("<I", sb, 160)[0], struct.unpack_from("<I", sb, 220)[0]
        if (level != 1 or features & ~0x9 or super_off != sector or resync != (1 << 64) - 1
                or not devnum < max_dev <= 1920):
            return None          # 0x1 bitmap and 0x8 bad-block log change nothing here
        body = bytearray(_pread(fd, 256 + 2 * max_dev, base + (sector << 9)))
        if len(body) < 256 + 2 * max_dev:
            return None
        csum = struct.unpack_from("<I", body, 216)[0]
        struct.pack_into("<I", body, 216, 0)
        total = sum(struct.unpack_from("<%dI" % (len(body) // 4), body))
        if len(body) % 4:
            total += struct.unpack_from("<H", body, len(body) - 2)[0]
        if ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF != csum:
            return None
        if struct.unpack_from("<H", body, 256 + 2 * devnum)[0] >= 0xFF00:
            return None          # spare, faulty or journal: not a copy of the data
        start, length = data_off << 9, used << 9
        if not 0 < start < start + length <= size or start <= (sector << 9) < start + length:
            return None
        return base + start, length
    return None

def _content_free(fd, base, size, md=True):
    got = _lvm_free(fd, base, size)
    if got is not None and _signature(fd, base):
        return None              # a PV label and a filesystem: which is stale?
    if got is None:
        got = _ext_free(fd, base, size)
    if got is None:
        got = _xfs_free(fd, base, size)
    if got is None:
        got = _swap_free(fd, base, size)
    if got is None and md:
        data = _md1_data(fd, base, size)
        if data is not None:
            got = _content_free(fd, data[0], data[1], md=False)
    return got

def _signature(fd, base):
    # An ext, XFS or swap signature at base (to refuse a PV label next to one).
    sb = _pread(fd, 1024 + 58, base)
    if sb[:4] == b"XFSB" or sb[1024 + 56:1024 + 58] == b"\x53\xef":
        return True
    return any(_pread(fd, 10, base + p - 10) == b"SWAPSPACE2" for p in (4096, 8192, 16384, 65536))

def _areas(dev):
    name = os.path.basename(os.path.realpath(dev))
    sysdir = "/sys/class/block/" + name
    areas = []
    try:
        for entry in sorted(os.listdir(sysdir)):
            part = os.path.join(sysdir, entry)
            if os.path.exists(os.path.join(part, "partition")):
                start = int(open(os.path.join(part, "start")).read()) * 512
                size = int(open(os.path.join(part, "size")).read()) * 512
                areas.append((start, size))
    except OSError:
        pass
    return areas

def free_ranges(fd, dev, disk_size):
    # Forget what this device's cache holds: a filesystem mounted from a partition keeps its
    # metadata in the partition's cache, not the whole disk's, so a block bitmap cached here
    # by an earlier read can be old (a sync then took used chunks for free ones).
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    areas = _areas(dev) or [(0, disk_size)]
    free = []
    for base, size in areas:
        if size < 64 * 1024:        # an extended partition's container, or tiny
            continue
        try:
            got = _content_free(fd, base, size)
        except (OSError, struct.error, IndexError, ValueError, KeyError, TypeError,
                AttributeError, RecursionError):
            got = None
        free += got or []
    free.sort()
    merged = []
    for a, z in free:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], z)
        else:
            merged.append([a, z])
    return [(a, z) for a, z in merged]

def free_test(free):
    # is_free(offset, length): the range lies wholly inside one of the merged free ranges.
    import bisect
    starts = [a for a, z in free]
    def is_free(off, n):
        k = bisect.bisect_right(starts, off) - 1
        return k >= 0 and free[k][0] <= off and off + n <= free[k][1]
    return is_free
