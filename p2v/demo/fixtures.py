"""Build the test bed's "legacy physical servers" from Debian's packages, cached by recipe.

A fixture is built in three stages, each as cheap as it can be:

1. mmdebstrap makes a root file system tarball from the recipe's package list (cached on
   its own, keyed by suite + packages, so editing a config file does not redo it);
2. on the host, with the real CPU, the tarball is unpacked, configured (hostname, NIC,
   sshd, keys, grub defaults, initramfs module list) and its initramfs rebuilt in a chroot
   with the recipe's tool (initramfs-tools or dracut);
3. in the libguestfs appliance the disks are partitioned (LVM too: the host has no
   device-mapper), the tree is unpacked onto them and the guest's own grub-install and
   update-grub run; for UEFI variants a variable store holding the boot entry is made.

The result lives in `<cache>/<variant>-<key>/` with a fixture.json (a FixtureImage); the key
hashes the variant's recipe files and this source file. See docs/dev/fixtures.md.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

from p2v import runner
from p2v.demo.image import FixtureError, FixtureImage
from p2v.errors import P2VError
from p2v.fix.session import GuestSession, open_guest

log = logging.getLogger(__name__)

RECIPE_DIR = Path(
    os.environ.get("P2V_FIXTURE_RECIPES", Path(__file__).resolve().parents[2] / "fixtures")
)
DEFAULT_CACHE_DIR = Path("/var/cache/p2v/fixtures")
FIXTURE_JSON = "fixture.json"
OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

Progress = Callable[[str], None]

# Partition types by name: (MBR id, GPT type GUID).
PARTITION_TYPES: dict[str, tuple[int, str]] = {
    "linux": (0x83, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    "swap": (0x82, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    "lvm": (0x8E, "E6D6D379-F507-44C2-A23C-238F2A3DF928"),
    "raid": (0xFD, "A19D880F-05FC-4D3B-A006-743F0F84911E"),
    "esp": (0xEF, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    # GPT on BIOS: the 1 MiB partition grub-pc embeds its core image in (no MBR id).
    "bios_grub": (0, "21686148-6449-6E6F-744E-656564454649"),
}
# Network configuration systems a recipe can give the server.
NETWORK_SYSTEMS = ("ifupdown", "networkd")
MDADM_CONF = "/etc/mdadm/mdadm.conf"
# File systems that cannot hold Unix ownership: mounted only after the tree is unpacked.
NON_UNIX_FS = ("vfat",)
ALIGN_SECTORS = 2048  # 1 MiB in 512-byte sectors
# The Debian package of each initramfs tool a recipe can name: added to its package list.
INITRAMFS_PACKAGES = {"initramfs-tools": "initramfs-tools", "dracut": "dracut"}
DRACUT_CONF = "/etc/dracut.conf.d/10-p2v-fixture.conf"


def _log_progress(message: str) -> None:
    log.info("%s", message)


# --------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Partition:
    size_mib: int  # 0: the rest of the disk
    type: str = "linux"
    bootable: bool = False


@dataclass(frozen=True)
class Disk:
    size_mib: int
    table: Literal["mbr", "gpt"]
    partitions: tuple[Partition, ...]


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    size_mib: int  # 0: what is left in the volume group


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    pvs: tuple[str, ...]
    lvs: tuple[LogicalVolume, ...]


@dataclass(frozen=True)
class MdArray:
    """An md RAID array, made in the appliance with a fixed UUID so that stage 2 can write
    mdadm.conf (and the initramfs holding it) before the array exists."""

    device: str  # /dev/md0
    level: str  # raid1
    members: tuple[str, ...]  # as the appliance sees them (/dev/sda1, /dev/sdb1)
    uuid: str  # mdadm's form: 8:8:8:8 hex digits
    conf_devices: str = "partitions"  # mdadm.conf's DEVICE line (a glob such as /dev/sd[ab]1)


@dataclass(frozen=True)
class Filesystem:
    device: str  # as the appliance sees it (/dev/sda1, /dev/vg0/root)
    type: str  # ext4, xfs, vfat, swap, btrfs
    fstab: str  # "UUID" or the literal spec fstab names (/dev/sda1, /dev/mapper/vg0-root)
    mountpoint: str | None = None
    options: str | None = None
    subvolume: str | None = None  # btrfs: made at the top and mounted (subvol= in fstab)


@dataclass(frozen=True)
class Recipe:
    variant: str
    suite: str
    firmware: Literal["bios", "uefi"]
    bootloader: Literal["grub-pc", "grub-efi"]
    initramfs: Literal["initramfs-tools", "dracut"]
    hostname: str
    mac: str
    nic_name: str
    pin_nic_name: bool
    address: str
    gateway: str
    root_password: str
    root_device: str
    packages: tuple[str, ...]
    initramfs_modules: tuple[str, ...]
    disks: tuple[Disk, ...]
    filesystems: tuple[Filesystem, ...]
    volume_groups: tuple[VolumeGroup, ...] = ()
    files: tuple[tuple[str, Path], ...] = ()  # (guest path, source file)
    efi_loader: str | None = None
    md_arrays: tuple[MdArray, ...] = ()
    network: str = "ifupdown"  # or "networkd": a .network file matched by MACAddress=
    sources: tuple[Path, ...] = field(default=(), compare=False)  # recipe files read


def variants(recipe_dir: Path | None = None) -> list[str]:
    """The buildable variants: one TOML file each in fixtures/ (shared snippets live below)."""
    return sorted(p.stem for p in (recipe_dir or RECIPE_DIR).glob("*.toml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        if isinstance(old, list) and isinstance(value, list):
            merged[key] = old + [v for v in value if v not in old]
        elif isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


def _load_toml(path: Path, recipe_dir: Path, seen: list[Path]) -> dict[str, Any]:
    if path in seen:
        raise ValueError(f"include loop at {path}")
    seen.append(path)
    data = tomllib.loads(path.read_text())
    merged: dict[str, Any] = {}
    for include in data.pop("include", []):
        merged = _merge(merged, _load_toml(recipe_dir / include, recipe_dir, seen))
    return _merge(merged, data)


def load_recipe(variant: str, recipe_dir: Path | None = None) -> Recipe:
    """Read fixtures/<variant>.toml (and what it includes) into a Recipe."""
    recipe_dir = recipe_dir or RECIPE_DIR
    path = recipe_dir / f"{variant}.toml"
    if not path.is_file():
        known = ", ".join(variants(recipe_dir)) or "none"
        raise FixtureError(variant=variant, detail=f"no recipe {path} (variants: {known})")
    seen: list[Path] = []
    try:
        data = _load_toml(path, recipe_dir, seen)
        files = tuple(
            (guest, recipe_dir / source) for guest, source in sorted(data.get("files", {}).items())
        )
        recipe = Recipe(
            variant=variant,
            suite=data["suite"],
            firmware=data["firmware"],
            bootloader=data["bootloader"],
            initramfs=data.get("initramfs", "initramfs-tools"),
            hostname=data["hostname"],
            mac=data["mac"].lower(),
            nic_name=data["nic_name"],
            pin_nic_name=bool(data.get("pin_nic_name", False)),
            address=data["address"],
            gateway=data["gateway"],
            root_password=data["root_password"],
            root_device=data["root_device"],
            packages=_with_initramfs_package(
                data["packages"], data.get("initramfs", "initramfs-tools")),
            initramfs_modules=tuple(data.get("initramfs_modules", ())),
            disks=tuple(
                Disk(
                    size_mib=int(d["size_mib"]),
                    table=d["table"],
                    partitions=tuple(Partition(**p) for p in d["partitions"]),
                )
                for d in data["disks"]
            ),
            filesystems=tuple(Filesystem(**f) for f in data["filesystems"]),
            volume_groups=tuple(
                VolumeGroup(
                    name=vg["name"],
                    pvs=tuple(vg["pvs"]),
                    lvs=tuple(LogicalVolume(**lv) for lv in vg["lvs"]),
                )
                for vg in data.get("volume_groups", ())
            ),
            files=files,
            efi_loader=data.get("efi_loader"),
            md_arrays=tuple(
                MdArray(**{**md, "members": tuple(md["members"])})
                for md in data.get("md_arrays", ())
            ),
            network=data.get("network", "ifupdown"),
            sources=tuple(seen) + tuple(source for _, source in files),
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise FixtureError(variant=variant, detail=f"bad recipe {path}: {exc!r}") from exc
    _check_recipe(recipe)
    return recipe


def _check_md_arrays(recipe: Recipe, bad: Callable[[str], FixtureError]) -> None:
    partitions = {f"{_disk_device(i)}{n}" for i, disk in enumerate(recipe.disks)
                  for n in range(1, len(disk.partitions) + 1)}
    for md in recipe.md_arrays:
        if md.level != "raid1":
            raise bad(f"md level {md.level!r} (known: raid1)")
        if len(md.members) < 2 or not set(md.members) <= partitions:
            raise bad(f"{md.device} members {list(md.members)}: "
                      f"two or more of {sorted(partitions)}")
        groups = md.uuid.split(":")
        if len(groups) != 4 or not all(
                len(g) == 8 and all(c in "0123456789abcdef" for c in g) for g in groups):
            raise bad(f"{md.device} uuid {md.uuid!r}: mdadm's form, 8:8:8:8 lower-case hex")
    if recipe.md_arrays and "mdadm" not in recipe.packages:
        raise bad("md_arrays need the mdadm package")


def _with_initramfs_package(packages: list[str], initramfs: str) -> tuple[str, ...]:
    """The recipe's packages plus its initramfs tool's: the tools conflict in Debian, so the
    shared package list names neither."""
    tool = INITRAMFS_PACKAGES.get(initramfs)
    return tuple(packages) + ((tool,) if tool and tool not in packages else ())


def _check_recipe(recipe: Recipe) -> None:
    def bad(detail: str) -> FixtureError:
        return FixtureError(variant=recipe.variant, detail=f"bad recipe: {detail}")

    if recipe.firmware not in ("bios", "uefi"):
        raise bad(f"firmware {recipe.firmware!r}")
    if recipe.bootloader not in ("grub-pc", "grub-efi"):
        raise bad(f"bootloader {recipe.bootloader!r}")
    if recipe.initramfs not in INITRAMFS_PACKAGES:
        raise bad(f"initramfs {recipe.initramfs!r} (known: {', '.join(INITRAMFS_PACKAGES)})")
    others = set(INITRAMFS_PACKAGES.values()) - {INITRAMFS_PACKAGES[recipe.initramfs]}
    if clash := sorted(others & set(recipe.packages)):
        raise bad(f"packages {clash} conflict with initramfs = {recipe.initramfs!r}")
    if recipe.firmware == "uefi" and not recipe.efi_loader:
        raise bad("a uefi variant needs efi_loader (the boot entry's file path)")
    for disk in recipe.disks:
        if disk.table not in ("mbr", "gpt"):
            raise bad(f"partition table {disk.table!r}")
        for part in disk.partitions:
            if part.type not in PARTITION_TYPES:
                raise bad(f"partition type {part.type!r}")
            if part.type == "bios_grub" and disk.table != "gpt":
                raise bad("a bios_grub partition needs a gpt table")
    if recipe.network not in NETWORK_SYSTEMS:
        raise bad(f"network {recipe.network!r} (known: {', '.join(NETWORK_SYSTEMS)})")
    _check_md_arrays(recipe, bad)
    for fs in recipe.filesystems:
        if fs.subvolume is not None and (fs.type != "btrfs" or not fs.mountpoint):
            raise bad(f"subvolume {fs.subvolume!r} on {fs.device}: only a mounted btrfs has one")
    if not any(fs.mountpoint == "/" for fs in recipe.filesystems):
        raise bad("no file system is mounted on /")
    for _, source in recipe.files:
        if not source.is_file():
            raise bad(f"missing file {source}")


# --------------------------------------------------------------------------------------
# Keys and cache layout


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def recipe_key(recipe: Recipe, builder_source: Path | None = None) -> str:
    """Hash of the variant's recipe files and of this builder: any edit means a rebuild."""
    recipe_dir = recipe.sources[0].parent if recipe.sources else RECIPE_DIR
    parts = [Path(builder_source or __file__).read_bytes()]
    for source in sorted(set(recipe.sources)):
        try:
            name = str(source.relative_to(recipe_dir))
        except ValueError:
            name = source.name
        parts += [name.encode(), source.read_bytes()]
    return _digest(parts)


