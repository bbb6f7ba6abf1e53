"""The command line: subcommands, output, exit codes. The only place that prints or exits."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from p2v import __version__, runner
from p2v.errors import ExitCode, P2VError
from p2v.inputs import check_disk_image, check_name, check_output_dir, finite_positive
from p2v.units import human_size

if TYPE_CHECKING:
    from p2v.source.ssh import SshOptions, SshSource
    from p2v.verify.boot import BootVerdict

log = logging.getLogger("p2v")


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress messages go to stderr, and not at all with --json (stdout stays parseable)."""
    if getattr(args, "json", False):
        return lambda msg: log.info("%s", msg)
    return lambda msg: print(f"p2v: {msg}", file=sys.stderr, flush=True)


def _mac(text: str) -> str:
    import re

    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", text):
        raise argparse.ArgumentTypeError(f"not a MAC address: {text!r} (want aa:bb:cc:dd:ee:ff)")
    return text.lower()


# Every seconds option: finite and above zero (nan and inf are refused, p2v/inputs.py).
_positive = finite_positive


# ---------------------------------------------------------------- verify
def _add_verify(sub: argparse._SubParsersAction) -> None:
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
                        "disks, NICs on an isolated network (docs/verify.md)")
    p.add_argument("--connect", default="qemu:///system", metavar="URI",
                   help="with --domain-xml: the local libvirt to boot it in")
    p.add_argument("--bus", choices=("virtio", "sata"), default="virtio",
                   help="disk bus the guest sees (default: virtio)")
    p.add_argument("--firmware", choices=("auto", "bios", "uefi"), default="auto",
                   help="firmware; auto picks uefi with --nvram or an EFI system partition")
    p.add_argument("--nvram", type=Path, metavar="VARS",
                   help="UEFI variable store to boot with (a copy is used); default: a fresh one")
    p.add_argument("--mac", action="append", type=_mac, default=[], metavar="MAC",
                   help="one NIC per --mac, in order (default: one NIC with a local MAC)")
    p.add_argument("--nic-model", choices=("virtio", "e1000e"),
                   help="NIC model (default: virtio on the virtio bus, e1000e on sata)")
    p.add_argument("--timeout", type=_positive, default=300.0, metavar="S",
                   help="seconds to wait for userspace (default: 300)")
    p.add_argument("--memory", type=int, default=1024, metavar="MiB", help="guest RAM (1024)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
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
        verdict = verify_boot(args.images, options, progress=_say(args))
    if args.json:
        print(verdict.to_json())
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
    from p2v.target.libvirt import is_local
    from p2v.verify.libvirt_boot import DomainBoot, file_images, verify_domain

    if args.images:
        raise UsageError(detail="--domain-xml boots the disks its XML names: give no IMAGE")
    if not is_local(args.connect):
        raise UsageError(detail=f"--connect {args.connect}: the boot check runs on this "
                                "host's libvirt only (its overlays are local files)")
    if not args.domain_xml.is_file():
        raise InputNotFound(what="domain XML", path=str(args.domain_xml))
    xml = args.domain_xml.read_text()
    images = file_images(xml)
    for index, image in enumerate(images.values()):
        check_disk_image(image, boot=index == 0)
    return verify_domain(DomainBoot(xml=xml, images=images, uri=args.connect, nvram=args.nvram,
                                    timeout=args.timeout), progress=_say(args))


# ---------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole story: a legacy-server fixture running as a live source, converted "
             "into a libvirt guest that boots on virtio",
        description=(
            "The built-in example. Builds or reuses the 'bios' fixture (a Debian 12 legacy "
            "server image with a static address), starts it in qemu as a live SSH source, "
            "makes sure a libvirtd answers (starting one if none does) with an isolated "
            "network 'p2v-demo', and runs `p2v convert` on the live server: copy, fix, boot "
            "check on virtio with the NIC isolated, register (left shut off). Prints where "
            "everything is and how to clean up; the exit code is the conversion's."
        ),
    )
    p.add_argument("--variant", default="bios", help="fixture variant (default: bios)")
    p.add_argument("--json", action="store_true", help="print one JSON document at the end")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from p2v.testbed.demo import run_demo

    result = run_demo(args.variant, progress=_say(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in result["summary"]:
            print(line)
    return int(result["job"]["exit_code"])


# ---------------------------------------------------------------- register
def _add_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="define a libvirt guest for disk image(s) that matches the source machine",
        description=(
            "Define a libvirt guest for IMAGE(s) (boot disk first): name, memory, vCPUs and "
            "NICs (MACs kept) from the source inventory, disk bus, NIC model and firmware from "
            "the guest caps of `p2v fix`; flags override both. Everything is checked before "
            "anything is defined: the name is free (unless --replace), the images are "
            "readable, networks, bridges, pool and firmware exist. If libvirt refuses the "
            "definition the XML is kept and the way to define it by hand is printed. "
            "--output local writes NAME.xml and copies of the images into --output-dir and "
            "needs no libvirt. See docs/register.md."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="the guest's disk images (qcow2 or raw), boot disk first")
    p.add_argument("--name", required=True, help="the guest's (domain) name")
    p.add_argument("--inventory", type=Path, metavar="JSON",
                   help="source inventory (hostname, CPUs, memory, NICs with MACs, firmware)")
    p.add_argument("--caps", type=Path, metavar="JSON",
                   help="guest caps from `p2v fix` (disk_bus, nic_model, machine, firmware); "
                        "default: virtio, firmware from the inventory or bios")
    p.add_argument("--memory", type=int, metavar="MiB",
                   help="guest RAM (default: the source's, else 1024)")
    p.add_argument("--vcpus", type=int, metavar="N",
                   help="vCPUs as one socket of N cores (default: the source's topology, else 1)")
    p.add_argument("--connect", default="qemu:///system", metavar="URI",
                   help="libvirt URI (default: qemu:///system)")
    p.add_argument("--network", action="append", default=[], metavar="[SRC=]NET",
                   help="attach source NIC SRC (its name or MAC) to libvirt network NET; "
                        "without SRC=, every NIC not mapped otherwise (default: 'default')")
    p.add_argument("--bridge", action="append", default=[], metavar="[SRC=]BR",
                   help="attach source NIC SRC (its name or MAC) to host bridge BR; "
                        "without SRC=, every NIC not mapped otherwise")
    p.add_argument("--nvram", type=Path, metavar="VARS",
                   help="UEFI variable store to seed the guest's NVRAM with (e.g. the source "
                        "machine's, with its boot entry); default: an empty one")
    p.add_argument("--new-macs", action="store_true",
                   help="give the guest's NICs fresh MACs instead of the source's (refused when "
                        "the guest pins interface names to MACs, see --caps)")
    p.add_argument("--force-new-macs", action="store_true",
                   help="with --new-macs: go ahead even though pinned names will change")
    p.add_argument("--start", action="store_true", help="start the guest once defined")
    p.add_argument("--replace", action="store_true",
                   help="replace a (shut off) guest of the same name and its pool volumes")
    p.add_argument("--pool", metavar="NAME",
                   help="upload the images into this libvirt storage pool (needed for a "
                        "remote --connect)")
    p.add_argument("--output", choices=("libvirt", "local"), default="libvirt",
                   help="libvirt (default) or local: NAME.xml + images in --output-dir")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="where --output local writes; with libvirt, where a refused XML is kept")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_register)


