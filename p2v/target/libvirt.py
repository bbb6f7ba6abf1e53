"""Register a guest through libvirt-python: the only module of p2v that imports libvirt.

Order of work, as virt-v2v does it: every check first (name free, images readable, networks,
bridges, pool and firmware present), then upload into the pool, then define, then start.
Every libvirt error becomes a p2v error with one line of detail.
"""

from __future__ import annotations

import os
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from p2v.errors import (
    DefineFailed,
    DomainExists,
    InputNotFound,
    LibvirtFailed,
    LibvirtUnreachable,
    StartFailed,
    TargetNotReady,
    UsageError,
)
from p2v.model import GuestCaps, SourceInventory
from p2v.secure import grant_qemu, private_dir, state_dir, write_private
from p2v.target.domain import (
    DomainSpec,
    DomainType,
    GuestDisk,
    NicMapping,
    UefiFiles,
    domain_xml,
    plan_domain,
)
from p2v.target.request import (
    ImageInfo,
    Progress,
    RegisterRequest,
    RegisterResult,
    host_ovmf,
    volume_names,
)

try:
    import libvirt
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None

NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"
UPLOAD_CHUNK = 4 << 20
# A replacing upload goes to VOLUME + this first; the old volume goes only once the new
# definition is in (a failed define must leave the old guest with its disk).
STAGING_SUFFIX = ".p2v-new"


def keep_dir() -> Path:
    """Where a refused definition's XML is kept without --output-dir."""
    return state_dir() / "register"


def _quiet(_msg: str) -> None:
    pass


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; p2v reports them itself, once."""


if libvirt is not None:
    libvirt.registerErrorHandler(_silence, None)


def _detail(exc: Exception) -> str:
    message = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    text = str(message or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _code(exc: Exception) -> int | None:
    return exc.get_error_code() if hasattr(exc, "get_error_code") else None


@contextmanager
def _libvirt_call(action: str) -> Iterator[None]:
    """Turn a libvirt error raised inside the block into LibvirtFailed naming the action."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise LibvirtFailed(action=action, detail=_detail(exc)) from None


def is_local(uri: str) -> bool:
    """A URI without a host talks to this machine's libvirtd (qemu:///system, qemu+unix://)."""
    return not urlsplit(uri).hostname


def connect(uri: str) -> Any:
    """Open a connection, or raise LibvirtUnreachable naming the URI in one line."""
    if libvirt is None:
        raise LibvirtUnreachable(uri=uri, detail=(
            "the libvirt Python binding is missing (python3-libvirt); run p2v from the venv "
            "built by `make setup`, or use --output local"))
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtUnreachable(uri=uri, detail=_detail(exc)) from None
    if conn is None:  # pragma: no cover - old bindings returned None
        raise LibvirtUnreachable(uri=uri, detail="no connection")
    return conn


class _Meter:
    """Progress of one upload: a line at most every 2 s, and one at the end."""

    def __init__(self, label: str, total: int, progress: Progress) -> None:
        self.label, self.total, self.progress = label, total, progress
        self.started = self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 2.0:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-3) / 2**20
        pct = 100 * done // max(self.total, 1)
        self.progress(f"uploading {self.label}: {pct}% "
                      f"({done / 2**20:.0f} of {self.total / 2**20:.0f} MiB, {rate:.0f} MiB/s)")


