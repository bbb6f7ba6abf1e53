"""p2v fix on a phony SAN-booted guest: / and /boot on /dev/mapper/mpatha-partN.

The image is built without the appliance (mke2fs -d, sfdisk, dd), so the only appliance
launch is the fix itself. libguestfs hands back such an fstab's names as they are and cannot
mount them; p2v mounts the root inspection found and /boot by the multipath binding, then
rewrites every name of the map and adds the blacklist drop-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.fix.base import FixResult
from p2v.fix.fixer import fix_images
from p2v.fix.linux.inspect import GuestReport
from p2v.fix.linux.multipath import dropin_text
from p2v.fix.options import FixOptions
from p2v.runner import run

MiB = 1 << 20
WWID = "3600508b400105e210000900000490000"
U_BOOT = "0b0b0b0b-1111-4111-8111-000000000001"
U_ROOT = "0a0a0a0a-2222-4222-8222-000000000002"
ROOT_FILES = {
    "etc/os-release": 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="phony SAN server"\n',
    "etc/debian_version": "12.5\n",
    "etc/fstab": ("/dev/mapper/mpatha-part2 / ext4 errors=remount-ro 0 1\n"
                  "/dev/mapper/mpatha-part1 /boot ext4 defaults 0 2\n"
                  "/dev/mapper/mpathb-part1 /srv/san xfs defaults 0 2\n"),
    "etc/multipath/bindings": f"mpatha {WWID}\nmpathb 36001405f3a1b2c3d4e5f60718293a4b5\n",
    "etc/multipath.conf": "defaults {\n    user_friendly_names yes\n}\n",
    "sbin/multipath": "", "bin/sh": "", "usr/bin/.keep": "", "lib/modules/.keep": "",
    "boot/.keep": "", "srv/san/.keep": "",
}
BOOT_FILES = {"grub/grub.cfg": "\tlinux\t/vmlinuz root=/dev/mapper/mpatha-part2 ro quiet\n"}


def _fs(tmp: Path, name: str, files: dict[str, str], uuid: str, size: int) -> Path:
    tree = tmp / name
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    image = tmp / f"{name}.img"
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-U", uuid, "-d", str(tree), str(image),
         f"{size // 1024}k"])
    return image


def _disk(tmp: Path) -> Path:
    boot = _fs(tmp, "boot", BOOT_FILES, U_BOOT, 16 * MiB)
    root = _fs(tmp, "root", ROOT_FILES, U_ROOT, 32 * MiB)
    disk = tmp / "san.raw"
    with disk.open("wb") as f:
        f.truncate(52 * MiB)
    run(["sfdisk", "-q", str(disk)], input="label: dos\n1MiB,16MiB,L\n17MiB,32MiB,L\n")
    for image, start in ((boot, 1), (root, 17)):
        run(["dd", f"if={image}", f"of={disk}", "bs=1M", f"seek={start}", "conv=notrunc",
             "status=none"])
    return disk


# One appliance launch: ~20 s on a quiet host, 5 minutes under nice -n 19 on a loaded one.
@pytest.mark.slow
def test_san_booted_guest_is_mounted_by_its_binding_and_every_map_name_rewritten(
        tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    result = fix_images([disk], FixOptions())
    assert isinstance(result, FixResult) and isinstance(result.report, GuestReport)
    # /boot was mounted through the binding: its grub config was found and fixed.
    assert result.report.grub_cfg == "/boot/grub/grub.cfg"
    plan = result.plan
    fstab = plan.files["/etc/fstab"].splitlines()
    assert fstab[0] == f"UUID={U_ROOT} / ext4 errors=remount-ro 0 1"
    assert fstab[1] == f"UUID={U_BOOT} /boot ext4 defaults 0 2"
    assert fstab[2] == "/dev/mapper/mpathb-part1 /srv/san xfs defaults,nofail 0 2"
    assert plan.files["/etc/multipath/conf.d/p2v-virtio.conf"] == dropin_text()
    assert f"root=UUID={U_ROOT}" in plan.files["/boot/grub/grub.cfg"]
    assert any("/dev/mapper/mpathb-part1" in w for w in plan.warnings)
    assert any("will exist on virtio" in c for c in result.checks)