def _cmd_register(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.inputs import check_json_text, read_text_input
    from p2v.model import GuestCaps, SourceInventory
    from p2v.target.domain import NicMapping
    from p2v.target.register import register
    from p2v.target.request import RegisterRequest

    def read(path: Path | None, what: str) -> str | None:
        if path is None:
            return None
        text = read_text_input(path, what)
        check_json_text(text, path, what)
        return text

    check_name(args.name)
    check_output_dir(args.output_dir)

    for flag, value in (("--memory", args.memory), ("--vcpus", args.vcpus)):
        if value is not None and value < 1:
            raise UsageError(detail=f"{flag} must be positive, not {value}")
    inventory_text = read(args.inventory, "inventory")
    caps_text = read(args.caps, "guest caps")
    request = RegisterRequest(
        name=args.name,
        images=tuple(args.images),
        inventory=(SourceInventory.from_json(inventory_text, str(args.inventory))
                   if inventory_text is not None else SourceInventory()),
        caps=GuestCaps.from_json(caps_text, str(args.caps)) if caps_text is not None else None,
        memory_mib=args.memory,
        vcpus=args.vcpus,
        mappings=tuple([NicMapping.parse("network", m) for m in args.network]
                       + [NicMapping.parse("bridge", m) for m in args.bridge]),
        uri=args.connect,
        start=args.start,
        replace=args.replace,
        pool=args.pool,
        output=args.output,
        output_dir=args.output_dir,
        nvram=args.nvram,
        new_macs=args.new_macs,
        force_new_macs=args.force_new_macs,
    )
    result = register(request, progress=_say(args))
    if args.json:
        print(result.to_json())
        return ExitCode.OK
    where = result.xml if result.output == "local" else result.uri
    state = "written" if result.output == "local" else (
        "started" if result.started else "defined")
    print(f"{result.name}: {state} ({where}); {result.domain_type}, {result.firmware}, "
          f"disks on {result.disk_bus}, NICs {result.nic_model}; uuid {result.uuid}")
    for disk in result.disks:
        print(f"  disk {disk}")
    for nic in result.nics:
        attached = nic.get("network") or nic.get("bridge")
        kind = "network" if nic.get("network") else "bridge"
        print(f"  nic  {nic['mac'] or '(new MAC)'} -> {kind} {attached}"
              + (f"  (was {nic['source_nic']})" if nic.get("source_nic") else ""))
    if result.serial_log:
        print(f"  console log: {result.serial_log}")
    return ExitCode.OK


# ---------------------------------------------------------------- inspect
def _add_ssh_source(p: argparse.ArgumentParser) -> None:
    """SOURCE and the SSH flags every subcommand that logs in to a source shares."""
    p.add_argument("source", metavar="SOURCE",
                   help="ssh://[user@]host[:port] or a Host alias from ~/.ssh/config")
    p.add_argument("--identity", "-i", type=Path, metavar="FILE",
                   help="private key to log in with (default: ssh-agent and ssh_config)")
    p.add_argument("--known-hosts", type=Path, metavar="FILE",
                   help="known_hosts file to check the host key against "
                        "(default: ~/.ssh/known_hosts)")
    p.add_argument("--accept-new-host-key", action="store_true",
                   help="trust an unknown host key and record it in the known_hosts file "
                        "(a changed key is always refused)")
    p.add_argument("--ssh-config", type=Path, metavar="FILE",
                   help="ssh client config to read instead of ~/.ssh/config")


def _ssh_options(args: argparse.Namespace) -> SshOptions:
    """SshOptions from the flags _add_ssh_source added (a sudo prompt only on a terminal)."""
    from p2v.source.ssh import SshOptions, terminal_sudo_prompt

    return SshOptions(
        identity=args.identity, known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key, ssh_config=args.ssh_config,
        sudo_prompt=terminal_sudo_prompt if sys.stdin.isatty() else None,
    )


def _check_source(args: argparse.Namespace) -> None:
    """Parse SOURCE before a job records it anywhere (a password in it is refused, redacted)."""
    from p2v.source.ssh import parse_source

    parse_source(args.source, ssh_config=args.ssh_config, identity=args.identity)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="inventory a running source over SSH (disks, LVM, NICs, firmware, OS)",
        description=(
            "Log in to SOURCE over SSH (strict host-key checking; a non-root login uses sudo, "
            "password from P2V_SUDO_PASSWORD or a prompt) and run one batch of read-only "
            "commands: disks with partitions and filesystems (used/free), LVM, md, "
            "device-mapper, CPUs, memory, NICs (name, MAC, addresses, driver), firmware, OS "
            "and kernel, the boot disk, and at most how many bytes a copy will send. Only sh, "
            "coreutils, util-linux, /proc and /sys are needed; what is missing is reported "
            "as unknown. --json prints the p2v.inventory/1 document (docs/inventory.md), "
            "which `p2v register --inventory` reads."
        ),
    )
    _add_ssh_source(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from p2v.source.inventory import format_inventory, inspect_source
    from p2v.source.ssh import SshSource

    options = _ssh_options(args)
    with SshSource.open(args.source, options) as source:
        _say(args)(f"connected to {source.target}; collecting the inventory")
        inventory = inspect_source(source)
    print(inventory.to_json() if args.json else "\n".join(format_inventory(inventory)))
    return ExitCode.OK


# ---------------------------------------------------------------- fix
def _add_fix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fix",
        help="make copied disk images of a Linux or Windows guest boot on virtio",
        description=(
            "Open IMAGE(s) (all disks of one guest, boot disk first) in the libguestfs "
            "appliance, report what the guest is (OS, kernels and their virtio support, boot "
            "loader, BIOS/UEFI, filesystems, NICs) and the changes it needs, then make them: "
            "virtio drivers in each kernel's initramfs (the guest's own tool), device names "
            "in fstab/crypttab/grub/mdadm/LVM switched to UUID= or virtio names, the grub "
            "config regenerated and checked, NIC names pinned to the VM's MACs, the UEFI "
            "fallback loader. Windows guests get the virtio-win drivers of --virtio-win "
            "(docs/windows.md). Writes the GuestCaps JSON beside the first image "
            "(IMAGE.caps.json). --dry-run stops after the report; a second run changes "
            "nothing. See docs/fix.md."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="disk images of one guest, in source order (boot disk first)")
    p.add_argument("--inventory", type=Path, metavar="JSON",
                   help="the source's inventory (p2v inspect --json): NIC MACs, disk names")
    p.add_argument("--mac", action="append", default=[], metavar="NAME=MAC",
                   help="pin interface NAME to the VM NIC with MAC (repeatable; wins over "
                        "--inventory)")
    p.add_argument("--remove-agents", action="store_true",
                   help="remove other hypervisors' and hardware vendors' agents (always "
                        "reported)")
    p.add_argument("--serial-console", action="store_true",
                   help="add a serial console on ttyS0 (kernel and grub) for virsh console")
    p.add_argument("--virtio-win", type=Path, metavar="DIR|ISO",
                   help="Windows guests: the virtio-win ISO or directory to take the drivers "
                        "from (see docs/windows.md)")
    p.add_argument("--dry-run", action="store_true", help="report the plan, change nothing")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_fix)


