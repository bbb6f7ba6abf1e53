"""`--output local`: write the domain XML and copies of the images into a directory; no libvirt.

The directory is self-contained: DIR/NAME.xml names the copied disks (DIR/NAME-diskN.FMT),
the guest's NVRAM (DIR/NAME_VARS.fd, UEFI only) and its console log (DIR/NAME-serial0.log),
so `virsh define DIR/NAME.xml` on this host registers it later.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from p2v import qemuimg, runner
from p2v.accel import choose_accel
from p2v.errors import UsageError
from p2v.model import GuestCaps
from p2v.secure import check_path, grant_qemu, make_private, private_dir, write_private
from p2v.target.domain import DomainSpec, GuestDisk, UefiFiles, domain_xml, plan_domain
from p2v.target.request import (
    ImageInfo,
    Progress,
    RegisterRequest,
    RegisterResult,
    host_ovmf,
    volume_names,
)


def _quiet(_msg: str) -> None:
    pass


def copy_image(image: ImageInfo, dest: Path) -> None:
    """Copy an image sparsely (a reflink where the file system can); flatten a backing chain.

    Never a hard link or symlink: the guest writes to its disk, and the input must not change.
    """
    if image.backing:
        qemuimg.convert(image.path, dest, image.format)
    else:
        runner.run(["cp", "--sparse=always", "--reflink=auto", str(image.path), str(dest)],
                   timeout=None)


class LocalTarget:
    """Writes NAME.xml and the guest's files into one directory."""

    def __init__(self, directory: Path, progress: Progress = _quiet) -> None:
        self.directory = Path(directory).resolve()
        self.progress = progress

    def __enter__(self) -> LocalTarget:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass

    def _paths(self, name: str, images: Sequence[ImageInfo]) -> tuple[Path, list[Path], Path]:
        """DIR/NAME.xml, the disk copies and the NVRAM file: the files register writes."""
        dests = [self.directory / n for n in volume_names(name, images)]
        return self.directory / f"{name}.xml", dests, self.directory / f"{name}_VARS.fd"

    def plan(self, request: RegisterRequest, images: Sequence[ImageInfo],
             caps: GuestCaps) -> DomainSpec:
        """The domain NAME.xml will describe: the copied disks, this host's OVMF and accel."""
        name = request.name
        _xml, dests, nvram = self._paths(name, images)
        uefi = None
        if caps.firmware == "uefi":
            loader, template = host_ovmf()
            uefi = UefiFiles(loader=loader, nvram=str(nvram), template=template)
        return plan_domain(
            name=name,
            disks=[GuestDisk(i.format, str(d)) for i, d in zip(images, dests, strict=True)],
            inventory=request.inventory, caps=caps, mappings=request.mappings,
            memory_mib=request.memory_mib, vcpus=request.vcpus,
            domain_type="kvm" if choose_accel() == "kvm" else "qemu",
            uefi=uefi, serial_log=str(self.directory / f"{name}-serial0.log"),
        )

    def register(self, request: RegisterRequest, images: Sequence[ImageInfo],
                 caps: GuestCaps) -> RegisterResult:
        name = request.name
        xml_path, dests, nvram = self._paths(name, images)
        existing = [p for p in (xml_path, *dests) if p.exists()]
        if existing and not request.replace:
            raise UsageError(detail=(
                f"{existing[0]} already exists; choose another --name or --output-dir, "
                "or pass --replace"))
        spec = self.plan(request, images, caps)
        uefi = spec.uefi
        private_dir(self.directory, "output dir", tighten=False)
        for path in (xml_path, *dests, nvram):
            check_path(path, "output file")
        for image, dest in zip(images, dests, strict=True):
            self._place(image, dest)
        if uefi is not None:
            temp = nvram.with_name(f".{nvram.name}.part")
            shutil.copyfile(request.nvram or uefi.template or "", temp)
            make_private(temp)
            temp.replace(nvram)
        temp = xml_path.with_name(f".{xml_path.name}.part")
        write_private(temp, domain_xml(spec), "domain XML")
        temp.replace(xml_path)
        for dest in dests:
            for problem in grant_qemu(dest):    # `virsh define` of it here: qemu must reach it
                self.progress(f"warning: {problem}")
        self.progress(f"wrote {xml_path}; define it with `virsh define {xml_path}`")
        return RegisterResult(
            name=name, uuid=spec.uuid, output="local", domain_type=spec.domain_type,
            firmware=caps.firmware, disk_bus=caps.disk_bus, nic_model=caps.nic_model,
            disks=tuple(d.path or "" for d in spec.disks),
            nics=tuple({"mac": n.mac, n.kind: n.source, "source_nic": n.source_nic}
                       for n in spec.nics),
            xml=str(xml_path), nvram=str(nvram) if uefi else None,
            serial_log=spec.serial_log,
        )


    def _place(self, image: ImageInfo, dest: Path) -> None:
        """Copy under a temporary name, then rename: an old DEST stays whole until then.

        An input that is DEST itself (`--replace` of this very guest) is left as it is.
        """
        if dest.exists() and os.path.samefile(dest, image.path):
            self.progress(f"{dest} is the input image itself: kept as it is")
            return
        temp = dest.with_name(f".{dest.name}.part")
        temp.unlink(missing_ok=True)
        self.progress(f"copying {image.path} to {dest}")
        try:
            copy_image(image, temp)
            make_private(temp, "image")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        temp.replace(dest)


__all__ = ["LocalTarget", "copy_image"]
