"""Pure logic of the fixture builder: recipes, cache keys, partition maths, fstab, staleness."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from p2v.demo import fixtures
from p2v.demo.fixtures import (
    ALIGN_SECTORS,
    fstab_text,
    load_recipe,
    partition_bounds,
    recipe_key,
    rootfs_key,
    variants,
)
from p2v.demo.image import FixtureError

REPO_RECIPES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture()
def recipes(tmp_path: Path) -> Path:
    """A private copy of the repo's recipes, safe to edit."""
    target = tmp_path / "fixtures"
    shutil.copytree(REPO_RECIPES, target)
    return target


def test_variants_lists_the_toml_files_only() -> None:
    assert {"bios", "uefi", "dracut"} <= set(variants(REPO_RECIPES))
    assert "common" not in variants(REPO_RECIPES)


def test_bios_recipe_identity() -> None:
    recipe = load_recipe("bios", REPO_RECIPES)
    assert recipe.firmware == "bios"
    assert recipe.hostname == "p2v-bios"
    assert recipe.mac == "52:54:00:b1:05:01"
    assert recipe.nic_name == "eth0" and recipe.pin_nic_name
    assert recipe.root_device == "/dev/sda1"
    assert "grub-pc" in recipe.packages and "openssh-server" in recipe.packages
    assert not any("virtio" in m for m in recipe.initramfs_modules)
    assert {"ahci", "sd_mod", "ext4"} <= set(recipe.initramfs_modules)


def test_uefi_recipe_extends_common_lists() -> None:
    recipe = load_recipe("uefi", REPO_RECIPES)
    assert recipe.firmware == "uefi"
    assert recipe.nic_name == "enp0s25" and not recipe.pin_nic_name
    assert {"grub-efi-amd64", "lvm2", "linux-image-amd64"} <= set(recipe.packages)
    assert "grub-pc" not in recipe.packages
    assert "dm_mod" in recipe.initramfs_modules and "ahci" in recipe.initramfs_modules
    assert recipe.efi_loader == "\\EFI\\debian\\grubx64.efi"
    assert recipe.volume_groups[0].name == "vg0"


def test_dracut_recipe_has_dracut_and_not_initramfs_tools() -> None:
    recipe = load_recipe("dracut", REPO_RECIPES)
    assert recipe.initramfs == "dracut"
    assert "dracut" in recipe.packages and "initramfs-tools" not in recipe.packages
    assert recipe.hostname == "p2v-dracut" and recipe.nic_name == "enp0s25"
    assert not any("virtio" in m for m in recipe.initramfs_modules)
    # The other variants get initramfs-tools (the shared list names neither tool).
    assert "initramfs-tools" in load_recipe("bios", REPO_RECIPES).packages
    assert "dracut" not in load_recipe("bios", REPO_RECIPES).packages


def test_both_initramfs_tools_in_one_recipe_are_refused(recipes: Path) -> None:
    text = (recipes / "dracut.toml").read_text()
    (recipes / "dracut.toml").write_text(
        text.replace('packages = ["grub-pc"]', 'packages = ["grub-pc", "initramfs-tools"]'))
    with pytest.raises(FixtureError, match="conflict"):
        load_recipe("dracut", recipes)
    (recipes / "dracut.toml").write_text(text.replace('initramfs = "dracut"',
                                                      'initramfs = "mkinitrd"'))
    with pytest.raises(FixtureError, match="mkinitrd"):
        load_recipe("dracut", recipes)


def test_unknown_variant_is_a_fixture_error(recipes: Path) -> None:
    with pytest.raises(FixtureError, match="no recipe"):
        load_recipe("nope", recipes)


def test_key_is_stable(recipes: Path) -> None:
    assert recipe_key(load_recipe("bios", recipes)) == recipe_key(load_recipe("bios", recipes))


def test_key_changes_when_the_variant_recipe_changes(recipes: Path) -> None:
    before = recipe_key(load_recipe("bios", recipes))
    path = recipes / "bios.toml"
    path.write_text(path.read_text().replace('hostname = "p2v-bios"', 'hostname = "other"'))
    assert recipe_key(load_recipe("bios", recipes)) != before