def _cmd_fix(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.fix.fixer import FixOptions, fix_images, mac_changes, read_inventory
    from p2v.fix.network import NicPin, valid_name
    from p2v.fix.windows import WindowsFixResult
    from p2v.inputs import check_json_text, read_text_input
    from p2v.model import normalise_mac

    pins: dict[str, str] = {}
    source_macs: dict[str, str] = {}
    disks: tuple[str, ...] = ()
    firmware = None
    facts = None
    if args.inventory is not None:
        text = read_text_input(args.inventory, "inventory")
        check_json_text(text, args.inventory, "inventory")
        facts = read_inventory(text, str(args.inventory))
        pins.update(facts.pins)
        source_macs.update(facts.pins)
        disks, firmware = facts.disks, facts.firmware
        if disks and len(disks) != len(args.images):
            raise UsageError(detail=f"--inventory lists {len(disks)} disk(s) but "
                                    f"{len(args.images)} image(s) were given")
    for item in args.mac:
        name, sep, mac = item.partition("=")
        if not sep or not valid_name(name):
            raise UsageError(detail=f"--mac {item!r}: want NAME=MAC, e.g. eth0=52:54:00:12:34:56")
        pins[name] = normalise_mac(mac, f"--mac {name}")
    macs = list(pins.values())
    if len(set(macs)) != len(macs):
        raise UsageError(detail=f"the same MAC is given to two interfaces: {pins}")
    for index, image in enumerate(args.images):
        check_disk_image(image, boot=index == 0)    # before the appliance starts
    options = FixOptions(pins=tuple(NicPin(n, m) for n, m in pins.items()),
                         mac_map=mac_changes(source_macs, pins), source_disks=disks,
                         firmware=firmware, dry_run=args.dry_run,
                         serial_console=args.serial_console,
                         remove_agents=args.remove_agents, virtio_win=args.virtio_win,
                         disk_ids=facts.disk_ids if facts else (),
                         mpath_maps=facts.mpath_maps if facts else ())
    result = fix_images(args.images, options, progress=_say(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return ExitCode.OK
    if isinstance(result, WindowsFixResult):
        print("\n".join(result.lines()))
        return ExitCode.OK
    r = result.report
    print(f"{r.product}: {r.distro} {r.version} (family {r.family or 'unknown'}), "
          f"{r.firmware}, boot loader {r.bootloader}"
          + (f" ({r.grub_cfg})" if r.grub_cfg else ""))
    for k in r.kernels:
        virtio = ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in k.virtio.items())
        print(f"  kernel {k.version}: {k.initrd or 'no initramfs'}: {virtio}")
    for f in r.filesystems:
        print(f"  filesystem {f.device} {f.type} {f.mountpoint or '-'} UUID={f.uuid or '-'}")
    if r.esp_loaders:
        print(f"  EFI loaders: {', '.join(r.esp_loaders)}")
    print(f"  NICs configured: {', '.join(r.nic_names) or 'none found'}"
          + (f"; pinned by udev rules: {r.nic_pins}" if r.nic_pins else ""))
    if result.plan.empty:
        print("nothing to do: the guest needs no change")
    else:
        print(f"{'planned' if args.dry_run else 'made'} {len(result.plan.changes)} change(s):")
        for change in result.plan.changes:
            print(f"  {change}")
    for warning in result.plan.warnings:
        print(f"warning: {warning}")
    for check in result.checks:
        print(f"checked: {check}")
    c = result.caps
    print(f"guest caps: disks {c.disk_bus}, NIC {c.nic_model}, {c.machine}, {c.firmware}"
          + (f" -> {result.caps_path}" if result.caps_path else " (dry run: nothing written)"))
    return ExitCode.OK


# ---------------------------------------------------------------- copy
def _add_copy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "copy",
        help="copy source disks over SSH into qcow2 images (verified, resumable)",
        description=(
            "Copy each --disk of SOURCE into DIR/NAME-DEV.qcow2 while the server runs. The "
            "device is opened read-only on the source and read at idle I/O and lowest CPU "
            "priority; every chunk is hashed there and checked here (a mismatch is fetched "
            "again, then exit 5); all-zero chunks are not sent, nor (without --full) "
            "ext2/3/4 and XFS free blocks and swap areas; data is zlib-compressed on "
            "the wire when it pays. Written straight into the qcow2 (no raw staging copy) "
            "with a journal beside it: rerun the same command after any interruption and "
            "the copy resumes. A manifest (chunk hashes, digest) is written beside each "
            "image. Disks are copied --parallel at a time under one --bandwidth-limit. A "
            "source without python3 gets a slower sh/dd reader: still verified and "
            "resumable, zero chunks skipped, free space sent. See docs/copy.md."
        ),
    )
    _add_ssh_source(p)
    p.add_argument("--disk", action="append", required=True, metavar="DEV",
                   help="source block device to copy, e.g. /dev/sda (repeatable)")
    p.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                   help="where the images, journals and manifests go")
    p.add_argument("--name", help="image name stem (default: the source's hostname)")
    p.add_argument("--full", action="store_true",
                   help="send every non-zero byte for a byte-identical image (default: skip "
                        "ext2/3/4 and XFS free blocks and swap areas too)")
    p.add_argument("--source-priority", choices=("low", "normal"), default="low",
                   help="CPU/IO priority of the reader on the source (default: low)")
    p.add_argument("--no-compress", action="store_true", help="never compress on the wire")
    p.add_argument("--chunk-size", type=_at_least_one, default=4, metavar="MiB",
                   help="chunk size in MiB (default: 4)")
    p.add_argument("--parallel", type=_parallel, default=2, metavar="N",
                   help="disks copied at the same time, 1 to 4 (default: 2; each costs "
                        "about 35 MiB of memory)")
    p.add_argument("--bandwidth-limit", type=_rate, metavar="RATE",
                   help="at most RATE bytes/s on the wire over all disks, e.g. 50M (MiB/s), "
                        "800K, 1G (default: unlimited)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout, one event each (disk-start, progress, "
                        "disk-done, disk-complete)")
    p.set_defaults(func=_cmd_copy)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _parallel(text: str) -> int:
    from p2v.transfer.copy import MAX_PARALLEL

    value = _at_least_one(text)
    if value > MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PARALLEL}: {text!r}")
    return value