def rootfs_key(recipe: Recipe) -> str:
    """Hash of what mmdebstrap is asked for: suite, variant and the sorted package list."""
    packages = sorted(p.encode() for p in recipe.packages)
    return _digest([recipe.suite.encode(), b"minbase", *packages])


def default_cache_dir() -> Path:
    env = os.environ.get("P2V_CACHE_DIR")
    return Path(env) / "fixtures" if env else DEFAULT_CACHE_DIR


def fixture_dir(variant: str, cache_dir: Path | None = None) -> Path:
    """Where the current build of the variant lives (it may not be built yet)."""
    recipe = load_recipe(variant)
    return (cache_dir or default_cache_dir()) / f"{variant}-{recipe_key(recipe)}"


def cached_fixture(variant: str, cache_dir: Path | None = None) -> FixtureImage | None:
    """The built fixture if it is current, else None (nothing is built)."""
    meta = fixture_dir(variant, cache_dir) / FIXTURE_JSON
    return FixtureImage.from_json(meta.read_text()) if meta.is_file() else None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# Builds this process uses: each holds a shared lock on its users file until the process
# ends, so that a run of newer code (another checkout, other cache keys) pruning older
# builds leaves alone the one a test run beside it is still reading.
_IN_USE: dict[Path, IO[bytes]] = {}
UNTRACKED_AGE = 24 * 3600


