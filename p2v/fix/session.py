"""The one home of libguestfs: open disk images in the appliance and turn its errors into ours.

`GuestSession` offers a typed method for each libguestfs call p2v makes; the binding's handle
never leaves this module. Each method turns the binding's RuntimeError into a GuestfsError
naming the action (the call's name, or the words a caller gives), so callers anywhere in p2v
get a one-line error, never a traceback from the binding.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from p2v.accel import guestfs_env
from p2v.errors import GuestfsError
from p2v.scratch import adopt, scratch_dir

log = logging.getLogger(__name__)


class GuestSession:
    """A launched libguestfs handle over one guest's disks, one typed method per call."""

    def __init__(self, raw: object) -> None:
        self._raw = raw
        # Turns an fstab device libguestfs cannot mount (a multipath map, a by-id link of
        # the old disk) into the appliance device it is; called with "/" mounted.
        self.resolve_spec: Callable[[str], str | None] | None = None

    def _call(self, method: str, *args: object, action: str | None = None,
              **options: object) -> Any:
        try:
            return getattr(self._raw, method)(*args, **options)
        except RuntimeError as exc:
            raise GuestfsError(action=action or method, detail=str(exc).strip()) from exc

    # ----------------------------------------------------------------------- inspection

    def inspect_os(self, action: str | None = None) -> list[str]:
        """The root filesystems of the operating systems found (none: an empty list)."""
        return [str(r) for r in self._call("inspect_os", action=action)]

    def inspect(self) -> str:
        """Return the guest's root filesystem device, or raise if no OS is found."""
        roots = self.inspect_os(action="inspecting the guest")
        if not roots:
            raise GuestfsError(action="inspecting the guest", detail="no operating system found")
        return roots[0]

    def _inspected(self, what: str, root: str) -> str:
        return str(self._call(f"inspect_get_{what}", root))

    def inspect_get_type(self, root: str) -> str:
        return self._inspected("type", root)

    def inspect_get_distro(self, root: str) -> str:
        return self._inspected("distro", root)

    def inspect_get_product_name(self, root: str) -> str:
        return self._inspected("product_name", root)

    def inspect_get_product_variant(self, root: str) -> str:
        return self._inspected("product_variant", root)

    def inspect_get_arch(self, root: str) -> str:
        return self._inspected("arch", root)

    def inspect_get_hostname(self, root: str) -> str:
        return self._inspected("hostname", root)

    def inspect_get_package_format(self, root: str) -> str:
        return self._inspected("package_format", root)

    def inspect_get_version(self, root: str) -> tuple[int, int]:
        """(major, minor) of the guest's OS version."""
        return (int(self._call("inspect_get_major_version", root)),
                int(self._call("inspect_get_minor_version", root)))

    def inspect_get_mountpoints(self, root: str, action: str | None = None) -> dict[str, str]:
        """Mountpoint -> device, as the guest's fstab has them."""
        found = self._call("inspect_get_mountpoints", root, action=action)
        return {str(k): str(v) for k, v in found.items()}

    def inspect_get_drive_mappings(self, root: str) -> dict[str, str]:
        """Windows drive letter -> device."""
        return {str(k): str(v) for k, v in self._call("inspect_get_drive_mappings", root).items()}

    def inspect_get_windows_systemroot(self, root: str) -> str:
        return self._inspected("windows_systemroot", root)

    def inspect_get_windows_current_control_set(self, root: str) -> str:
        return self._inspected("windows_current_control_set", root)

    def inspect_get_windows_system_hive(self, root: str) -> str:
        return self._inspected("windows_system_hive", root)

    def inspect_get_windows_software_hive(self, root: str) -> str:
        return self._inspected("windows_software_hive", root)

    def application_names(self, root: str) -> list[str]:
        """The names of the guest's installed packages."""
        return [str(a["app2_name"]) for a in self._call("inspect_list_applications2", root)]

    # ------------------------------------------------------------------ files: reading

    def is_file(self, path: str) -> bool:
        return bool(self._call("is_file", path))

    def is_dir(self, path: str) -> bool:
        return bool(self._call("is_dir", path))

    def exists(self, path: str, action: str | None = None) -> bool:
        return bool(self._call("exists", path, action=action))

    def ls(self, directory: str) -> list[str]:
        return [str(n) for n in self._call("ls", directory)]

    def find(self, directory: str) -> list[str]:
        """Every path under directory, relative to it."""
        return [str(p) for p in self._call("find", directory)]

    def glob_expand(self, pattern: str) -> list[str]:
        return [str(p) for p in self._call("glob_expand", pattern)]

    def case_sensitive_path(self, path: str) -> str:
        """path in the case it exists in (FAT and NTFS are case-insensitive); as it is given
        where libguestfs cannot resolve it (a parent directory missing)."""
        try:
            return str(self._call("case_sensitive_path", path))
        except GuestfsError:
            return path

    def checksum(self, kind: str, path: str) -> str:
        return str(self._call("checksum", kind, path))

    def read_file(self, path: str, action: str | None = None) -> bytes:
        return bytes(self._call("read_file", path, action=action or f"reading {path}"))

    def read_text(self, path: str) -> str:
        return self.read_file(path).decode(errors="replace")

    def download(self, remote: str, local: Path, action: str | None = None) -> None:
        """Copy a guest file to the host."""
        self._call("download", remote, str(local), action=action)

    # ------------------------------------------------------------------ files: writing

    def write(self, path: str, data: bytes, action: str | None = None) -> None:
        self._call("write", path, data, action=action or f"writing {path}")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        self.write(path, text.encode())
        if mode is not None:
            self.chmod(mode, path)

    def chmod(self, mode: int, path: str) -> None:
        self._call("chmod", mode, path, action=f"setting mode of {path}")

    def mkdir_p(self, path: str, action: str | None = None) -> None:
        self._call("mkdir_p", path, action=action)

    def ln_s(self, target: str, link: str) -> None:
        self._call("ln_s", target, link)

    def cp(self, src: str, dst: str, action: str | None = None) -> None:
        """Copy a file inside the appliance."""
        self._call("cp", src, dst, action=action)

    def upload(self, local: Path, remote: str, action: str | None = None) -> None:
        """Copy a host file into the guest."""
        self._call("upload", str(local), remote, action=action)

    def tar_in(self, tarball: Path, directory: str, action: str | None = None) -> None:
        """Unpack a host tarball into the guest, keeping xattrs and ACLs."""
        self._call("tar_in", str(tarball), directory, xattrs=True, acls=True, action=action)

    def selinux_relabel(self, spec: str, path: str) -> None:
        """Set the SELinux labels of path (and what is under it) from file_contexts spec."""
        self._call("selinux_relabel", spec, path, force=True)

    # --------------------------------------------------------- devices and partitions

    def list_devices(self) -> list[str]:
        return [str(d) for d in self._call("list_devices")]

    def list_partitions(self) -> list[str]:
        return [str(p) for p in self._call("list_partitions")]

    def list_filesystems(self) -> dict[str, str]:
        """Device -> filesystem type (unknown, swap, LVM2_member ...)."""
        return {str(k): str(v) for k, v in self._call("list_filesystems").items()}

    def list_md_devices(self, action: str | None = None) -> list[str]:
        return [str(md) for md in self._call("list_md_devices", action=action)]

    def md_detail(self, md: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._call("md_detail", md).items()}

    def lvs(self) -> list[str]:
        """The logical volumes, as /dev/VG/LV."""
        return [str(lv) for lv in self._call("lvs")]

    def blkid(self, device: str) -> dict[str, str]:
        """What blkid says of device (TYPE, UUID, LABEL ...)."""
        return {str(k): str(v) for k, v in self._call("blkid", device).items()}

    def vfs_uuid(self, device: str, action: str | None = None) -> str:
        return str(self._call("vfs_uuid", device, action=action))

    def blockdev_getsz(self, device: str) -> int:
        """The size of device in 512-byte sectors."""
        return int(self._call("blockdev_getsz", device, action=f"sizing {device}"))

    def part_to_dev(self, partition: str) -> str:
        return str(self._call("part_to_dev", partition))

    def part_to_partnum(self, partition: str) -> int:
        return int(self._call("part_to_partnum", partition))

    def part_get_parttype(self, device: str) -> str:
        """The partition table's type: msdos, gpt ..."""
        return str(self._call("part_get_parttype", device))

    def part_numbers(self, device: str) -> list[int]:
        """The numbers of device's partitions."""
        return [int(p["part_num"]) for p in self._call("part_list", device)]

    def part_get_gpt_type(self, device: str, number: int) -> str:
        return str(self._call("part_get_gpt_type", device, number))

    # ------------------------------------------------------------------------- mounts

    def mount(self, device: str, mountpoint: str, action: str | None = None) -> None:
        self._call("mount", device, mountpoint, action=action)

    def mount_ro(self, device: str, mountpoint: str) -> None:
        self._call("mount_ro", device, mountpoint)

    def mount_options(self, options: str, device: str, mountpoint: str,
                      action: str | None = None) -> None:
        self._call("mount_options", options, device, mountpoint, action=action)

    def mkmountpoint(self, path: str) -> None:
        """A mountpoint in the appliance's own root (beside the guest's, not in it)."""
        self._call("mkmountpoint", path)

    def umount(self, mountpoint: str, action: str | None = None) -> None:
        self._call("umount", mountpoint, action=action)

    def umount_all(self, action: str | None = None) -> None:
        self._call("umount_all", action=action)

    def mount_guest(self, root: str, readonly: bool = False) -> None:
        """Mount the guest's filesystems as its fstab does (shortest mountpoint first)."""
        mounts = self.inspect_get_mountpoints(root, action="reading mountpoints")
        for mountpoint, device in sorted(mounts.items(), key=lambda m: len(m[0])):
            try:
                self._mount(device, mountpoint, readonly)
                continue
            except RuntimeError as exc:
                error = exc
            # libguestfs hands back fstab names it cannot resolve as they are: the root is
            # the one inspection found, the others may be known by name (p2v.fix.linux.multipath).
            other = root if mountpoint == "/" else (
                self.resolve_spec(device) if self.resolve_spec else None)
            try:
                if other is None or other == device:
                    raise error
                self._mount(other, mountpoint, readonly)
                log.info("mounted %s (fstab: %s) on %s", other, device, mountpoint)
            except RuntimeError as exc:
                log.warning("could not mount %s on %s: %s", device, mountpoint, exc)

    def _mount(self, device: str, mountpoint: str, readonly: bool) -> None:
        """Mount with the binding's own error (mount_guest reports and goes on)."""
        getattr(self._raw, "mount_ro" if readonly else "mount")(device, mountpoint)

    # ---------------------------------------------------------------------- commands

    def command(self, argv: Sequence[str], action: str | None = None) -> str:
        """Run one of the guest's programs, chrooted in it; its output."""
        return str(self._call("command", list(argv), action=action))

    def command_lines(self, argv: Sequence[str], action: str | None = None) -> list[str]:
        """Run one of the guest's programs, chrooted in it; its output's lines."""
        return [str(line) for line in self._call("command_lines", list(argv), action=action)]

    def appliance_sh(self, script: str, action: str | None = None) -> str:
        """Run a shell script in the appliance itself (not the guest); its output."""
        return str(self._call("debug", "sh", [script], action=action))

    def sync(self, action: str | None = None) -> None:
        self._call("sync", action=action)

    # ------------------------------------------------------------------------ repair

    def e2fsck(self, device: str) -> None:
        """e2fsck -fy: replay the journal and repair."""
        self._call("e2fsck", device, forceall=True)

    def xfs_repair(self, device: str, nomodify: bool = False) -> int:
        """xfs_repair (-n with nomodify): 0 when the filesystem is clean (or was repaired)."""
        return int(self._call("xfs_repair", device, nomodify=nomodify) if nomodify
                   else self._call("xfs_repair", device))

    # ------------------------------------------------- authoring (test images, p2v.demo.fixtures)

    def part_init(self, device: str, table: str) -> None:
        self._call("part_init", device, table, action=f"partitioning {device}")

    def part_add(self, device: str, start: int, end: int, action: str | None = None) -> None:
        """A primary partition from sector start to end (-1: the disk's end)."""
        self._call("part_add", device, "p", start, end, action=action)

    def part_set_gpt_type(self, device: str, number: int, guid: str) -> None:
        self._call("part_set_gpt_type", device, number, guid,
                   action="setting a partition type")

    def part_set_mbr_id(self, device: str, number: int, mbr_id: int) -> None:
        self._call("part_set_mbr_id", device, number, mbr_id,
                   action="setting a partition type")

    def part_set_bootable(self, device: str, number: int) -> None:
        self._call("part_set_bootable", device, number, True, action="setting the boot flag")

    def pvcreate(self, device: str) -> None:
        self._call("pvcreate", device, action=f"creating PV {device}")

    def vgcreate(self, name: str, pvs: Sequence[str]) -> None:
        self._call("vgcreate", name, list(pvs), action=f"creating VG {name}")

    def lvcreate(self, name: str, vg: str, size_mib: int | None) -> None:
        """An LV of size_mib, or of all the VG's free space (None)."""
        if size_mib:
            self._call("lvcreate", name, vg, size_mib, action=f"creating LV {name}")
        else:
            self._call("lvcreate_free", name, vg, 100, action=f"creating LV {name}")

    def vg_activate_all(self, active: bool, action: str | None = None) -> None:
        self._call("vg_activate_all", active, action=action)

    def mkfs(self, fstype: str, device: str, label: str | None = None) -> None:
        options = {"label": label} if label else {}
        self._call("mkfs", fstype, device, action=f"mkfs {fstype} {device}", **options)

    def mkswap(self, device: str) -> None:
        self._call("mkswap", device, action=f"mkswap {device}")

    def btrfs_subvolume_create(self, path: str) -> None:
        self._call("btrfs_subvolume_create", path, action=f"creating subvolume {path.lstrip('/')}")