def test_key_changes_when_a_shared_snippet_changes(recipes: Path) -> None:
    before = {v: recipe_key(load_recipe(v, recipes)) for v in ("bios", "uefi")}
    grub = recipes / "shared" / "default-grub"
    grub.write_text(grub.read_text() + "GRUB_TIMEOUT=9\n")
    after = {v: recipe_key(load_recipe(v, recipes)) for v in ("bios", "uefi")}
    assert before["bios"] != after["bios"] and before["uefi"] != after["uefi"]


def test_key_ignores_other_variants(recipes: Path) -> None:
    before = recipe_key(load_recipe("bios", recipes))
    path = recipes / "uefi.toml"
    path.write_text(path.read_text() + "\n# a comment\n")
    assert recipe_key(load_recipe("bios", recipes)) == before


def test_key_changes_with_the_builder_source(recipes: Path, tmp_path: Path) -> None:
    recipe = load_recipe("bios", recipes)
    builder = tmp_path / "builder.py"
    builder.write_text("one")
    first = recipe_key(recipe, builder)
    builder.write_text("two")
    assert recipe_key(recipe, builder) != first


def test_rootfs_key_depends_on_packages_only(recipes: Path) -> None:
    recipe = load_recipe("bios", recipes)
    before = rootfs_key(recipe)
    path = recipes / "bios.toml"
    path.write_text(path.read_text().replace('"p2v-bios"', '"renamed"'))
    assert rootfs_key(load_recipe("bios", recipes)) == before
    path.write_text(path.read_text().replace('packages = ["grub-pc"]',
                                             'packages = ["grub-pc", "less"]'))
    assert rootfs_key(load_recipe("bios", recipes)) != before


def test_partition_bounds_are_aligned_and_fill_the_disk() -> None:
    total = 2048 * 1024 * 2  # 2 GiB in sectors
    bounds = partition_bounds([1536, 0], total, "mbr")
    assert bounds[0] == (ALIGN_SECTORS, ALIGN_SECTORS + 1536 * ALIGN_SECTORS - 1)
    assert bounds[1][0] == bounds[0][1] + 1
    assert bounds[1][1] == total - 1
    gpt = partition_bounds([128, 320, 0], total, "gpt")
    assert all(start % ALIGN_SECTORS == 0 for start, _ in gpt)
    assert gpt[-1][1] <= total - 34


def test_partition_bounds_reject_overflow() -> None:
    with pytest.raises(ValueError):
        partition_bounds([4096], 2048 * 1024 * 2, "mbr")


def test_fstab_names_devices_and_uuids() -> None:
    recipe = load_recipe("uefi", REPO_RECIPES)
    text = fstab_text(recipe, {"/dev/sda2": "1234-uuid", "/dev/sda1": "ABCD-EF01"})
    lines = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert ["/dev/mapper/vg0-root", "/", "ext4", "errors=remount-ro", "0", "1"] in lines
    assert ["UUID=1234-uuid", "/boot", "ext4", "defaults", "0", "2"] in lines
    assert ["UUID=ABCD-EF01", "/boot/efi", "vfat", "umask=0077", "0", "1"] in lines
    assert ["/dev/mapper/vg0-swap", "none", "swap", "sw", "0", "0"] in lines
    # Without the UUIDs (host stage), those entries are left out.
    assert "UUID=" not in fstab_text(recipe, {})


def test_bios_fstab_uses_sda_names() -> None:
    text = fstab_text(load_recipe("bios", REPO_RECIPES), {})
    assert "/dev/sda1 / ext4" in text and "/dev/sda2 none swap" in text
    assert "UUID" not in text


def test_remove_stale_keeps_current_and_other_variants(tmp_path: Path) -> None:
    current = tmp_path / "bios-0123456789abcdef"
    old = tmp_path / "bios-fedcba9876543210"
    temp = tmp_path / ".bios-aaaaaaaaaaaaaaaa.x1y2z3.tmp"
    other = tmp_path / "bios-xfs-0123456789abcdef"
    for path in (current, old, temp, other):
        path.mkdir()
    day_old = time.time() - fixtures.UNTRACKED_AGE - 60
    os.utime(old, (day_old, day_old))
    fixtures._remove_stale(tmp_path, "bios", keep=current)
    assert current.exists() and other.exists()
    assert not old.exists() and not temp.exists()