def _users_file(build: Path) -> Path:
    return build.parent / f".{build.name}.users"


def use_build(build: Path) -> None:
    """Count this process among the build's users; call under the variant's lock."""
    if build not in _IN_USE:
        handle = open(_users_file(build), "ab")  # noqa: SIM115 - held until the process ends
        fcntl.flock(handle, fcntl.LOCK_SH)
        _IN_USE[build] = handle


def build_unused(build: Path) -> bool:
    """True if no process uses the build (an exclusive lock can be had at once).

    A build without a users file was made by code that kept none: it may be in use by a
    run of that code, so it counts as unused only once it is a day old."""
    users = _users_file(build)
    if not users.exists():
        try:
            return time.time() - build.stat().st_mtime > UNTRACKED_AGE
        except OSError:
            return True
    with open(users, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def remove_build(build: Path) -> None:
    """Delete a build and its users file (call once build_unused said so, under the lock)."""
    _remove(build)
    _users_file(build).unlink(missing_ok=True)


def _remove_stale(cache_dir: Path, variant: str, keep: Path) -> None:
    """Drop older builds (and leftover temp dirs) of this variant no process still uses.

    Call under the variant's lock: a user registers under that lock too, so no build can
    gain a user between the check and the removal.
    """
    for pattern in (f"{variant}-*", f".{variant}-*.tmp"):
        for path in cache_dir.glob(pattern):
            if path != keep and (path.is_dir() or path.suffix == ".tmp"):
                # Names are <variant>-<16 hex>: don't touch "bios-xfs-..." when cleaning "bios".
                stem = path.name.lstrip(".").removesuffix(".tmp").split(".")[0]
                rest = stem[len(variant) + 1 :]
                if len(rest) == 16 and all(c in "0123456789abcdef" for c in rest):
                    if path.suffix != ".tmp" and not build_unused(path):
                        log.info("keeping stale fixture build %s: another run uses it", path)
                        continue
                    log.info("removing stale fixture build %s", path)
                    remove_build(path)


# --------------------------------------------------------------------------------------
# Public API


def build_fixture(
    variant: str,
    cache_dir: Path | None = None,
    progress: Progress = _log_progress,
) -> FixtureImage:
    """Return the variant's fixture, building it first unless the cached one is current."""
    recipe = load_recipe(variant)
    cache = cache_dir or default_cache_dir()
    key = recipe_key(recipe)
    final = cache / f"{variant}-{key}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FixtureError(variant=variant, detail=f"cannot create {cache}: {exc}") from exc
    with locked(cache / f".{variant}.lock"):
        meta = final / FIXTURE_JSON
        if meta.is_file():
            use_build(final)
            _remove_stale(cache, variant, keep=final)
            progress(f"{variant}: cached at {final}")
            return FixtureImage.from_json(meta.read_text())
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{variant}-{key}.", suffix=".tmp", dir=cache))
        os.chmod(work, 0o755)
        try:
            image = _build(recipe, work, final, cache, progress)
            os.rename(work, final)
            use_build(final)
        except FixtureError:
            _remove(work)
            raise
        except (P2VError, OSError, RuntimeError) as exc:
            _remove(work)
            raise FixtureError(variant=variant, detail=str(exc)) from exc
        except BaseException:
            _remove(work)
            raise
        _remove_stale(cache, variant, keep=final)
        progress(f"{variant}: built in {time.monotonic() - started:.0f} s at {final}")
        return image


# --------------------------------------------------------------------------------------
# Stage 1: the root file system tarball (mmdebstrap)


def _apt_sources(suite: str) -> list[str]:
    """The host's apt source files that serve the suite, passed to mmdebstrap as MIRRORs.

    Keeps mirror names out of the repository: the fixture uses whatever this host uses.
    """
    candidates = ["/etc/apt/sources.list"]
    candidates += sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    candidates += sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    found = []
    for candidate in candidates:
        try:
            text = Path(candidate).read_text()
        except OSError:
            continue
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        if any(suite in line for line in lines):
            found.append(candidate)
    return found


def _rootfs_tarball(recipe: Recipe, cache: Path, progress: Progress) -> Path:
    store = cache / "rootfs"
    store.mkdir(parents=True, exist_ok=True)
    key = rootfs_key(recipe)
    tarball = store / f"{recipe.variant}-{recipe.suite}-{key}.tar"
    with locked(store / f".{recipe.variant}.lock"):
        if tarball.is_file():
            progress(f"{recipe.variant}: root file system tarball cached ({tarball.name})")
            return tarball
        for leftover in store.glob(f".{recipe.variant}-*.tmp"):  # from a killed build
            leftover.unlink(missing_ok=True)
        progress(f"{recipe.variant}: mmdebstrap {recipe.suite} ({len(recipe.packages)} packages)")
        started = time.monotonic()
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")
        try:
            runner.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    "--mode=root",
                    "--format=tar",
                    "--include=" + ",".join(recipe.packages),
                    "--aptopt=Acquire::Languages \"none\"",
                    recipe.suite,
                    partial,
                    *_apt_sources(recipe.suite),
                ],
                timeout=3600,
            )
            os.rename(partial, tarball)
        finally:
            partial.unlink(missing_ok=True)
        for old in store.glob(f"{recipe.variant}-*.tar"):
            if old != tarball and old.name.count("-") == tarball.name.count("-"):
                old.unlink(missing_ok=True)
        progress(f"{recipe.variant}: mmdebstrap took {time.monotonic() - started:.0f} s")
        return tarball


