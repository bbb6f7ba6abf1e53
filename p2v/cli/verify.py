"""`p2v verify`: boot images (or a domain XML) and report what the guest showed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from p2v.cli.common import mac_arg, positive_arg, progress_printer, quiet
from p2v.errors import ExitCode
from p2v.inputs import check_disk_image

if TYPE_CHECKING:
    from p2v.verify.boot import BootVerdict


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="boot disk image(s) headless and report whether the guest reaches userspace",
        description=(
            "Boot IMAGE(s) in qemu on a throwaway overlay (the images and the --nvram file are "
            "never modified), with every NIC kept off any real network, and report whether the "
            "guest reached userspace: console evidence, elapsed time, accelerator, and the "
            "network interfaces seen inside the guest. A serial console and a small report "
            "script are added to the overlay only. KVM is used only when a probe boot proves "
            "it works, else TCG. Exit 0 when the guest booted, 4 when it did not, with the "
            "reason: no-bootloader, bootloader-error, md-not-assembled, lvm-pv-missing, "
            "root-device-missing, fstab-device-missing, initramfs-shell, "
            "emergency-mode, kernel-panic, timeout."
        ),
    )
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE",
                   help="disk images of one guest, boot disk first (any format qemu reads)")
    p.add_argument("--domain-xml", type=Path, metavar="FILE",
                   help="instead of IMAGEs: boot this domain XML (e.g. `register --output "
                        "local`'s NAME.xml) as a transient libvirt domain on overlays of its "
                        "disks, NICs on an isolated network (docs/user/verify.md)")
    p.add_argument("--connect", metavar="URI",
                   help="with --domain-xml: the local libvirt to boot it in (default: as "
                        "virsh picks it, e.g. $LIBVIRT_DEFAULT_URI)")
    p.add_argument("--bus", choices=("virtio", "sata"), default="virtio",
                   help="disk bus the guest sees (default: virtio)")
    p.add_argument("--firmware", choices=("auto", "bios", "uefi"), default="auto",
                   help="firmware; auto picks uefi with --nvram or an EFI system partition")
    p.add_argument("--nvram", type=Path, metavar="VARS",
                   help="UEFI variable store to boot with (a copy is used); default: a fresh one")
    p.add_argument("--mac", action="append", type=mac_arg, default=[], metavar="MAC",
                   help="one NIC per --mac, in order (default: one NIC with a local MAC)")
    p.add_argument("--nic-model", choices=("virtio", "e1000e"),
                   help="NIC model (default: virtio on the virtio bus, e1000e on sata)")
    p.add_argument("--timeout", type=positive_arg, default=300.0, metavar="S",
                   help="seconds to wait for userspace (default: 300)")
    p.add_argument("--memory", type=int, default=1024, metavar="MiB", help="guest RAM (1024)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.verify.boot import BootOptions, verify_boot

    if args.domain_xml is not None:
        verdict = _verify_domain_xml(args)
    else:
        if not args.images:
            raise UsageError(detail="give the guest's IMAGE(s), or --domain-xml FILE")
        for index, image in enumerate(args.images):
            check_disk_image(image, boot=index == 0)    # before the KVM probe and any overlay
        options = BootOptions(
            bus=args.bus, firmware=args.firmware, nvram=args.nvram, macs=tuple(args.mac),
            nic_model=args.nic_model, timeout=args.timeout, memory_mib=args.memory,
        )
        verdict = verify_boot(args.images, options, progress=progress_printer(args))
    if args.json:
        print(verdict.to_json())
    elif quiet(args):
        if not verdict.booted:
            from p2v.verify.console import next_step

            print(f"p2v: error: the guest did not boot ({verdict.reason}); "
                  f"{next_step(verdict.reason, verdict.evidence)}", file=sys.stderr)
    else:
        state = "BOOTED" if verdict.booted else f"FAILED: {verdict.reason}"
        print(f"{state} after {verdict.elapsed_s:.0f} s "
              f"({verdict.bus}, {verdict.firmware}, {verdict.accel}, via {verdict.via}); "
              f"os: {verdict.os}")
        if verdict.booted:
            print(f"  hostname: {verdict.hostname}   root: {verdict.root}")
            for nic in verdict.interfaces:
                addrs = ", ".join(nic.addresses) or "no address"
                print(f"  nic {nic.name:<10} {nic.mac}  {nic.state:<5} {addrs}")
        print("  evidence:")
        for line in verdict.evidence[-10:]:
            print(f"    | {line}")
        if not verdict.booted:
            from p2v.verify.console import next_step

            print(f"  next step: {next_step(verdict.reason, verdict.evidence)}")
    return ExitCode.OK if verdict.booted else ExitCode.BOOT_FAILED


def _verify_domain_xml(args: argparse.Namespace) -> BootVerdict:
    from p2v.errors import InputNotFound, UsageError
    from p2v.libvirt_uri import resolve_uri
    from p2v.target.libvirt import is_local
    from p2v.verify.libvirt_boot import DomainBoot, file_images, verify_domain

    if args.images:
        raise UsageError(detail="--domain-xml boots the disks its XML names: give no IMAGE")
    uri = resolve_uri(args.connect)
    if not is_local(uri.uri):
        raise UsageError(detail=f"{uri.uri} ({uri.origin}): the boot check runs on this "
                                "host's libvirt only (its overlays are local files)")
    if not args.domain_xml.is_file():
        raise InputNotFound(what="domain XML", path=str(args.domain_xml))
    xml = args.domain_xml.read_text()
    images = file_images(xml)
    for index, image in enumerate(images.values()):
        check_disk_image(image, boot=index == 0)
    return verify_domain(DomainBoot(xml=xml, images=images, uri=uri.uri, nvram=args.nvram,
                                    timeout=args.timeout), progress=progress_printer(args))
