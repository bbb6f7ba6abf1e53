"""Pure logic of the boot check: reading console logs and the probe report."""

from __future__ import annotations

import pytest

from p2v.fix.console import add_console
from p2v.verify import console as con
from p2v.verify.probe import BEGIN, END

INITRAMFS_NO_ROOT = """\
Begin: Running /scripts/local-block ... done.
done.
Gave up waiting for root file system device.  Common problems:
 - Boot args (cat /proc/cmdline)
ALERT!  /dev/sda1 does not exist.  Dropping to a shell!


BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) built-in shell (ash)
(initramfs) """


@pytest.mark.parametrize(
    ("console", "firmware", "reason"),
    [
        (INITRAMFS_NO_ROOT, "", "root-device-missing"),
        ("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs", "",
         "root-device-missing"),
        ("[    2.1] Kernel panic - not syncing: Attempted to kill init!", "", "kernel-panic"),
        ("Dropping to a shell!\n(initramfs) ", "", "initramfs-shell"),
        ("You are in emergency mode. After logging in, type ...", "", "emergency-mode"),
        ("error: no such device: 1234-abcd.\ngrub rescue> ", "", "bootloader-error"),
        ("", "Boot failed: not a bootable disk\nNo bootable device.", "no-bootloader"),
        ('BdsDxe: starting Boot0002 "EFI Internal Shell" from Fv(7CB8)\nShell> ', "",
         "no-bootloader"),
        ("[  OK  ] Reached target Multi-User System.", "", None),
    ],
)
def test_diagnose_names_the_reason(console: str, firmware: str, reason: str | None) -> None:
    assert con.diagnose(console, firmware) == reason


def test_stuck_states_end_the_wait_but_progress_does_not() -> None:
    assert con.is_stuck(INITRAMFS_NO_ROOT, "")
    assert con.is_stuck("", "No bootable device.")
    assert con.is_stuck("UEFI Interactive Shell v2.2\nShell> ", "")
    # One disk failing is not final: the firmware may go on to the next one.
    assert not con.is_stuck("", "Boot failed: not a bootable disk\n")
    assert not con.is_stuck("Begin: Loading essential drivers ... done.", "")


def test_ansi_escapes_are_stripped() -> None:
    assert con.clean("\x1b[1m\x1b[33mShell> \x1b[0m\r\n") == "Shell> \n"


def test_probe_report_parsed_only_when_complete() -> None:
    body = (
        f"noise\n{BEGIN}\nhostname p2v-bios\nroot /dev/sda1\n"
        "nic eth0 52:54:00:B1:05:01 up 10.0.2.15/24\n"
        "nic enp0s4 52:54:00:00:00:02 down \n"
    )
    assert con.parse_probe(body) is None
    report = con.parse_probe(body + f"{END}\n")
    assert report is not None
    assert report.hostname == "p2v-bios"
    assert report.root == "/dev/sda1"
    assert report.interfaces[0] == con.Interface("eth0", "52:54:00:b1:05:01", "up",
                                                 ("10.0.2.15/24",))
    assert report.interfaces[1].addresses == ()


def test_evidence_puts_the_cause_first() -> None:
    lines = con.evidence_lines(INITRAMFS_NO_ROOT, "")
    assert "ALERT!  /dev/sda1 does not exist.  Dropping to a shell!" in lines[:3]


def test_console_added_to_every_kernel_line_once() -> None:
    cfg = (
        "menuentry 'Debian' {\n"
        "\tlinux\t/boot/vmlinuz-6.1.0-28-amd64 root=/dev/sda1 ro quiet\n"
        "\tinitrd\t/boot/initrd.img-6.1.0-28-amd64\n}\n"
        "menuentry 'old' {\n\tlinux /vmlinuz root=/dev/sda1 console=ttyS0\n}\n"
    )
    out = add_console(cfg)
    assert "root=/dev/sda1 ro quiet console=tty0 console=ttyS0,115200n8\n" in out
    assert "root=/dev/sda1 console=ttyS0\n" in out  # already had one: unchanged
    assert add_console(out) == out
    assert "initrd\t/boot/initrd.img-6.1.0-28-amd64\n" in out


@pytest.mark.parametrize(
    ("console", "reason", "named"),
    [
        ("mdadm: No arrays found in config file or automatically\n"
         "Gave up waiting for root file system device.\nALERT!  /dev/md0 does not exist.  "
         "Dropping to a shell!\n(initramfs) ", "md-not-assembled", "/dev/md0"),
        ('  Volume group "rhel" not found\n  Cannot process volume group rhel\n'
         "Gave up waiting for root file system device.\n", "lvm-pv-missing", "rhel"),
        ("[ TIME ] Timed out waiting for device /dev/sdb1.\n[DEPEND] Dependency failed for "
         "srv.mount - /srv.\nYou are in emergency mode.", "fstab-device-missing", "/dev/sdb1"),
        (INITRAMFS_NO_ROOT, "root-device-missing", "/dev/sda1"),
    ],
)
def test_failed_boot_names_the_cause_and_the_next_step(console: str, reason: str,
                                                       named: str) -> None:
    assert con.diagnose(console, "") == reason
    step = con.next_step(reason, con.evidence_lines(console, ""))
    assert named in step


def test_every_reason_has_a_next_step() -> None:
    for reason, _pattern in con.FAILURES:
        assert "console lines in the evidence" not in con.next_step(reason, [])
    assert con.next_step("timeout", []).startswith("no failure seen")


def test_mdadm_chatter_does_not_hide_a_missing_root() -> None:
    console = "mdadm: No arrays found in config file or automatically\n" + INITRAMFS_NO_ROOT
    assert con.diagnose(console, "") == "root-device-missing"


def test_a_login_prompt_is_not_a_boot_failure() -> None:
    """A swap device that never appeared delays the boot; the login prompt says it went on."""
    console = ("[ TIME ] Timed out waiting for device /dev/sda2.\n"
               "Debian GNU/Linux 12 p2v-bios ttyS0\n\np2v-bios login: ")
    assert con.diagnose(console, "") is None


# The evidence of two real boots of the xfsmd fixture (LVM on md RAID1) on virtio: as
# copied (no virtio driver, so no disk) and after a fix the check rejected (mdadm.conf
# DEVICE by the old controller's by-path names). The console shows the same lines.
XFSMD_NO_MEMBER = (
    "Gave up waiting for root file system device.  Common problems:",
    "ALERT!  /dev/mapper/vg0-root does not exist.  Dropping to a shell!",
    "(initramfs)",
    "mdadm: No devices listed in conf file were found.",
)


def test_an_lv_on_an_array_that_found_no_member_is_blamed_on_mdadm_not_lvm() -> None:
    console = "\n".join(XFSMD_NO_MEMBER)
    reason = con.diagnose(console, "")
    assert reason == "lvm-pv-missing"
    step = con.next_step(reason, con.evidence_lines(console, ""))
    assert step.startswith("mdadm found none of the disks its mdadm.conf selects"), step
    assert "/dev/mapper/vg0-root" in step and "DEVICE lines" in step
    assert "filter" not in step
    # Without that line the LVM advice stands.
    plain = "\n".join(XFSMD_NO_MEMBER[:3])
    assert "filter/global_filter" in con.next_step("lvm-pv-missing",
                                                   con.evidence_lines(plain, ""))