def _appliance_sockdirs(sockdir_root: str) -> set[Path]:
    """The socket dirs of the libguestfs appliances (qemu children of this process) running now.

    Read from each child's command line (`-chardev socket,path=DIR/guestfsd.sock`): libguestfs
    offers no call that names the dir.
    """
    found: set[Path] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in argv:
                for part in arg.decode(errors="replace").split(","):
                    sock = Path(part.removeprefix("path="))
                    if (part.startswith("path=") and sock.name == "guestfsd.sock"
                            and str(sock.parent.parent) == sockdir_root
                            and sock.parent.name.startswith("libguestfs")):
                        found.add(sock.parent)
    return found


@contextmanager
def _sockdir_adopted(g: Any, scratch: Path) -> Iterator[None]:
    """While the appliance launches, record its socket dir in SCRATCH (see scratch.adopt).

    The dir is made during launch, so a watcher looks for it from the start: a p2v killed
    mid-launch would otherwise leave it in /tmp.
    """
    root = str(Path(g.get_sockdir()).resolve())
    before = _appliance_sockdirs(root)
    done = threading.Event()

    def watch() -> None:
        while True:
            new = _appliance_sockdirs(root) - before
            for path in new:
                adopt(scratch, path)
            if new or done.wait(0.05):
                return

    watcher = threading.Thread(target=watch, name="p2v-guestfs-sockdir", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@contextmanager
def open_guest(
    disks: Sequence[Path],
    *,
    readonly: bool = False,
    fmt: str | None = None,
    memsize: int | None = None,
    network: bool = False,
    extra_readonly: Sequence[Path] = (),
) -> Iterator[GuestSession]:
    """Launch the appliance over the disks; shut it down (flushing writes) on exit.

    extra_readonly: raw images attached read-only after the disks (the virtio-win ISO).
    """
    try:
        import guestfs  # noqa: PLC0415 - only importer of libguestfs by design
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise GuestfsError(
            action="loading the python binding",
            detail="import guestfs failed; run p2v from the venv built by `make setup`",
        ) from exc
    for key, value in guestfs_env().items():
        os.environ.setdefault(key, value)
    g = guestfs.GuestFS(python_return_dict=True)
    session = GuestSession(g)
    scratch = ExitStack()
    try:
        # libguestfs's own temp dir goes into a scratch dir: a killed p2v (no g.close) left
        # $TMPDIR/libguestfsXXXXXX behind; the next appliance's sweep removes it.
        tmp = scratch.enter_context(scratch_dir("guestfs"))
        g.set_tmpdir(str(tmp))
        if memsize:
            g.set_memsize(memsize)
        if network:
            g.set_network(True)
        for disk in disks:
            options: dict[str, object] = {"readonly": readonly}
            if fmt:
                options["format"] = fmt
            session._call("add_drive_opts", str(disk), action=f"adding {disk}", **options)
        for extra in extra_readonly:
            session._call("add_drive_opts", str(extra), action=f"adding {extra}",
                          readonly=True, format="raw")
        with _sockdir_adopted(g, tmp):
            session._call("launch", action="launching the appliance")
        yield session
        if not readonly:
            session._call("shutdown", action="flushing changes")
    finally:
        g.close()
        scratch.close()