def test_a_fresh_build_of_code_that_kept_no_users_file_is_kept(tmp_path: Path) -> None:
    """Code older than the users file never said it uses a build: a run of it may be."""
    current, old = tmp_path / "bios-0123456789abcdef", tmp_path / "bios-fedcba9876543210"
    current.mkdir()
    old.mkdir()
    fixtures._remove_stale(tmp_path, "bios", keep=current)
    assert old.exists()


def test_remove_stale_keeps_a_build_another_process_uses(tmp_path: Path) -> None:
    """A run of newer code must not delete the old build a test run beside it still reads."""
    current = tmp_path / "bios-0123456789abcdef"
    old = tmp_path / "bios-fedcba9876543210"
    for path in (current, old):
        path.mkdir()
    user = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from p2v.demo import fixtures; "
         "fixtures.use_build(Path(sys.argv[1])); print('using', flush=True); time.sleep(600)",
         str(old)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert user.stdout is not None and user.stdout.readline() == "using\n"
        fixtures._remove_stale(tmp_path, "bios", keep=current)
        assert old.exists(), "a build in use by another process was removed"
    finally:
        user.send_signal(signal.SIGKILL)
        user.wait()
    fixtures._remove_stale(tmp_path, "bios", keep=current)
    assert not old.exists() and not (tmp_path / f".{old.name}.users").exists()
    assert current.exists()


def test_cached_fixture_is_none_when_unbuilt(tmp_path: Path) -> None:
    assert fixtures.cached_fixture("bios", tmp_path) is None


def test_include_loop_is_reported(recipes: Path) -> None:
    (recipes / "loop.toml").write_text('include = ["loop.toml"]\n')
    with pytest.raises(FixtureError, match="include loop"):
        load_recipe("loop", recipes)


# --- issue 14: Debian 11 (md RAID1) and 13 (btrfs subvolume, systemd-networkd) ---------


def test_bullseye_recipe_has_md_raid1_with_a_glob_device_line() -> None:
    recipe = load_recipe("bullseye", REPO_RECIPES)
    assert recipe.suite == "bullseye" and recipe.firmware == "bios"
    assert len(recipe.disks) == 2 and recipe.root_device == "/dev/md0"
    (md,) = recipe.md_arrays
    assert md.device == "/dev/md0" and md.level == "raid1"
    assert md.members == ("/dev/sda1", "/dev/sdb1")
    assert md.conf_devices == "/dev/sd[ab]1"
    assert {"mdadm", "initramfs-tools"} <= set(recipe.packages)
    assert {"md_mod", "raid1", "ahci"} <= set(recipe.initramfs_modules)
    assert not any("virtio" in m for m in recipe.initramfs_modules)
    conf = fixtures.mdadm_conf(recipe)
    assert "DEVICE /dev/sd[ab]1\n" in conf
    assert f"ARRAY /dev/md0 metadata=1.2 UUID={md.uuid}\n" in conf
    assert "/dev/md0 / ext4 " in fstab_text(recipe, {})
    assert recipe.network == "ifupdown" and recipe.pin_nic_name


def test_trixie_recipe_has_a_btrfs_subvolume_and_networkd() -> None:
    recipe = load_recipe("trixie", REPO_RECIPES)
    assert recipe.suite == "trixie" and recipe.firmware == "bios"
    assert recipe.disks[0].table == "gpt"
    assert recipe.disks[0].partitions[0].type == "bios_grub"
    root = next(fs for fs in recipe.filesystems if fs.mountpoint == "/")
    assert root.type == "btrfs" and root.subvolume == "@"
    assert "/dev/sda2 / btrfs defaults,subvol=@ 0 1" in fstab_text(recipe, {})
    assert recipe.network == "networkd" and not recipe.pin_nic_name
    unit = fixtures.networkd_unit(recipe)
    assert f"MACAddress={recipe.mac}\n" in unit and "Name=" not in unit
    assert f"Address={recipe.address}\n" in unit
    assert "iface" not in fixtures._interfaces(recipe).replace("iface lo inet loopback", "")
    assert "btrfs-progs" in recipe.packages