# --------------------------------------------------------------------------------------
# Stage 2: configure the tree on the host


def _interfaces(recipe: Recipe) -> str:
    loopback = "# The loopback network interface\nauto lo\niface lo inet loopback\n"
    if recipe.network != "ifupdown":
        return loopback
    return (
        loopback + "\n"
        "# The primary network interface\n"
        f"auto {recipe.nic_name}\n"
        f"iface {recipe.nic_name} inet static\n"
        f"    address {recipe.address}\n"
        f"    gateway {recipe.gateway}\n"
    )


def networkd_unit(recipe: Recipe) -> str:
    """The server's systemd-networkd .network file, matched by the NIC's MAC (not its name)."""
    return (
        "[Match]\n"
        f"MACAddress={recipe.mac}\n\n"
        "[Network]\n"
        f"Address={recipe.address}\n"
        f"Gateway={recipe.gateway}\n"
    )


def mdadm_conf(recipe: Recipe) -> str:
    """/etc/mdadm/mdadm.conf as the installer left it: members chosen by the DEVICE line."""
    lines = ["# mdadm.conf", "#",
             "# Please refer to mdadm.conf(5) for information about this file.", ""]
    for device in dict.fromkeys(md.conf_devices for md in recipe.md_arrays):
        lines.append(f"DEVICE {device}")
    lines += ["", "HOMEHOST <system>", "MAILADDR root", ""]
    lines += [f"ARRAY {md.device} metadata=1.2 UUID={md.uuid}" for md in recipe.md_arrays]
    return "\n".join(lines) + "\n"


def _persistent_net_rule(recipe: Recipe) -> str:
    return (
        "# This file was automatically generated by the /lib/udev/write_net_rules\n"
        "# program, run by the persistent-net-generator.rules rules file.\n\n"
        "# PCI device (e1000e)\n"
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", '
        f'ATTR{{address}}=="{recipe.mac}", ATTR{{dev_id}}=="0x0", ATTR{{type}}=="1", '
        f'KERNEL=="eth*", NAME="{recipe.nic_name}"\n'
    )


def fstab_text(recipe: Recipe, uuids: dict[str, str]) -> str:
    """The guest's /etc/fstab; entries asking for a UUID not in `uuids` are left out."""
    lines = ["# /etc/fstab: static file system information.", "#",
             "# <file system> <mount point>   <type>  <options>       <dump>  <pass>"]
    ordered = sorted(
        recipe.filesystems, key=lambda f: (f.type == "swap", len(f.mountpoint or ""))
    )
    for fs in ordered:
        if fs.fstab.upper() == "UUID":
            if fs.device not in uuids:
                continue
            spec = f"UUID={uuids[fs.device]}"
        else:
            spec = fs.fstab
        if fs.type == "swap":
            lines.append(f"{spec} none swap sw 0 0")
            continue
        mountpoint = fs.mountpoint or "none"
        if fs.options:
            options = fs.options
            if fs.subvolume and f"subvol={fs.subvolume}" not in options.split(","):
                options += f",subvol={fs.subvolume}"
        elif fs.subvolume:
            options = f"defaults,subvol={fs.subvolume}"
        elif mountpoint == "/":
            options = "errors=remount-ro"
        elif fs.type == "vfat":
            options = "umask=0077"
        else:
            options = "defaults"
        passno = 1 if mountpoint == "/" or fs.type == "vfat" else 2
        lines.append(f"{spec} {mountpoint} {fs.type} {options} 0 {passno}")
    return "\n".join(lines) + "\n"


