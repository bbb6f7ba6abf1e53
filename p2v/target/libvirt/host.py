"""Register a guest through libvirt-python.

Order of work, as virt-v2v does it: every check first (name free, images readable, networks,
bridges, pool and firmware present), then upload into the pool, then define, then start.
Every libvirt error becomes a p2v error with one line of detail (p2v.target.libvirt.conn).
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from p2v.errors import (
    DefineFailed,
    DomainExists,
    InputNotFound,
    LibvirtFailed,
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
from p2v.target.libvirt.conn import code, connect, detail, is_local, libvirt, libvirt_call
from p2v.target.libvirt.volumes import PoolVolumes, Staged
from p2v.target.request import (
    ImageInfo,
    Progress,
    RegisterRequest,
    RegisterResult,
    host_ovmf,
    volume_names,
)

NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


def keep_dir() -> Path:
    """Where a refused definition's XML is kept without --output-dir."""
    return state_dir() / "register"


def _quiet(_msg: str) -> None:
    pass


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

    def _volumes(self) -> PoolVolumes:
        return PoolVolumes(self.conn, self.uri, self.progress)

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
        with libvirt_call("reading the host's domain capabilities"):
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
            if code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LibvirtFailed(action=f"looking up domain {name!r}", detail=detail(exc)) from None

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
            with libvirt_call(f"reading the state of {spec.name!r}"):
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
            problems += self._volumes().check(pool, images, volumes, replace)
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
            raise DefineFailed(name=spec.name, detail=detail(exc), xml=kept,
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
                with libvirt_call(f"reading storage pool {pool!r}"):
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
        with libvirt_call(f"reading domain {name!r}"):
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
        with libvirt_call(f"reading domain {name!r}"):
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
        with libvirt_call(f"undefining {name!r}"):
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
            with libvirt_call(f"reading the UUID of {name!r}"):
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
                staged = self._volumes().stage(request.pool, images, volumes)
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
                self._volumes().discard(request.pool, staged)
            raise
        if request.pool is not None:
            paths = self._volumes().commit(request.pool, staged)
        started = False
        if request.start:
            self.progress(f"starting {name!r}")
            try:
                domain.create()
            except libvirt.libvirtError as exc:
                raise StartFailed(name=name, detail=detail(exc), uri=self.uri) from None
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
class DomainFacts:
    """A defined guest as libvirt holds it: enough to tell whether it is a job's own."""

    name: str
    uuid: str
    active: bool
    disks: tuple[str, ...]          # file paths, or pool/volume



def _with_uuid(spec: DomainSpec, uuid: str) -> DomainSpec:
    return replace(spec, uuid=uuid)