class LibvirtTarget:
    """A libvirt host, reached at `uri`: checks, uploads, defines and starts the guest."""

    def __init__(self, uri: str, progress: Progress = _quiet,
                 opener: Callable[[str], Any] = connect) -> None:
        self.uri = uri
        self.progress = progress
        self._opener = opener
        self.conn: Any = None

    def __enter__(self) -> LibvirtTarget:
        self.conn = self._opener(self.uri)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass
            self.conn = None

    # ------------------------------------------------------------ facts about the host
    @property
    def local(self) -> bool:
        return is_local(self.uri)

    def domain_type(self) -> DomainType:
        """kvm where KVM really works (probed locally, domcapabilities remotely), else qemu."""
        if self.local:
            from p2v.accel import choose_accel

            return "kvm" if choose_accel() == "kvm" else "qemu"
        forced = os.environ.get("P2V_ACCEL")
        if forced in ("kvm", "tcg"):
            return "kvm" if forced == "kvm" else "qemu"
        try:
            self.conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
            return "kvm"
        except libvirt.libvirtError:
            return "qemu"

    def uefi_files(self, name: str) -> UefiFiles:
        """OVMF code and template: local files here, domcapabilities' list on a remote host."""
        nvram = f"{NVRAM_DIR}/{name}_VARS.fd"
        if self.local:
            loader, template = host_ovmf()
            return UefiFiles(loader=loader, nvram=nvram, template=template)
        with _libvirt_call("reading the host's domain capabilities"):
            caps = ET.fromstring(self.conn.getDomainCapabilities(None, "x86_64", "q35", None, 0))
        values = [v.text or "" for v in caps.iterfind("os/loader/value")]
        plain = [v for v in values if "OVMF_CODE" in v and not any(
            s in v for s in ("secboot", ".ms.", "snakeoil"))]
        if not plain:
            raise TargetNotReady(problems=(
                f"no OVMF firmware on {self.uri} (install ovmf there); it offers: "
                f"{', '.join(values) or 'none'}"))
        loader = plain[0]
        return UefiFiles(loader=loader, nvram=nvram,
                         template=loader.replace("OVMF_CODE", "OVMF_VARS"))

    def _lookup_domain(self, name: str) -> Any | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LibvirtFailed(action=f"looking up domain {name!r}", detail=_detail(exc)) from None

    # ------------------------------------------------------------ checks
    def preflight(self, spec: DomainSpec, images: Sequence[ImageInfo], *, replace: bool,
                  start: bool, pool: str | None, volumes: Sequence[str]) -> Any | None:
        """Every check before anything changes; returns the domain being replaced, if any.

        Problems are gathered and reported together, so one run shows all that is wrong.
        """
        existing = self._lookup_domain(spec.name)
        if existing is not None:
            if not replace:
                raise DomainExists(name=spec.name, uri=self.uri)
            with _libvirt_call(f"reading the state of {spec.name!r}"):
                active = existing.isActive()
            if active:
                raise TargetNotReady(problems=(
                    f"domain {spec.name!r} is running; shut it down before --replace"))
        problems: list[str] = []
        for image in images:
            if not os.access(image.path, os.R_OK):
                problems.append(f"image {image.path} is not readable")
            if pool is not None and image.backing:
                problems.append(
                    f"image {image.path} has a backing file ({image.backing}); a pool upload "
                    f"needs a self-contained image (qemu-img convert -O qcow2 IN OUT)")
        if pool is None and not self.local:
            problems.append(f"{self.uri} is a remote host: give --pool NAME so the images are "
                            "uploaded there")
        problems += self._check_networks(spec, start)
        if pool is not None:
            problems += self._check_pool(pool, images, volumes, replace)
        if spec.uefi is not None and self.local:
            for path in (spec.uefi.loader, spec.uefi.template):
                if not Path(path).is_file():
                    problems.append(f"UEFI firmware file {path} is missing (install ovmf)")
        if problems:
            raise TargetNotReady(problems="; ".join(problems))
        return existing

    def _check_networks(self, spec: DomainSpec, start: bool) -> list[str]:
        problems = []
        for nic in spec.nics:
            label = f"NIC {nic.source_nic or nic.mac or '(new)'}"
            if nic.kind == "network":
                try:
                    network = self.conn.networkLookupByName(nic.source)
                except libvirt.libvirtError:
                    try:
                        known = ", ".join(sorted(self.conn.listNetworks()
                                                 + self.conn.listDefinedNetworks()))
                    except libvirt.libvirtError:
                        known = "?"
                    problems.append(
                        f"{label}: network {nic.source!r} does not exist on {self.uri} "
                        f"(networks there: {known or 'none'}); map it with --network SRC=NET "
                        f"or --bridge SRC=BR")
                    continue
                if start and not network.isActive():
                    problems.append(f"{label}: network {nic.source!r} is not active; "
                                    f"start it with `virsh net-start {nic.source}`")
            elif self.local:
                if not Path(f"/sys/class/net/{nic.source}/bridge").is_dir():
                    problems.append(f"{label}: bridge {nic.source!r} does not exist on this "
                                    "host (see `ip link show type bridge`)")
            else:
                self.progress(f"cannot check bridge {nic.source!r} on a remote host; "
                              "libvirt will when the guest starts")
        return problems

    def _check_pool(self, pool: str, images: Sequence[ImageInfo], volumes: Sequence[str],
                    replace: bool) -> list[str]:
        try:
            p = self.conn.storagePoolLookupByName(pool)
        except libvirt.libvirtError:
            try:
                known = ", ".join(sorted(self.conn.listStoragePools()
                                         + self.conn.listDefinedStoragePools()))
            except libvirt.libvirtError:
                known = "?"
            return [f"storage pool {pool!r} does not exist on {self.uri} "
                    f"(pools there: {known or 'none'})"]
        with _libvirt_call(f"reading storage pool {pool!r}"):
            if not p.isActive():
                return [f"storage pool {pool!r} is not active; start it with "
                        f"`virsh pool-start {pool}`"]
            p.refresh(0)
            present = set(p.listVolumes())
            available = p.info()[3]
        problems = []
        taken = [v for v in volumes if v in present]
        if taken and not replace:
            problems.append(f"volume(s) {', '.join(taken)} already exist in pool {pool!r}; "
                            "pass --replace or choose another --name")
        needed = sum(i.file_size for i in images)
        if needed > available:
            problems.append(f"pool {pool!r} has {available / 2**30:.1f} GiB free, the images "
                            f"need {needed / 2**30:.1f} GiB")
        return problems

    # ------------------------------------------------------------ changes
    def upload(self, pool: str, image: ImageInfo, volume: str) -> Any:
        """Create the volume and stream the image into it; returns the volume.

        The volume is created raw with the file's size and the file's bytes are sent as they
        are (qcow2 stays qcow2: the domain's driver type says what it is); runs of zeros go
        as holes when the pool supports sparse streams.
        """
        with _libvirt_call(f"preparing volume {volume!r} in pool {pool!r}"):
            p = self.conn.storagePoolLookupByName(pool)
            vol = p.createXML(_volume_xml(volume, image.file_size), 0)
        meter = _Meter(f"{image.path.name} to {pool}/{volume}", image.file_size, self.progress)
        try:
            self._send(vol, image, meter)
        except BaseException:
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
            raise
        return vol

    def stage(self, pool: str, images: Sequence[ImageInfo],
              volumes: Sequence[str]) -> list[Staged]:
        """Upload every image; where its volume exists already, under a staging name.

        Nothing that exists is deleted here: the old guest keeps its disks until `commit`,
        which runs only after the new definition is in.
        """
        staged: list[Staged] = []
        try:
            for image, volume in zip(images, volumes, strict=True):
                staged.append(self._stage_one(pool, image, volume))
        except BaseException:
            self.discard(pool, staged)
            raise
        return staged

    def _stage_one(self, pool: str, image: ImageInfo, volume: str) -> Staged:
        with _libvirt_call(f"reading storage pool {pool!r}"):
            p = self.conn.storagePoolLookupByName(pool)
            p.refresh(0)
            names = set(p.listVolumes())
            old = p.storageVolLookupByName(volume) if volume in names else None
        if old is None:
            self.upload(pool, image, volume)
            return Staged(volume, uploaded=volume)
        if self._is_image(old, image):
            # `register --replace` of the guest's own disk: the input is the volume.
            self.progress(f"{pool}/{volume} is {image.path} itself: kept as it is")
            return Staged(volume, uploaded=None)
        temp = volume + STAGING_SUFFIX
        if temp in names:               # left by a killed run: never anyone's disk
            with _libvirt_call(f"removing the leftover volume {pool}/{temp}"):
                p.storageVolLookupByName(temp).delete(0)
        self.upload(pool, image, temp)
        return Staged(volume, uploaded=temp)

    def _is_image(self, vol: Any, image: ImageInfo) -> bool:
        """Is the pool's volume the very file `image` is (same inode, not just same name)?"""
        if not self.local:
            return False
        with _libvirt_call("reading a volume's path"):
            path = vol.path()
        try:
            return os.path.samefile(path, image.path)
        except OSError:
            return False

    def discard(self, pool: str, staged: Sequence[Staged]) -> None:
        """A define that failed: remove what this run uploaded; old volumes stay."""
        self._delete_volumes(pool, [s.uploaded for s in staged if s.uploaded])

    def commit(self, pool: str, staged: Sequence[Staged]) -> list[str]:
        """The guest is defined: staged volumes take their final names; returns the paths."""
        paths = []
        for item in staged:
            if item.uploaded is not None and item.uploaded != item.volume:
                self._swap(pool, item.uploaded, item.volume)
            with _libvirt_call(f"refreshing pool {pool!r}"):
                p = self.conn.storagePoolLookupByName(pool)
                p.refresh(0)
                paths.append(str(p.storageVolLookupByName(item.volume).path()))
        return paths

    def _swap(self, pool: str, temp: str, volume: str) -> None:
        """Put the staged volume `temp` in place of `volume`.

        A file in a pool on this host is renamed over the old one: the disk is the old or
        the new one at every moment. Elsewhere libvirt has no rename: the old volume is
        deleted and the staged one cloned to its name (the guest is shut off meanwhile).
        """
        action = f"putting the new {pool}/{volume} in place (its data is in {pool}/{temp})"
        with _libvirt_call(action):
            p = self.conn.storagePoolLookupByName(pool)
            new, old = p.storageVolLookupByName(temp), p.storageVolLookupByName(volume)
            files = new.info()[0] == old.info()[0] == libvirt.VIR_STORAGE_VOL_FILE
            if self.local and files:
                os.replace(new.path(), old.path())
                p.refresh(0)
                return
            # The clone keeps the format libvirt reads in the staged volume (it probes a
            # file pool's volumes): a raw target would get the qcow2 converted to raw.
            found = ET.fromstring(new.XMLDesc(0)).find("target/format")
            fmt = found.get("type", "raw") if found is not None else "raw"
            xml = _volume_xml(volume, int(new.info()[1]), fmt)
            old.delete(0)
            p.createXMLFrom(xml, new, 0)
            new.delete(0)

    def _delete_volumes(self, pool: str, volumes: Sequence[str]) -> None:
        """Best effort: remove volumes this run uploaded, saying which could not go."""
        for volume in volumes:
            try:
                self.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).delete(0)
                self.progress(f"removed volume {pool}/{volume} (the guest was not defined)")
            except libvirt.libvirtError as exc:
                self.progress(f"warning: could not remove volume {pool}/{volume}: "
                              f"{_detail(exc)}; remove it with `virsh vol-delete {volume} "
                              f"--pool {pool}`")

    def _send(self, vol: Any, image: ImageInfo, meter: _Meter) -> None:
        sparse = True
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, image.file_size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        except libvirt.libvirtError:
            stream = self.conn.newStream(0)
            sparse = False
            with _libvirt_call(f"starting the upload of {image.path}"):
                vol.upload(stream, 0, image.file_size, 0)
        zero = bytes(UPLOAD_CHUNK)
        done = 0
        try:
            with open(image.path, "rb") as f:
                while True:
                    chunk = f.read(UPLOAD_CHUNK)
                    if not chunk:
                        break
                    if sparse and chunk == zero[: len(chunk)]:
                        stream.sendHole(len(chunk), 0)
                    else:
                        view = memoryview(chunk)
                        while view:
                            sent = stream.send(bytes(view))
                            if sent < 0:
                                raise LibvirtFailed(action=f"uploading {image.path}",
                                                    detail="the stream refused data")
                            view = view[sent:]
                    done += len(chunk)
                    meter.update(done)
            stream.finish()
        except libvirt.libvirtError as exc:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise LibvirtFailed(action=f"uploading {image.path}", detail=_detail(exc)) from None
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise
        meter.update(done, final=True)

    def keep_xml(self, name: str, xml: str, directory: Path | None) -> Path:
        where = private_dir(directory or keep_dir(), "output dir", tighten=directory is None)
        path = where / f"{name}.xml"
        write_private(path, xml, "domain XML")
        return path.resolve()

    def define(self, spec: DomainSpec, keep_dir: Path | None) -> Any:
        """conn.defineXML; on failure keep the XML and say how to define it by hand."""
        xml = domain_xml(spec)
        try:
            return self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            kept = self.keep_xml(spec.name, xml, keep_dir)
            raise DefineFailed(name=spec.name, detail=_detail(exc), xml=kept,
                               uri=self.uri) from None

    # ------------------------------------------------------------ a guest not built yet
    def check_new_guest(self, name: str, inventory: SourceInventory, firmware: str,
                        mappings: Sequence[NicMapping], *, start: bool,
                        pool: str | None) -> None:
        """`p2v convert`'s preflight: what register would refuse, checked before any copy.

        The name is free, the networks/bridges the NICs map to exist, the pool exists and is
        active, a remote URI has a pool, OVMF is there for a UEFI guest. Disk checks (space
        in the pool, volume names) need the images and are left to register.
        """
        if self._lookup_domain(name) is not None:
            raise TargetNotReady(problems=(
                f"a domain named {name!r} already exists at {self.uri}; choose another "
                "--name, or remove that guest first"))
        caps = GuestCaps(firmware="uefi" if firmware == "uefi" else "bios")
        uefi = None
        problems: list[str] = []
        if caps.firmware == "uefi":
            try:
                uefi = self.uefi_files(name)
            except (InputNotFound, TargetNotReady) as exc:
                problems.append(exc.message)
                caps = GuestCaps(firmware="bios")
        spec = plan_domain(name=name, disks=[GuestDisk("qcow2", "/nonexistent")],
                           inventory=inventory, caps=caps, mappings=mappings, uefi=uefi)
        if pool is None and not self.local:
            problems.append(f"{self.uri} is a remote host: give --pool NAME so the images are "
                            "uploaded there")
        problems += self._check_networks(spec, start)
        if pool is not None:
            try:
                p = self.conn.storagePoolLookupByName(pool)
            except libvirt.libvirtError:
                problems.append(f"storage pool {pool!r} does not exist on {self.uri}")
            else:
                with _libvirt_call(f"reading storage pool {pool!r}"):
                    if not p.isActive():
                        problems.append(f"storage pool {pool!r} is not active; start it with "
                                        f"`virsh pool-start {pool}`")
        if problems:
            raise TargetNotReady(problems="; ".join(problems))

    def describe(self, name: str) -> DomainFacts | None:
        """The named guest's UUID, state and disks, or None when there is none."""
        dom = self._lookup_domain(name)
        if dom is None:
            return None
        with _libvirt_call(f"reading domain {name!r}"):
            root = ET.fromstring(dom.XMLDesc(0))
            active = bool(dom.isActive())
            uuid = dom.UUIDString()
        disks = []
        for source in root.iterfind("devices/disk/source"):
            if source.get("file"):
                disks.append(str(source.get("file")))
            elif source.get("pool"):
                disks.append(f"{source.get('pool')}/{source.get('volume')}")
        return DomainFacts(name=name, uuid=uuid, active=active, disks=tuple(disks))

    def remove(self, name: str, uuid: str) -> bool:
        """Undefine the shut-off guest `name` (and its NVRAM) if it still has this UUID.

        Returns False when there is no such guest. A running guest, or one whose UUID is not
        `uuid` (someone else's guest of that name), is refused: p2v removes only its own.
        """
        dom = self._lookup_domain(name)
        if dom is None:
            return False
        with _libvirt_call(f"reading domain {name!r}"):
            found = dom.UUIDString()
            active = dom.isActive()
        if found != uuid:
            raise UsageError(detail=(
                f"domain {name!r} at {self.uri} has UUID {found}, not the {uuid} p2v "
                "registered: it is not this job's guest; leaving it alone"))
        if active:
            raise UsageError(detail=(
                f"domain {name!r} is running; shut it down first "
                f"(`virsh -c {self.uri} shutdown {name}`)"))
        with _libvirt_call(f"undefining {name!r}"):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                              | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        return True

    # ------------------------------------------------------------ the job
    def plan(self, request: RegisterRequest, images: Sequence[ImageInfo],
             caps: GuestCaps) -> DomainSpec:
        """The domain `register` defines for this request (the boot check boots its XML)."""
        name = request.name
        volumes = volume_names(name, images)
        if request.pool is not None:
            disks = [GuestDisk(i.format, pool=request.pool, volume=v)
                     for i, v in zip(images, volumes, strict=True)]
        else:
            disks = [GuestDisk(i.format, str(i.path)) for i in images]
        if request.nvram is not None and not self.local:
            raise UsageError(detail="--nvram works with a local libvirt only, so far")
        return plan_domain(
            name=name, disks=disks, inventory=request.inventory, caps=caps,
            mappings=request.mappings, memory_mib=request.memory_mib, vcpus=request.vcpus,
            domain_type=self.domain_type(),
            uefi=self.uefi_files(name) if caps.firmware == "uefi" else None,
            serial_log=f"{SERIAL_LOG_DIR}/{name}-serial0.log",
        )

    def register(self, request: RegisterRequest, images: Sequence[ImageInfo],
                 caps: GuestCaps) -> RegisterResult:
        name = request.name
        volumes = volume_names(name, images)
        spec = self.plan(request, images, caps)
        existing = self.preflight(spec, images, replace=request.replace, start=request.start,
                                  pool=request.pool, volumes=volumes)
        if existing is not None:
            # Same UUID: defineXML then replaces the definition in one step, so a failed
            # define leaves the old guest as it was.
            with _libvirt_call(f"reading the UUID of {name!r}"):
                spec = _with_uuid(spec, existing.UUIDString())
        paths = [str(i.path) for i in images]
        if request.pool is None and self.local:
            # The images are 0700/0600 p2v's own: qemu needs a way in (p2v.secure.grant_qemu).
            problems = [p for i in images for p in grant_qemu(i.path)]
            if problems:
                raise TargetNotReady(problems="; ".join(problems))
        staged: list[Staged] = []
        try:
            if request.pool is not None:
                staged = self.stage(request.pool, images, volumes)
            if spec.uefi is not None and request.nvram is not None:
                Path(spec.uefi.nvram).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(request.nvram, spec.uefi.nvram)
                self.progress(f"NVRAM seeded from {request.nvram}")
            self.progress(f"defining domain {name!r} ({spec.domain_type}, {caps.firmware}, "
                          f"{caps.disk_bus}) at {self.uri}")
            domain = self.define(spec, request.output_dir)
        except BaseException:
            # Nothing of a guest that was not defined stays behind in the pool, and what the
            # old guest had is still there.
            if request.pool is not None:
                self.discard(request.pool, staged)
            raise
        if request.pool is not None:
            paths = self.commit(request.pool, staged)
        started = False
        if request.start:
            self.progress(f"starting {name!r}")
            try:
                domain.create()
            except libvirt.libvirtError as exc:
                raise StartFailed(name=name, detail=_detail(exc), uri=self.uri) from None
            started = True
        return RegisterResult(
            name=name, uuid=spec.uuid, output="libvirt", domain_type=spec.domain_type,
            firmware=caps.firmware, disk_bus=caps.disk_bus, nic_model=caps.nic_model,
            disks=tuple(paths),
            nics=tuple({"mac": n.mac, n.kind: n.source, "source_nic": n.source_nic}
                       for n in spec.nics),
            uri=self.uri, nvram=spec.uefi.nvram if spec.uefi else None,
            serial_log=spec.serial_log, started=started,
        )