def _rate(text: str) -> float:
    from p2v.ratelimit import parse_rate

    try:
        rate = parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(rate):         # "9" * 400 overflows float() to inf
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise argparse.ArgumentTypeError(f"not a finite rate: {shown!r}")
    return rate


class _TqdmMeter:
    """One progress bar per disk on stderr: bytes of the disk done, rate, ETA, wire bytes."""

    def __init__(self, device: str, size: int, done: int, position: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=size, initial=done, unit="B", unit_scale=True,
                         unit_divisor=1024, desc=device, position=position, leave=True,
                         file=sys.stderr, mininterval=0.5)
        self._done = done

    def update(self, done_bytes: int, wire_bytes: int) -> None:
        self._bar.update(done_bytes - self._done)
        self._done = done_bytes
        self._bar.set_postfix_str(f"wire {wire_bytes / 1048576:.0f} MiB", refresh=False)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def _images_locked(source: SshSource, output_dir: Path, name: str | None) -> Iterator[str]:
    """Hold the images' lock (the one convert holds too) for a standalone copy or sync."""
    from p2v.jobdir import images_lock
    from p2v.transfer.device import source_hostname

    name = name or source_hostname(source)
    with images_lock(output_dir, name):
        yield name


def _cmd_copy(args: argparse.Namespace) -> int:
    from p2v.source.ssh import SshSource
    from p2v.transfer.copy import CopyRequest, copy_disks

    check_name(args.name)
    check_output_dir(args.output_dir)
    options = _ssh_options(args)
    request = CopyRequest(
        disks=tuple(args.disk), output_dir=args.output_dir, name=args.name, full=args.full,
        chunk_size=args.chunk_size << 20, compress=not args.no_compress,
        low_priority=args.source_priority == "low", parallel=args.parallel,
        bandwidth_limit=args.bandwidth_limit,
    )
    bars = not args.json and sys.stderr.isatty()
    say = _say(args)
    if bars:
        from tqdm import tqdm

        def say(msg: str) -> None:
            tqdm.write(f"p2v: {msg}", file=sys.stderr)

    positions = {device: i for i, device in enumerate(args.disk)}

    def meter(device: str, size: int, done: int) -> _TqdmMeter:
        return _TqdmMeter(device, size, done, positions.get(device, 0))

    def emit(event: dict[str, object]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif event["event"] == "disk-start":
            reader = (" sh-only source: zero chunks skipped, free space sent;"
                      if event.get("reader") == "sh" else "")
            say(f"{event['device']} -> {event['image']} ({event['chunks']} chunks,{reader} "
                f"{event['resumed_chunks']} already done)")
        elif event["event"] == "disk-complete":
            say(f"{event['device']}: {event['image']} is already complete")

    with SshSource.open(args.source, options) as source, \
            _images_locked(source, request.output_dir, request.name) as name:
        results = copy_disks(source, replace(request, name=name), emit,
                             meter if bars else None)
    if not args.json:
        for r in results:
            print(f"{r.device}: {r.image} ({r.data_chunks} data + {r.zero_chunks} zero "
                  f"chunks, {r.wire_bytes} bytes on the wire, {r.seconds:.1f} s"
                  + (", resumed" if r.resumed_chunks and not r.already_complete else "")
                  + ")")
    return ExitCode.OK


# ---------------------------------------------------------------- sync
def _add_sync(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        help="bring completed copies up to date, sending only changed chunks (live cutover)",
        description=(
            "After a completed `p2v copy` into DIR: the source hashes every chunk in use "
            "(read-only), p2v compares with each image's manifest and fetches only the "
            "chunks that changed, zeroing chunks no longer in use; resumable like a copy. "
            "--freeze makes this the final pass with the source's mounted filesystems on "
            "the copied disks frozen (fsfreeze) for a filesystem-consistent image; a timer "
            "started on the source first thaws them after --freeze-timeout seconds even "
            "if p2v or the link dies. --before-final/--after-final run YOUR shell command "
            "on the source around the pass (e.g. stop and start a database). These are "
            "the only things p2v ever does on a source beyond reading. See docs/sync.md."
        ),
    )
    _add_ssh_source(p)
    p.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                   help="the directory the copy wrote its images and manifests into")
    p.add_argument("--disk", action="append", metavar="DEV",
                   help="source disk to sync (repeatable; default: every disk copied "
                        "into DIR under --name)")
    p.add_argument("--name", help="image name stem used by the copy (default: the "
                                  "source's hostname)")
    _add_freeze_flags(p, "", "freeze the source's mounted filesystems on these disks during "
                             "the pass; ")
    p.add_argument("--source-priority", choices=("low", "normal"), default="low",
                   help="CPU/IO priority of the readers on the source (default: low)")
    p.add_argument("--no-compress", action="store_true", help="never compress on the wire")
    p.add_argument("--bandwidth-limit", type=_rate, metavar="RATE",
                   help="at most RATE bytes/s on the wire, e.g. 50M (default: unlimited)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout, one event each (sync-start, sync-delta, "
                        "progress, sync-done, frozen, thawed, sync-result)")
    p.set_defaults(func=_cmd_sync)