def _write(root: Path, guest_path: str, text: str, mode: int = 0o644) -> None:
    target = root / guest_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.write_text(text)
    os.chmod(target, mode)


def _set_initramfs_conf(root: Path, recipe: Recipe) -> None:
    if recipe.initramfs == "dracut":
        # The dracut twin of MODULES=list: a generic (not host-only: the build host is not
        # the server) image holding exactly these drivers. dracut's qemu, virtio-fs and nvdimm
        # modules add virtio to any generic image; on the bare-metal server host-only
        # dracut leaves them out, so they are left out here too.
        _write(
            root,
            DRACUT_CONF,
            "# Storage drivers of the physical server (SATA/AHCI) and its root file system.\n"
            'hostonly="no"\n'
            f'drivers="{" ".join(recipe.initramfs_modules)}"\n'
            'omit_dracutmodules+=" qemu qemu-net virtfs virtiofs nvdimm "\n',
        )
        return
    conf = root / "etc/initramfs-tools/initramfs.conf"
    lines = conf.read_text().splitlines()
    lines = ["MODULES=list" if line.startswith("MODULES=") else line for line in lines]
    conf.write_text("\n".join(lines) + "\n")
    _write(
        root,
        "/etc/initramfs-tools/modules",
        "# Storage drivers of the physical server (SATA/AHCI) and its root file system.\n"
        + "".join(f"{module}\n" for module in recipe.initramfs_modules),
    )
    _write(root, "/etc/initramfs-tools/conf.d/resume", "RESUME=none\n")


def _host_keys(root: Path, hostname: str) -> str:
    ssh_dir = root / "etc/ssh"
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    for kind, extra in (("ed25519", []), ("ecdsa", []), ("rsa", ["-b", "3072"])):
        runner.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"root@{hostname}",
             "-f", ssh_dir / f"ssh_host_{kind}_key"]
        )
    return (ssh_dir / "ssh_host_ed25519_key.pub").read_text().strip()


def _configure_tree(recipe: Recipe, root: Path, client_public_key: str) -> str:
    """Write the server's identity and configuration; return its ed25519 host key line."""
    _write(root, "/etc/hostname", f"{recipe.hostname}\n")
    _write(
        root,
        "/etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{recipe.hostname}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    )
    _write(root, "/etc/network/interfaces", _interfaces(recipe))
    if recipe.network == "networkd":
        _write(root, f"/etc/systemd/network/10-{recipe.nic_name}.network", networkd_unit(recipe))
        runner.run(["chroot", root, "systemctl", "enable", "systemd-networkd"])
    if recipe.md_arrays:
        _write(root, MDADM_CONF, mdadm_conf(recipe))
    if recipe.pin_nic_name:
        _write(root, "/etc/udev/rules.d/70-persistent-net.rules", _persistent_net_rule(recipe))
    for guest_path, source in recipe.files:
        _write(root, guest_path, source.read_text())
    _write(root, "/etc/fstab", fstab_text(recipe, {}))
    ssh_root = root / "root/.ssh"
    ssh_root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(ssh_root, 0o700)
    _write(root, "/root/.ssh/authorized_keys", client_public_key.strip() + "\n", 0o600)
    runner.run(["chroot", root, "chpasswd"], input=f"root:{recipe.root_password}\n")
    host_key = _host_keys(root, recipe.hostname)
    _set_initramfs_conf(root, recipe)
    return host_key


def _build_initramfs(recipe: Recipe, root: Path) -> None:
    if recipe.initramfs == "dracut":
        # Debian's dracut also writes /boot/initrd.img-KVER; /proc is needed by dracut.
        kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
        runner.run(["mount", "-t", "proc", "proc", root / "proc"])
        try:
            for kver in kernels:
                runner.run(["chroot", root, "dracut", "-f", f"/boot/initrd.img-{kver}", kver],
                           timeout=900)
        finally:
            runner.run(["umount", root / "proc"])
        list_argv = ["lsinitrd"]
    else:
        runner.run(["chroot", root, "update-initramfs", "-u", "-k", "all"], timeout=900)
        list_argv = ["lsinitramfs"]
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not initrds:
        raise FixtureError(variant=recipe.variant, detail=f"{recipe.initramfs} made no initrd")
    for initrd in initrds:
        listing = runner.run(["chroot", root, *list_argv, f"/boot/{initrd.name}"]).stdout
        modules = {Path(line).name.split(".ko")[0] for line in listing.splitlines()
                   if ".ko" in line}
        wanted = {m.replace("-", "_") for m in recipe.initramfs_modules}
        have = {m.replace("-", "_") for m in modules}
        if missing := wanted - have:
            raise FixtureError(
                variant=recipe.variant, detail=f"{initrd.name} lacks {sorted(missing)}"
            )
        if virtio := sorted(m for m in have if m.startswith("virtio")):
            raise FixtureError(variant=recipe.variant, detail=f"{initrd.name} has {virtio}")


def _stage_tree(
    recipe: Recipe, base: Path, work: Path, client_public_key: str, progress: Progress
) -> tuple[Path, str]:
    """Unpack, configure and re-pack the root file system; return (tarball, host key)."""
    root = work / "rootfs"
    root.mkdir()
    try:
        tar_opts = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]
        runner.run(["tar", "-C", root, *tar_opts, "-xpf", base], timeout=900)
        progress(f"{recipe.variant}: configuring the tree, rebuilding the initramfs (host)")
        host_key = _configure_tree(recipe, root, client_public_key)
        _build_initramfs(recipe, root)
        tarball = work / "rootfs.tar"
        runner.run(["tar", "-C", root, *tar_opts, "-cpf", tarball, "."], timeout=900)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tarball, host_key