@dataclass(frozen=True)
class Staged:
    """One disk's volume during a register: `uploaded` is the volume this run created
    (the final name, a staging name, or None when the existing volume is the input)."""

    volume: str
    uploaded: str | None


@dataclass(frozen=True)
class DomainFacts:
    """A defined guest as libvirt holds it: enough to tell whether it is a job's own."""

    name: str
    uuid: str
    active: bool
    disks: tuple[str, ...]          # file paths, or pool/volume


def _volume_xml(name: str, capacity: int, fmt: str = "raw") -> str:
    """A volume of `capacity` bytes (raw: the bytes as sent), allocated as written."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(root, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(root, "target"), "format", type=fmt)
    return ET.tostring(root, encoding="unicode")


# ------------------------------------------------------------ the boot check's transient guest
VERIFY_PREFIX = "p2v-verify-"
VERIFY_LOCK = "verify-libvirt.lock"


@contextmanager
def _verify_lock() -> Iterator[None]:
    """Held while a check creates its network and domain, and while leftovers are swept:
    a sweep must not take a network whose domain is about to start."""
    import fcntl

    path = private_dir(state_dir(), "state dir", tighten=False) / VERIFY_LOCK
    with path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except libvirt.libvirtError:
        pass            # gone already: what we want


class TransientGuest:
    """The boot check's guest: a transient network and a transient domain, never defined.

    The domain is started with AUTODESTROY: libvirtd destroys it when this connection closes,
    also when p2v is killed. The network has no such flag: `sweep_transient` removes one left
    by a killed run.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: Any = None
        self.domain: Any = None
        self.network: Any = None

    def start(self, network_xml: str, domain_xml_text: str,
              owner_alive: Callable[[Path], bool],
              prepare_network: Callable[[], None] = lambda: None) -> None:
        """Sweep leftovers, create the network (then `prepare_network`), start the domain."""
        self.conn = connect(self.uri)
        with _verify_lock():
            sweep_transient(self.conn, owner_alive)
            with _libvirt_call("creating the boot check's isolated network"):
                self.network = self.conn.networkCreateXML(network_xml)
            prepare_network()
            with _libvirt_call("starting the boot check's transient domain"):
                self.domain = self.conn.createXML(domain_xml_text,
                                                  libvirt.VIR_DOMAIN_START_AUTODESTROY)

    def active(self) -> bool:
        try:
            return bool(self.domain is not None and self.domain.isActive())
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        """Destroy the domain, then its network; close the connection. Never raises."""
        if self.domain is not None:
            _quietly(self.domain.destroy)
            self.domain = None
        if self.network is not None:
            _quietly(self.network.destroy)
            self.network = None
        if self.conn is not None:
            _quietly(self.conn.close)
            self.conn = None