def _cmd_sync(args: argparse.Namespace) -> int:
    from p2v.source.freeze import check_freeze_timeout
    from p2v.source.ssh import SshSource
    from p2v.transfer.sync import SyncRequest, sync

    check_freeze_timeout(args.freeze_timeout)     # before connecting
    check_name(args.name)
    check_output_dir(args.output_dir)
    options = _ssh_options(args)
    request = SyncRequest(
        output_dir=args.output_dir, disks=tuple(args.disk or ()), name=args.name,
        compress=not args.no_compress, low_priority=args.source_priority == "low",
        bandwidth_limit=args.bandwidth_limit, freeze=args.freeze,
        freeze_timeout=args.freeze_timeout, before_final=args.before_final,
        after_final=args.after_final,
    )
    say = _say(args)

    def emit(event: dict[str, object]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif event["event"] == "sync-delta":
            say(f"{event['device']}: {event['changed_chunks']} changed, "
                f"{event['dropped_chunks']} dropped chunk(s) ({event['changed_bytes']} "
                f"bytes), hashed in {event['hash_seconds']} s")
        elif event["event"] == "frozen":
            frozen = event["frozen"]
            say("frozen: " + (", ".join(frozen) if isinstance(frozen, list) and frozen
                              else "nothing (no mounted filesystem on these disks)"))
            for item in event["not_frozen"] if isinstance(event["not_frozen"], list) else []:
                say(f"NOT frozen: {item['mountpoint']} ({item['why']})")
        elif event["event"] == "thawed":
            say(f"thawed after {event['freeze_s'] or 0:.1f} s")

    with SshSource.open(args.source, options) as source, \
            _images_locked(source, request.output_dir, request.name) as name:
        result = sync(source, replace(request, name=name), emit)
    if args.json:
        print(json.dumps({"event": "sync-result", **result.to_dict()}), flush=True)
        return ExitCode.OK
    for d in result.disks:
        print(f"{d.device}: {d.image} ({d.changed_chunks} changed + {d.dropped_chunks} dropped"
              f" of {d.chunks} chunks, {d.changed_bytes} bytes changed, {d.wire_bytes} bytes "
              f"on the wire, {d.seconds:.1f} s" + (", resumed" if d.resumed else "") + ")")
    if result.freeze is not None:
        f = result.freeze
        print(f"frozen {f.seconds or 0:.1f} s: {', '.join(m.mountpoint for m in f.frozen)}"
              if f.frozen else "nothing was frozen")
        for m, why in f.not_frozen:
            print(f"NOT frozen (not consistent): {m.mountpoint} ({m.fstype}): {why}")
    print(f"total: {result.changed_bytes} bytes changed, {result.wire_bytes} bytes sent, "
          f"{result.seconds:.1f} s")
    return ExitCode.OK


# ---------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a running server into a verified libvirt guest (the whole job)",
        description=(
            "One job: inspect SOURCE, preflight (host key, devices, free space for the copy "
            "estimate, the name free in libvirt, networks, tools, and what will not carry "
            "over), copy its disks (without --disk: every physical disk, never loop, ram or "
            "optical devices), fix the copy for virtio with the source's MACs, boot-check it "
            "on a throwaway overlay with its NICs off every network, then register it with "
            "libvirt (shut off unless --start). Everything lives in the job's work dir "
            "DIR/NAME; a failure leaves no domain defined and keeps the work dir: rerun the "
            "same command to continue at the first unfinished stage (the copy resumes "
            "mid-disk). `p2v clean NAME` removes it. See docs/convert.md."
        ),
    )
    _add_ssh_source(p)
    p.add_argument("--name", required=True,
                   help="the guest's name: domain name, work dir and image names")
    p.add_argument("--disk", action="append", default=[], metavar="DEV",
                   help="source disk to copy, e.g. /dev/sda (repeatable; default: every "
                        "physical disk)")
    p.add_argument("--memory", type=int, metavar="MiB", help="guest RAM (default: the source's)")
    p.add_argument("--vcpus", type=int, metavar="N",
                   help="vCPUs (default: the source's topology)")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="where the job's work dir NAME/ goes (default: $P2V_STATE_DIR/jobs, "
                        "/var/lib/p2v/jobs)")
    p.add_argument("--connect", default="qemu:///system", metavar="URI",
                   help="libvirt URI (default: qemu:///system)")
    p.add_argument("--network", action="append", default=[], metavar="[SRC=]NET",
                   help="attach source NIC SRC (name or MAC) to libvirt network NET; without "
                        "SRC=, every NIC not mapped otherwise (default: 'default')")
    p.add_argument("--bridge", action="append", default=[], metavar="[SRC=]BR",
                   help="attach source NIC SRC (name or MAC) to host bridge BR")
    p.add_argument("--pool", metavar="NAME",
                   help="upload the images into this libvirt storage pool (needed for a remote "
                        "--connect)")
    p.add_argument("--start", action="store_true", help="start the guest once registered")
    p.add_argument("--serial-console", action="store_true",
                   help="fix adds a serial console (ttyS0) whose login prompt shows the "
                        "guest's IPv4 addresses: `virsh console` and the domain's console log")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the boot check before registering (not recommended)")
    p.add_argument("--verify-timeout", type=_positive, default=300.0, metavar="S",
                   help="seconds the boot check waits for userspace (default: 300)")
    p.add_argument("--full", action="store_true",
                   help="copy every non-zero byte (default: skip ext2/3/4 free blocks and swap)")
    p.add_argument("--no-compress", action="store_true", help="never compress on the wire")
    p.add_argument("--new-macs", action="store_true",
                   help="give the guest fresh MACs (the source stays live with its own); the "
                        "guest's interface names are pinned to the new ones, so its network "
                        "configuration still applies")
    p.add_argument("--cutover", action="store_true",
                   help="live cutover: after the copy, sync passes while the delta shrinks, "
                        "then a final pass with the source's filesystems frozen (fsfreeze, "
                        "a thaw timer on the source); the downtime window is reported "
                        "(docs/sync.md)")
    _add_freeze_flags(p, "with --cutover: ", "the final pass always freezes; ")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: one event per stage change, progress tick and "
                        "message, then job-done or job-failed with the report")
    p.set_defaults(func=_cmd_convert)