# --------------------------------------------------------------------------------------
# Stage 3: disks, in the appliance


def partition_bounds(
    sizes_mib: list[int], total_sectors: int, table: str
) -> list[tuple[int, int]]:
    """(start, end) sectors of each partition, 1 MiB aligned; size 0 takes the rest."""
    last_usable = total_sectors - (34 if table == "gpt" else 1)
    bounds = []
    start = ALIGN_SECTORS
    for size in sizes_mib:
        if size:
            end = start + size * ALIGN_SECTORS - 1
        else:
            end = (last_usable + 1) // ALIGN_SECTORS * ALIGN_SECTORS - 1
        if end > last_usable or end <= start:
            raise ValueError(f"partitions {sizes_mib} MiB do not fit in {total_sectors} sectors")
        bounds.append((start, end))
        start = end + 1
    return bounds


def _disk_device(index: int) -> str:
    return f"/dev/sd{chr(ord('a') + index)}"


# In the appliance: each disk's by-path entry (the order the API numbers them in), its
# kernel name, major:minor and size in sectors; then the mount table (to drop its own root).
_KERNEL_DISKS_SH = r"""
for e in $(ls -1v /dev/disk/by-path); do
  case "$e" in *-part*) continue;; esac
  d=$(readlink -f "/dev/disk/by-path/$e"); n=${d#/dev/}
  echo "disk $d $(cat /sys/class/block/$n/dev) $(cat /sys/class/block/$n/size)"
done
cat /proc/self/mountinfo
"""


def kernel_disks(listing: str) -> list[tuple[str, int]]:
    """The appliance's disks in API order as (kernel name, sectors), from _KERNEL_DISKS_SH's
    output: by-path order, less the appliance's own root (mounted on /)."""
    root_devs = set()
    disks: list[tuple[str, str, int]] = []
    for line in listing.splitlines():
        fields = line.split()
        if fields[:1] == ["disk"] and len(fields) == 4:
            disks.append((fields[1], fields[2], int(fields[3])))
        elif len(fields) > 4 and fields[4] == "/":
            root_devs.add(fields[2])
    return [(name, size) for name, majmin, size in disks if majmin not in root_devs]


KernelNames = dict[str, str]  # API disk name (/dev/sda) -> the appliance kernel's (/dev/sdb)


def _kernel_names(s: GuestSession, count: int) -> KernelNames:
    """The kernel's names for the recipe's disks, read once per appliance, for commands run
    in the appliance or the guest chroot: the daemon translates the names in its own calls
    only, and the kernel may enumerate the disks in another order (then /dev/sda can be the
    appliance's root, and grub-install there fails with "ext2 doesn't support embedding")."""
    listing = s.appliance_sh(_KERNEL_DISKS_SH, action="listing the appliance's disks")
    disks = kernel_disks(listing)
    if len(disks) < count:
        raise FixtureError(variant="appliance",
                           detail=f"the appliance lists {disks}, not {count} disks")
    names: KernelNames = {}
    for index, (name, sectors) in enumerate(disks[:count]):
        disk = _disk_device(index)
        want = s.blockdev_getsz(disk)
        if sectors != want:
            raise FixtureError(variant="appliance", detail=(
                f"{name} has {sectors} sectors, {disk} {want}: not the same disk"))
        names[disk] = name
    return names


def kernel_device(names: KernelNames, api_name: str) -> str:
    """/dev/sda2 -> the kernel's name of that partition (or disk)."""
    disk = api_name.rstrip("0123456789")
    if disk not in names:
        raise FixtureError(variant="appliance", detail=f"no kernel disk for {api_name}")
    return names[disk] + api_name[len(disk):]


def _layout(s: GuestSession, recipe: Recipe, names: KernelNames) -> None:
    for index, disk in enumerate(recipe.disks):
        dev = _disk_device(index)
        table = "msdos" if disk.table == "mbr" else "gpt"
        s.part_init(dev, table)
        total = s.blockdev_getsz(dev)
        bounds = partition_bounds([p.size_mib for p in disk.partitions], total, disk.table)
        for number, (part, (start, end)) in enumerate(zip(disk.partitions, bounds, strict=True), 1):
            s.part_add(dev, start, end, action=f"adding partition {number} on {dev}")
            mbr_id, gpt_guid = PARTITION_TYPES[part.type]
            if disk.table == "gpt":
                s.part_set_gpt_type(dev, number, gpt_guid)
            else:
                s.part_set_mbr_id(dev, number, mbr_id)
                if part.bootable:
                    s.part_set_bootable(dev, number)
    for md in recipe.md_arrays:
        _create_md(s, recipe, md, names)
    for vg in recipe.volume_groups:
        for pv in vg.pvs:
            s.pvcreate(pv)
        s.vgcreate(vg.name, vg.pvs)
        for lv in vg.lvs:
            s.lvcreate(lv.name, vg.name, lv.size_mib)
    for fs in recipe.filesystems:
        if fs.type == "swap":
            s.mkswap(fs.device)
        else:
            s.mkfs(fs.type, fs.device)
        if fs.subvolume:
            s.mount(fs.device, "/", action="mounting the btrfs top")
            s.btrfs_subvolume_create(f"/{fs.subvolume}")
            s.umount("/", action="unmounting the btrfs top")