def sweep_transient(conn: Any, owner_alive: Callable[[Path], bool]) -> list[str]:
    """Destroy boot-check domains whose p2v is gone, then boot-check networks with no domain.

    A domain's metadata names its scratch dir; `owner_alive(dir)` says whether the run that
    holds it lives. Callers hold `_verify_lock` (a network is made just before its domain).
    """
    from p2v.target.transient import scratch_of

    removed: list[str] = []
    running: set[str] = set()
    with _libvirt_call("listing the boot check's leftover domains"):
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
    for dom in domains:
        name = dom.name()
        if not name.startswith(VERIFY_PREFIX):
            continue
        try:
            scratch = scratch_of(dom.XMLDesc(0))
        except libvirt.libvirtError:
            continue        # gone meanwhile
        if scratch is not None and owner_alive(scratch):
            running.add(name)
            continue
        _quietly(dom.destroy)
        removed.append(name)
    with _libvirt_call("listing the boot check's leftover networks"):
        networks = conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_TRANSIENT)
    for net in networks:
        name = net.name()
        if name.startswith(VERIFY_PREFIX) and name not in running:
            _quietly(net.destroy)
            removed.append(name)
    return removed


def sweep_transient_at(uri: str, owner_alive: Callable[[Path], bool]) -> list[str]:
    """`sweep_transient` on a fresh connection to `uri` (for `p2v clean`)."""
    conn = connect(uri)
    try:
        with _verify_lock():
            return sweep_transient(conn, owner_alive)
    finally:
        _quietly(conn.close)


def _with_uuid(spec: DomainSpec, uuid: str) -> DomainSpec:
    from dataclasses import replace

    return replace(spec, uuid=uuid)


__all__ = ["DomainFacts", "LibvirtTarget", "Staged", "TransientGuest", "VERIFY_PREFIX", "connect",
           "is_local", "keep_dir", "sweep_transient", "sweep_transient_at"]