def test_old_recipes_keep_their_defaults() -> None:
    for variant in ("bios", "uefi", "dracut"):
        recipe = load_recipe(variant, REPO_RECIPES)
        assert recipe.md_arrays == () and recipe.network == "ifupdown"
        assert all(fs.subvolume is None for fs in recipe.filesystems)
        assert f"iface {recipe.nic_name} inet static" in fixtures._interfaces(recipe)


def test_subvolume_options_are_not_doubled() -> None:
    recipe = load_recipe("trixie", REPO_RECIPES)
    root = next(fs for fs in recipe.filesystems if fs.mountpoint == "/")
    again = replace(root, options="noatime,subvol=@")
    assert "noatime,subvol=@ 0" in fstab_text(replace(recipe, filesystems=(again,)), {})


@pytest.mark.parametrize(
    ("variant", "old", "new", "message"),
    [
        ("bullseye", 'level = "raid1"', 'level = "raid5"', "md level 'raid5'"),
        ("bullseye", '"/dev/sda1", "/dev/sdb1"', '"/dev/sda1", "/dev/sdc1"', "members"),
        ("bullseye", 'uuid = "5b0d2a11:', 'uuid = "5B0D2A11:', "8:8:8:8"),
        ("bullseye", '"grub-pc", "mdadm"', '"grub-pc"', "need the mdadm package"),
        ("trixie", 'network = "networkd"', 'network = "netplan"', "network 'netplan'"),
        ("trixie", 'table = "gpt"', 'table = "mbr"', "bios_grub partition needs a gpt"),
        ("trixie", 'type = "btrfs"', 'type = "ext4"', "only a mounted btrfs"),
        ("bullseye", 'conf_devices = ', 'devices = ', "unexpected keyword"),
    ],
)
def test_bad_new_recipe_keys_are_refused(
    recipes: Path, variant: str, old: str, new: str, message: str
) -> None:
    path = recipes / f"{variant}.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(FixtureError) as info:
        load_recipe(variant, recipes)
    assert message in str(info.value)


# The kernel may name the disks in another order than the API numbers them: then the
# appliance's root is /dev/sda and the recipe's first disk /dev/sdb.
SWAPPED = """\
disk /dev/sdb 8:16 4194304
disk /dev/sdc 8:32 4194304
disk /dev/sda 8:0 8388608
23 1 8:0 / / rw,noatime - ext2 /dev/root rw
24 23 0:21 / /proc rw,relatime - proc /proc rw
30 23 8:18 / /sysroot rw,relatime - btrfs /dev/sdb2 rw
"""


def test_kernel_disks_follow_the_api_order_and_drop_the_appliance_root() -> None:
    assert fixtures.kernel_disks(SWAPPED) == [("/dev/sdb", 4194304), ("/dev/sdc", 4194304)]


def test_kernel_disks_in_the_usual_order_map_each_name_to_itself() -> None:
    usual = ("disk /dev/sda 8:0 4194304\ndisk /dev/sdb 8:16 8388608\n"
             "23 1 8:16 / / rw,noatime - ext2 /dev/root rw\n")
    assert fixtures.kernel_disks(usual) == [("/dev/sda", 4194304)]


def test_a_partition_takes_its_disks_kernel_name() -> None:
    names = {"/dev/sda": "/dev/sdb", "/dev/sdb": "/dev/sdc"}
    assert fixtures.kernel_device(names, "/dev/sda2") == "/dev/sdb2"
    assert fixtures.kernel_device(names, "/dev/sdb") == "/dev/sdc"
    with pytest.raises(FixtureError, match="no kernel disk for /dev/sdc1"):
        fixtures.kernel_device(names, "/dev/sdc1")