def _create_md(s: GuestSession, recipe: Recipe, md: MdArray, names: KernelNames) -> None:
    """mdadm --create in the appliance (md_create cannot set the UUID the initramfs's
    mdadm.conf names); the members are fresh zeros, so they start in sync."""
    argv = ["mdadm", "--create", md.device, "--run", "--metadata=1.2", f"--level={md.level}",
            f"--raid-devices={len(md.members)}", "--assume-clean", f"--uuid={md.uuid}",
            f"--homehost={recipe.hostname}", f"--name={Path(md.device).name.removeprefix('md')}",
            *(kernel_device(names, member) for member in md.members)]
    s.appliance_sh(shlex.join(argv), action=f"creating {md.device}")
    if md.device not in s.list_md_devices(action="listing md devices"):
        raise FixtureError(variant=recipe.variant, detail=f"mdadm did not create {md.device}")


def _mount_all(s: GuestSession, recipe: Recipe, unix: bool) -> None:
    mounted = sorted(
        (fs for fs in recipe.filesystems
         if fs.mountpoint and (fs.type not in NON_UNIX_FS) == unix),
        key=lambda fs: len(fs.mountpoint or ""),
    )
    for fs in mounted:
        assert fs.mountpoint is not None
        if fs.mountpoint != "/":
            s.mkdir_p(fs.mountpoint, action=f"creating {fs.mountpoint}")
        if fs.subvolume:
            s.mount_options(f"subvol={fs.subvolume}", fs.device, fs.mountpoint,
                            action=f"mounting {fs.device} subvol={fs.subvolume} on "
                                   f"{fs.mountpoint}")
        else:
            s.mount(fs.device, fs.mountpoint, action=f"mounting {fs.device} on {fs.mountpoint}")


def _guest_command(s: GuestSession, argv: list[str]) -> str:
    """Run one of the guest's own programs, chrooted in it (slow under TCG)."""
    return s.command(argv, action=f"running {' '.join(argv)} in the guest")


def _install_bootloader(s: GuestSession, recipe: Recipe, names: KernelNames) -> None:
    if recipe.bootloader == "grub-pc":
        # RAID1 servers carry the boot loader on every member disk, as installers do.
        for index in range(len(recipe.disks) if recipe.md_arrays else 1):
            disk = names[_disk_device(index)]
            _guest_command(s, ["grub-install", "--target=i386-pc", disk])
    else:
        _guest_command(
            s,
            ["grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi",
             "--bootloader-id=debian", "--no-nvram", "--no-uefi-secure-boot"],
        )
    _guest_command(s, ["update-grub"])
    _name_root_as_the_server_does(s, recipe, names)


def _name_root_as_the_server_does(s: GuestSession, recipe: Recipe, names: KernelNames) -> None:
    """update-grub names the root by the kernel's name in the appliance: where that is not
    the server's (the disks enumerated in another order), write the server's name back."""
    if not recipe.root_device.startswith("/dev/sd"):
        return  # md and LVM names do not depend on the disk order
    seen = kernel_device(names, recipe.root_device)
    if seen != recipe.root_device:
        cfg = s.read_text("/boot/grub/grub.cfg")
        s.write_text("/boot/grub/grub.cfg",
                     cfg.replace(f"root={seen} ", f"root={recipe.root_device} "))


def _check_disk(s: GuestSession, recipe: Recipe) -> None:
    def fail(detail: str) -> FixtureError:
        return FixtureError(variant=recipe.variant, detail=detail)

    grub_cfg = s.read_text("/boot/grub/grub.cfg")
    if f"root={recipe.root_device} " not in grub_cfg:
        raise fail(f"grub.cfg does not boot root={recipe.root_device}")
    for unwanted in ("/dev/loop", "console=ttyS", "/dev/vd"):
        if unwanted in grub_cfg:
            raise fail(f"grub.cfg mentions {unwanted}")
    root = next(fs for fs in recipe.filesystems if fs.mountpoint == "/")
    if root.subvolume and f"rootflags=subvol={root.subvolume}" not in grub_cfg:
        raise fail(f"grub.cfg lacks rootflags=subvol={root.subvolume} (the root subvolume)")
    if recipe.bootloader == "grub-efi":
        assert recipe.efi_loader is not None
        loader = "/boot/efi" + recipe.efi_loader.replace("\\", "/")
        if not s.exists(loader, action=f"checking {loader}"):
            raise fail(f"grub-install left no {loader}")
        if s.exists("/boot/efi/EFI/BOOT", action="checking /boot/efi/EFI/BOOT"):
            raise fail("a removable-media fallback loader (/EFI/BOOT) was installed")