def _add_freeze_flags(p: argparse.ArgumentParser, scope: str, freeze_what: str) -> None:
    """--freeze[=best-effort], --freeze-timeout and the hooks: the same for sync and convert."""
    p.add_argument("--freeze", nargs="?", const="strict", choices=("strict", "best-effort"),
                   metavar="best-effort",
                   help=f"{scope}{freeze_what}a filesystem that cannot be frozen stops it, "
                        "unless --freeze=best-effort (then it is named and left running)")
    p.add_argument("--freeze-timeout", type=_positive, default=300.0, metavar="SECONDS",
                   help=f"{scope}the source thaws itself after this long whatever happens "
                        "(default: 300)")
    p.add_argument("--before-final", metavar="CMD",
                   help=f"{scope}YOUR shell command, run on the source (via sh -c) before the "
                        "final pass and before freezing (e.g. stop a database); a failure "
                        "stops everything before the freeze")
    p.add_argument("--after-final", metavar="CMD",
                   help=f"{scope}YOUR shell command, run on the source after the final pass "
                        "and the thaw; runs even when the pass failed")


class _ConvertScreen:
    """Human progress on stderr: stage lines, one progress line per disk, messages."""

    def __init__(self, verbose: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.verbose = verbose
        self.last: dict[str, float] = {}
        self.disks: dict[str, tuple[int, int, int]] = {}   # device -> done, chunks, wire
        self.open_line = False

    def _line(self, text: str) -> None:
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False
        print(f"p2v: {text}", file=sys.stderr, flush=True)

    def __call__(self, event: dict[str, object]) -> None:
        kind, stage = event.get("event"), event.get("stage")
        if kind == "stage-start":
            self._line(f"[{stage}] ...")
        elif kind == "stage-skip":
            self._line(f"[{stage}] done in an earlier run")
        elif kind == "stage-done":
            self._line(f"[{stage}] done in {event.get('seconds')} s")
        elif kind == "message":
            self._line(f"  {event.get('text')}")
        elif kind == "disk-start":
            self._line(f"  {event.get('device')} -> {event.get('image')} "
                       f"({event.get('resumed_chunks')} of {event.get('chunks')} chunks "
                       "already done)")
        elif kind == "disk-complete":
            self._line(f"  {event.get('device')}: already complete")
        elif kind == "progress":
            self._progress(event)
        elif kind == "disk-done":
            self._line(f"  {event.get('device')}: copied, "
                       f"{human_size(float(str(event.get('wire_bytes') or 0)))} sent in "
                       f"{float(str(event.get('seconds') or 0)):.0f} s")

    def _progress(self, event: dict[str, object]) -> None:
        """A bar per disk and an overall line for the job, on one refreshed line."""
        device = str(event.get("device"))
        self.disks[device] = (int(str(event.get("done_chunks") or 0)),
                              max(1, int(str(event.get("chunks") or 1))),
                              int(str(event.get("wire_bytes") or 0)))
        done = sum(d for d, _t, _w in self.disks.values())
        total = sum(t for _d, t, _w in self.disks.values())
        sent = human_size(float(sum(w for _d, _t, w in self.disks.values())))
        width = max(10, 30 // len(self.disks))
        bars = "  ".join(
            f"{name.removeprefix('/dev/')} [{'#' * (width * d // t)}"
            f"{'.' * (width - width * d // t)}] {100 * d // t:3d}%"
            for name, (d, t, _w) in self.disks.items())
        text = f"  {bars}  | job {100 * done // total:3d}%, {sent} sent"
        if self.tty:
            print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
            self.open_line = True
        elif time.monotonic() - self.last.get(device, 0.0) > 10 or done == total:
            self.last[device] = time.monotonic()
            self._line(text.strip())


def _print_report(report: object) -> None:
    from p2v.report import JobReport

    assert isinstance(report, JobReport)
    domain = report.domain or {}
    state = "started" if domain.get("started") else "shut off"
    print(f"{report.name}: converted in {report.elapsed_s:.0f} s -> domain {domain.get('name')} "
          f"at {domain.get('uri')} ({state}; {domain.get('domain_type')}, "
          f"{domain.get('firmware')}, disks on {domain.get('disk_bus')}, NICs "
          f"{domain.get('nic_model')})")
    print(f"  {report.disk_choice}")
    for disk in report.disks:
        print(f"  disk {disk.device}: {human_size(disk.size)} -> {disk.image} "
              f"({human_size(disk.file_bytes)} on disk)")
    print(f"  bytes sent: {human_size(report.bytes_sent)} ({report.bytes_sent} B)")
    if report.downtime_s is not None:
        print(f"  cutover: the source was frozen {report.downtime_s:.1f} s (freeze to thaw); "
              "passes in sync.json")
    print("  time per stage: " + ", ".join(
        f"{s.stage} {s.seconds:.0f} s" + (" (earlier run)" if s.earlier_run else "")
        for s in report.stages))
    verdict = report.verdict
    if verdict is None:
        print("  boot check: skipped (--no-verify)")
    else:
        print(f"  boot check: BOOTED on {verdict.get('bus')} ({verdict.get('firmware')}, "
              f"{verdict.get('accel')}) in {float(verdict.get('elapsed_s') or 0):.0f} s, "
              f"NICs isolated; hostname {verdict.get('hostname')}, root {verdict.get('root')}")
        for line in report.network:
            print(f"    nic {line}")
        for line in list(verdict.get("evidence") or [])[-3:]:
            print(f"    | {line}")
    if report.not_carried_over:
        print("  not carried over:")
        for item in report.not_carried_over:
            print(f"    - {item}")
    print(f"  work dir: {report.work_dir} (log: job.log, report: report.json)")
    if not domain.get("started"):
        print(f"  start it (once the source is off its network): virsh -c {domain.get('uri')} "
              f"start {report.name}")
    print(f"  clean up: p2v clean {report.name} --domain --output-dir "
          f"{Path(report.work_dir).parent}  (removes the guest and the work dir)")


def _cmd_convert(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.job import JobSpec, default_output_dir
    from p2v.pipeline import run_job
    from p2v.source.freeze import check_freeze_timeout

    for flag, value in (("--memory", args.memory), ("--vcpus", args.vcpus)):
        if value is not None and value < 1:
            raise UsageError(detail=f"{flag} must be positive, not {value}")
    check_freeze_timeout(args.freeze_timeout)     # now, not at the final pass after the copy
    _check_source(args)
    check_name(args.name)
    check_output_dir(args.output_dir or default_output_dir())
    spec = JobSpec(
        source=args.source, name=args.name,
        output_dir=(args.output_dir or default_output_dir()).absolute(),
        disks=tuple(args.disk), memory_mib=args.memory, vcpus=args.vcpus,
        connect=args.connect, networks=tuple(args.network), bridges=tuple(args.bridge),
        pool=args.pool, start=args.start, verify=not args.no_verify, full=args.full,
        compress=not args.no_compress, identity=args.identity, known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key, ssh_config=args.ssh_config,
        verify_timeout=args.verify_timeout, new_macs=args.new_macs,
        cutover=args.cutover, freeze=args.freeze or "strict",
        freeze_timeout=args.freeze_timeout, before_final=args.before_final,
        after_final=args.after_final, serial_console=args.serial_console,
    )
    if not args.cutover and (args.before_final or args.after_final):
        raise UsageError(detail="--before-final and --after-final need --cutover")
    if args.json:
        def sink(event: dict[str, object]) -> None:
            print(json.dumps(event), flush=True)
    else:
        sink = _ConvertScreen(args.verbose > 0)
    report = run_job(spec, sink)
    if not report.ok:
        print(f"p2v: error: {report.error}", file=sys.stderr)
        return report.exit_code
    if not args.json:
        _print_report(report)
    return ExitCode.OK


# ---------------------------------------------------------------- clean
def _add_clean(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clean",
        help="remove a convert job's work dir (and, with --domain, the guest it registered)",
        description=(
            "Remove the work dir DIR/NAME of a `p2v convert` job: images, journals, log, "
            "markers. With --domain, also undefine the guest the job registered (only that "
            "guest: same name and the UUID in the job's register.json, and shut off). "
            "Without --domain a guest whose disks are in the work dir is never orphaned: the "
            "clean is refused."
        ),
    )
    p.add_argument("name", metavar="NAME", help="the job's --name")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="the job's --output-dir (default: $P2V_STATE_DIR/jobs)")
    p.add_argument("--domain", action="store_true",
                   help="also undefine the guest this job registered (with its NVRAM)")
    p.add_argument("--connect", metavar="URI",
                   help="libvirt URI (default: the one the job registered at)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_clean)


def _cmd_clean(args: argparse.Namespace) -> int:
    from p2v.clean import clean_job
    from p2v.job import default_output_dir

    result = clean_job(args.name, (args.output_dir or default_output_dir()).absolute(),
                       domain=args.domain, uri=args.connect)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return ExitCode.OK
    if result.domain:
        print(f"undefined domain {result.domain}")
    for note in result.notes:
        print(note)
    print(f"removed {result.work_dir}")
    return ExitCode.OK


# ---------------------------------------------------------------- batch
def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="convert every server of a TOML manifest, N jobs at a time, resumable",
        description=(
            "Run one `p2v convert` job per [[server]] of MANIFEST (TOML: [defaults] and one "
            "[[server]] entry each). The whole manifest is checked first: every problem is "
            "listed (file, entry, field) and nothing runs. Up to --jobs jobs run at once, "
            "each in its own process with its own work dir OUTPUT_DIR/NAME; one failing "
            "job never stops the others. A ledger (OUTPUT_DIR/.p2v-batch/ledger.sqlite) "
            "records every job, so rerunning the same command skips finished jobs and "
            "resumes the rest; Ctrl-C stops the jobs cleanly. Ends with a summary table and "
            "a report (OUTPUT_DIR/.p2v-batch/report.json); exit 0 when every job succeeded, "
            "1 when one failed. See docs/batch.md."
        ),
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the fleet's TOML manifest")
    p.add_argument("--jobs", type=_at_least_one, metavar="N",
                   help="jobs run at the same time (default: the manifest's `jobs`, else 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the manifest and print which jobs would run, resume or be "
                        "skipped; change nothing")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: the convert events of every job (with `job`) "
                        "and the batch's own (batch-start, batch-job-start, batch-job-end, "
                        "batch-done)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run the jobs on the workers of this Dask scheduler (each worker "
                        "started with --resources p2v=N runs N at once); the ledger stays "
                        "here. See docs/fleet.md")
    p.add_argument("--tries", type=_at_least_one, metavar="N", default=3,
                   help="with --scheduler: how often a job is started when the worker "
                        "running it dies, before it is failed (default 3)")
    p.set_defaults(func=_cmd_batch)


class _BatchScreen:
    """Human progress on stderr: one line per job and stage change, copy progress every 30 s."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}

    def __call__(self, event: dict[str, object]) -> None:
        kind, job, stage = event.get("event"), event.get("job"), event.get("stage")
        text = None
        if kind == "batch-start":
            text = (f"batch of {event.get('total')} job(s), {event.get('to_run')} to run, "
                    f"{event.get('jobs')} at a time; state in {event.get('state_dir')}")
        elif kind == "batch-job-skip":
            text = f"[{job}] skipped: {event.get('reason')}"
        elif kind == "batch-job-placed":
            text = (f"[{job}] on worker {event.get('worker')} in {event.get('work_dir')}"
                    + (" (resuming)" if event.get("resume") else ""))
        elif kind == "batch-job-retry":
            text = (f"[{job}] worker {event.get('previous_worker')} died; try "
                    f"{event.get('try')} of {event.get('tries')} on {event.get('worker')}"
                    + (" (resuming)" if event.get("resume") else " (afresh)"))
        elif kind == "batch-job-start":
            where = (f"in {event.get('work_dir')}" if event.get("worker") else
                     "submitted to the cluster")     # --scheduler: placed later
            text = (f"[{job}] {event.get('action')} (attempt {event.get('attempt')}, "
                    f"{event.get('reason')}) {where}")
        elif kind == "stage-start":
            text = f"[{job}] {stage} ..."
        elif kind == "stage-done":
            text = f"[{job}] {stage} done in {event.get('seconds')} s"
        elif kind == "progress":
            key = (str(job), str(event.get("device")))
            done, total = int(str(event.get("done_chunks") or 0)), int(str(event.get("chunks")
                                                                          or 1))
            if time.monotonic() - self.last.get(key, 0.0) > 30 or done == total:
                self.last[key] = time.monotonic()
                text = f"[{job}] {key[1]}: {100 * done // max(1, total)}% copied"
        elif kind == "batch-job-end":
            state = event.get("state")
            text = f"[{job}] {state}" + (f": {event.get('error')}" if state != "succeeded"
                                         else f" in {event.get('seconds')} s")
        elif kind == "batch-stopping":
            running = event.get("running")
            count = len(running) if isinstance(running, list) else 0
            text = f"stopping {count} running job(s); they are resumed by the next run ..."
        if text is not None:
            print(f"p2v: {text}", file=sys.stderr, flush=True)


def _cmd_batch(args: argparse.Namespace) -> int:
    from p2v.batch.driver import ledger_path, plan_batch, run_batch
    from p2v.batch.manifest import load_manifest
    from p2v.errors import ManifestInvalid

    try:
        manifest = load_manifest(args.manifest)
    except ManifestInvalid as exc:
        for problem in exc.problems:
            print(f"p2v: error: {problem}", file=sys.stderr)
        raise
    check_output_dir(manifest.output_dir, flag=f"{args.manifest}: output_dir")
    jobs = args.jobs or manifest.jobs or 1
    if args.dry_run:
        plan = plan_batch(manifest)
        if args.json:
            print(json.dumps({"manifest": str(manifest.path), "jobs": jobs,
                              "ledger": str(ledger_path(manifest)),
                              "plan": [{"job": i.spec.name, "action": i.action,
                                        "reason": i.reason, "source": i.spec.source,
                                        "work_dir": str(i.spec.work_dir),
                                        "spec": i.spec.to_dict()} for i in plan]}, indent=2))
            return ExitCode.OK
        width = max(4, *(len(i.spec.name) for i in plan))
        print(f"{'NAME':<{width}}  ACTION  SOURCE / WHY")
        for i in plan:
            print(f"{i.spec.name:<{width}}  {i.action:<6}  {i.spec.source}: {i.reason}")
        todo = sum(1 for i in plan if i.action != "skip")
        print(f"{todo} job(s) to run, {len(plan) - todo} to skip, {jobs} at a time; work dirs "
              f"in {manifest.output_dir}; ledger {ledger_path(manifest)} (dry run: nothing "
              "changed)")
        return ExitCode.OK
    if args.json:
        def sink(event: dict[str, object]) -> None:
            print(json.dumps(event), flush=True)
    else:
        sink = _BatchScreen()
    if args.scheduler:
        from p2v.batch.dask_pool import DaskPool, connect

        client = connect(args.scheduler)    # unreachable: one line, exit 6, nothing started
        result = run_batch(manifest, jobs=jobs, events=sink, tries=args.tries,
                           pool_factory=lambda run: DaskPool(client, run, manifest.hosts))
    else:
        result = run_batch(manifest, jobs=jobs, events=sink)
    if args.json:
        return result.exit_code
    width = max(4, *(len(j.name) for j in result.jobs))
    print(f"{'NAME':<{width}}  {'STATE':<11}  {'STAGE':<9}  {'TIME':>6}  DETAIL")
    for j in result.jobs:
        state = "skipped" if j.action == "skip" else (
            "not run" if j.action == "not-started" else j.state)
        seconds = f"{j.seconds:.0f} s" if j.seconds is not None and j.action != "skip" else "-"
        if j.state == "succeeded":
            summary = j.summary
            detail = (f"domain {summary.get('domain')} at {summary.get('uri')}"
                      + (", boot checked" if summary.get("booted") else "")
                      if summary else f"done earlier; {j.work_dir}")
        else:
            detail = (j.error or "") + (f" (log: {j.log})" if j.log else "")
        print(f"{j.name:<{width}}  {state:<11}  {j.stage or '-':<9}  {seconds:>6}  {detail}")
    counts = result.counts
    print(f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['skipped']} "
          f"skipped" + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "")
          + (f", {counts['pending']} not started" if counts["pending"] else "")
          + f"; report {result.report_path}")
    if result.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
    return result.exit_code


# ---------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit 2), like every other p2v error."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p2v",
        description="Turn a running physical server into a bootable, verified KVM guest.",
    )
    parser.add_argument("--version", action="version", version=f"p2v {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output on stderr (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_verify(sub)
    _add_demo(sub)
    _add_register(sub)
    _add_inspect(sub)
    _add_copy(sub)
    _add_sync(sub)
    _add_fix(sub)
    _add_convert(sub)
    _add_clean(sub)
    _add_batch(sub)
    return parser




def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="p2v: %(levelname)s: %(message)s")
    from p2v.secure import private_umask, private_umask_restore

    umask = private_umask()     # every file p2v or its children write: 0600, dirs 0700
    runner.interrupt_on_sigint()    # even under nohup: p2v's own stop signal
    try:
        return int(args.func(args))
    except P2VError as exc:
        print(f"p2v: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2v: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        private_umask_restore(umask)


if __name__ == "__main__":
    sys.exit(main())