def _make_disks(
    recipe: Recipe, disks: list[Path], tarball: Path, progress: Progress
) -> None:
    for disk, spec in zip(disks, recipe.disks, strict=True):
        with open(disk, "wb") as handle:  # raw and sparse
            handle.truncate(spec.size_mib * 1024 * 1024)
    progress(f"{recipe.variant}: partitioning and unpacking in the appliance")
    with open_guest(disks, fmt="raw", memsize=1024) as s:
        names = _kernel_names(s, len(recipe.disks))
        _layout(s, recipe, names)
        _mount_all(s, recipe, unix=True)
        s.tar_in(tarball, "/", action="unpacking the root file system")
        _mount_all(s, recipe, unix=False)
        uuids = {
            fs.device: s.vfs_uuid(fs.device, action=f"reading the UUID of {fs.device}")
            for fs in recipe.filesystems
        }
        s.write_text("/etc/fstab", fstab_text(recipe, uuids), mode=0o644)
        progress(f"{recipe.variant}: grub-install and update-grub in the guest (slow under TCG)")
        _install_bootloader(s, recipe, names)
        _check_disk(s, recipe)
        s.sync(action="syncing")
        _stop_arrays(s, recipe, names)


def _stop_arrays(s: GuestSession, recipe: Recipe, names: KernelNames) -> None:
    """Stop the md arrays as a shutdown would, and check every member is marked clean.

    Left running, an array written to in its last moments keeps a dirty superblock (a
    crashed server's, due for a resync) when the appliance powers off: the copy then rightly
    treats the member as not in sync and copies all of it, which is not the server modelled.
    """
    if not recipe.md_arrays:
        return
    s.umount_all(action="unmounting everything")
    if recipe.volume_groups:
        s.vg_activate_all(False, action="deactivating the volume groups")
    for md in recipe.md_arrays:
        s.appliance_sh(shlex.join(["mdadm", "--stop", md.device]), action=f"stopping {md.device}")
    for md in recipe.md_arrays:
        for member in md.members:
            device = kernel_device(names, member)
            shown = s.appliance_sh(shlex.join(["mdadm", "--examine", device]),
                                   action=f"examining {member}")
            state = next((line.split(":", 1)[1].strip() for line in shown.splitlines()
                          if line.strip().startswith("State :")), "")
            if state != "clean":
                raise FixtureError(variant=recipe.variant,
                                   detail=f"{member} of {md.device} is {state or 'unknown'} "
                                          "after a stop, not clean")


def _virt_fw_vars() -> str:
    beside = Path(sys.executable).parent / "virt-fw-vars"
    return str(beside) if beside.exists() else runner.which("virt-fw-vars")


def _make_nvram(recipe: Recipe, dest: Path) -> None:
    assert recipe.efi_loader is not None
    if not OVMF_VARS_TEMPLATE.is_file():
        raise FixtureError(variant=recipe.variant, detail=f"{OVMF_VARS_TEMPLATE} missing")
    runner.run(
        [_virt_fw_vars(), "--input", OVMF_VARS_TEMPLATE, "--output", dest,
         "--append-boot-filepath", recipe.efi_loader]
    )


# --------------------------------------------------------------------------------------
# The whole build


def _build(
    recipe: Recipe, work: Path, final: Path, cache: Path, progress: Progress
) -> FixtureImage:
    base = _rootfs_tarball(recipe, cache, progress)
    key = work / "id_ed25519"
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                f"p2v-testbed@{recipe.hostname}", "-f", key])
    os.chmod(key, 0o600)
    tarball, host_key = _stage_tree(
        recipe, base, work, (work / "id_ed25519.pub").read_text(), progress
    )
    disks = [work / f"disk{index}.raw" for index in range(len(recipe.disks))]
    try:
        _make_disks(recipe, disks, tarball, progress)
    finally:
        tarball.unlink(missing_ok=True)
    nvram = None
    if recipe.firmware == "uefi":
        _make_nvram(recipe, work / "nvram.fd")
        nvram = final / "nvram.fd"
    image = FixtureImage(
        variant=recipe.variant,
        directory=final,
        disks=tuple(final / d.name for d in disks),
        firmware=recipe.firmware,
        nvram=nvram,
        hostname=recipe.hostname,
        nic_name=recipe.nic_name,
        mac=recipe.mac,
        address=recipe.address,
        gateway=recipe.gateway,
        root_password=recipe.root_password,
        ssh_private_key=final / "id_ed25519",
        host_public_key=host_key,
        root_device=recipe.root_device,
    )
    (work / FIXTURE_JSON).write_text(image.to_json() + "\n")  # written last: marks it complete
    return image


# --------------------------------------------------------------------------------------
# Command line: python -m p2v.demo.fixtures build|path|list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2v.demo.fixtures",
        description="Build and locate the test bed's fixture images (legacy physical servers).",
    )
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="default: $P2V_CACHE_DIR/fixtures or /var/cache/p2v/fixtures")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) fixtures; print each fixture.json path")
    build.add_argument("variants", nargs="+", metavar="VARIANT")
    path = sub.add_parser("path", help="print the current fixture.json path (exit 1 if unbuilt)")
    path.add_argument("variant", metavar="VARIANT")
    show = sub.add_parser("show", help="print the current fixture.json (exit 1 if unbuilt)")
    show.add_argument("variant", metavar="VARIANT")
    sub.add_parser("list", help="list the variants")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "list":
            print("\n".join(variants()))
        elif args.command == "build":
            for variant in args.variants:
                image = build_fixture(variant, args.cache_dir, progress=say)
                print(image.directory / FIXTURE_JSON)
        else:
            variant = cast(str, args.variant)
            image_or_none = cached_fixture(variant, args.cache_dir)
            if image_or_none is None:
                say(f"{variant}: not built (run: python -m p2v.demo.fixtures build {variant})")
                return 1
            if args.command == "path":
                print(image_or_none.directory / FIXTURE_JSON)
            else:
                print(image_or_none.to_json())
    except P2VError as exc:
        say(f"error: {exc.message}")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
