"""The first-boot script, run (with the cmd subset interpreter) over simulated boots against
a pnputil that fails or succeeds; the Group Policy files and the pure registry planning."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from cmdsubset import CmdSubset, Unsupported

from p2v.errors import UsageError
from p2v.fix.session import GuestSession
from p2v.fix.windows import firstboot
from p2v.fix.windows.catalog import load_catalog
from p2v.fix.windows.hive import RegValue, create_hive, open_hive
from p2v.fix.windows.inspect import WindowsReport
from p2v.fix.windows.plan import (
    boot_driver_edits,
    cdd_key,
    extended_device_path,
    plan_windows,
)


def boots(tmp_path: Path, text: str, codes: list[int], n: int) -> tuple[list[list[str]], Path]:
    """Run the script at n boots; pnputil answers with codes in turn (the last repeats)."""
    stage = tmp_path / "Drivers" / "p2v-virtio"
    stage.mkdir(parents=True, exist_ok=True)
    calls: list[list[str]] = []

    def pnputil(argv: list[str]) -> tuple[int, str]:
        calls.append(argv)
        return codes[min(len(calls), len(codes)) - 1], "Microsoft PnP Utility"

    for _ in range(n):
        assert CmdSubset(tmp_path, {"pnputil.exe": pnputil}).run(text) == 0
    return calls, stage


@pytest.mark.parametrize("style", ["legacy", "modern"])
def test_a_failing_pnputil_is_tried_max_times_then_given_up_with_a_reason(
        tmp_path: Path, style: str) -> None:
    calls, stage = boots(tmp_path, firstboot.script_text(style), [1], n=8)
    assert len(calls) == firstboot.MAX_TRIES == 3
    want = (["-i", "-a", r"C:\Windows\Drivers\p2v-virtio\*.inf"] if style == "legacy"
            else ["/add-driver", r"C:\Windows\Drivers\p2v-virtio\*.inf", "/install"])
    assert calls[0] == want
    assert (stage / "firstboot.done").read_text().strip() == "gave up"
    log = (stage / "firstboot.log").read_text()
    assert log.count("pnputil exit code 1") == 3
    assert "attempt 3 of 3" in log and "attempt 4" not in log
    assert "giving up after 3 attempts: pnputil failed each time (last exit code 1)" in log
    assert (stage / "firstboot.tries").read_text().strip() == "3"


@pytest.mark.parametrize("code", firstboot.PNPUTIL_OK)
def test_success_on_the_second_boot_stops_there(tmp_path: Path, code: int) -> None:
    calls, stage = boots(tmp_path, firstboot.script_text("modern"), [5, code], n=5)
    assert len(calls) == 2
    assert (stage / "firstboot.done").read_text().strip() == "installed"
    assert "will try again at the next boot" in (stage / "firstboot.log").read_text()


def test_the_bound_is_data(tmp_path: Path) -> None:
    calls, _ = boots(tmp_path, firstboot.script_text("modern", max_tries=5), [2], n=9)
    assert len(calls) == 5


def test_the_interpreter_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(Unsupported):
        CmdSubset(tmp_path, {}).run("shutdown /r /t 0\r\n")


def test_script_never_reboots_and_uses_crlf() -> None:
    text = firstboot.script_text("legacy")
    assert "shutdown" not in text.lower() and "\r\n" in text and "\n" not in text.replace(
        "\r\n", "")


def test_scripts_ini_keeps_existing_scripts_and_adds_ours_once() -> None:
    existing = "[Startup]\r\n0CmdLine=corp-inventory.cmd\r\n0Parameters=/q\r\n"
    once = firstboot.scripts_ini_with_ours(existing)
    assert "0CmdLine=corp-inventory.cmd" in once and "1CmdLine=p2v-firstboot.cmd" in once
    assert firstboot.scripts_ini_with_ours(once) == once
    assert firstboot.startup_index(once) == (1, True)
    assert firstboot.startup_index("") == (0, False)


def test_gpt_ini_enables_scripts_once_and_bumps_the_version() -> None:
    new = firstboot.gpt_ini_with_scripts("[General]\r\nVersion=4\r\n")
    assert "Version=5" in new and firstboot.SCRIPTS_CSE in new
    assert firstboot.gpt_ini_with_scripts(new) == new


def test_device_path_is_extended_once() -> None:
    once = extended_device_path("%SystemRoot%\\inf")
    assert once == "%SystemRoot%\\inf;%SystemRoot%\\Drivers\\p2v-virtio"
    assert extended_device_path(once) == once
    assert extended_device_path(None) == once


def test_boot_driver_registration_by_database() -> None:
    catalog = load_catalog()
    viostor = catalog.driver("viostor")
    w7 = catalog.version_for(6, 1, "client", 7601)
    k25 = catalog.version_for(10, 0, "server", 26100)
    assert w7 is not None and k25 is not None
    old = {(e.key, e.name): e.value for e in boot_driver_edits(viostor, w7, "ControlSet001", "p")}
    assert old[("ControlSet001\\Services\\viostor", "Start")] == RegValue.dword(0)
    cdd = "ControlSet001\\Control\\CriticalDeviceDatabase\\" + cdd_key(viostor.pci[0])
    assert cdd.endswith("pci#ven_1af4&dev_1001&subsys_00021af4&rev_00")
    assert old[(cdd, "Service")] == RegValue.sz("viostor")
    assert not any(k.startswith("DriverDatabase") for k, _ in old)
    new = {(e.key, e.name): e.value
           for e in boot_driver_edits(viostor, k25, "ControlSet001", "viostor.inf_amd64_x")}
    assert not any("CriticalDeviceDatabase" in k for k, _ in new)
    assert new[("DriverDatabase\\DeviceIds\\" + viostor.pci[1], "viostor.inf")] == \
        RegValue.binary(b"\x01\xff\x00\x00")


def test_hive_values_round_trip_by_type(tmp_path: Path) -> None:
    path = tmp_path / "SOFTWARE"
    create_hive(path)
    values = {"s": RegValue.sz("ä x"), "e": RegValue.expand_sz("%SystemRoot%\\inf"),
              "m": RegValue.multi_sz("a", "b"), "d": RegValue.dword(7),
              "q": RegValue.qword(1 << 40), "b": RegValue.binary(b"\x01\xff")}
    with open_hive(path, write=True) as h:
        for name, value in values.items():
            assert h.set_value("A\\B", name, value)
        assert not h.set_value("a\\b", "S", RegValue.sz("ä x"))   # case-insensitive, same
    with open_hive(path) as h:
        assert h.values("A\\B") == values
        assert h.children("") == ["A"]


def _report(major: int, minor: int, variant: str, build: int) -> WindowsReport:
    catalog = load_catalog()
    version = catalog.version_for(major, minor, variant, build)
    return WindowsReport(root="/dev/sda1", product="Windows", major=major, minor=minor,
                         build=build, variant=variant, arch="amd64", systemroot="/Windows",
                         hostname="h", control_set="ControlSet001", drive="C",
                         firmware="bios", catalog_dir=version.dir if version else None)


@pytest.mark.parametrize(("nt", "variant", "build", "nic"), [
    ((5, 2), "server", 3790, "e1000"), ((6, 0), "server", 6002, "e1000"),
])
def test_a_version_without_virtio_drivers_falls_back_to_sata_and_says_so(
        nt: tuple[int, int], variant: str, build: int, nic: str) -> None:
    session = cast(GuestSession, None)      # the fallback decides before touching the guest
    plan = plan_windows(session, _report(nt[0], nt[1], variant, build), load_catalog(), None,
                        {})
    assert plan.empty and plan.drivers == [] and plan.staged == []
    assert (plan.caps.disk_bus, plan.caps.nic_model) == ("sata", nic)
    assert plan.warnings[0] == (
        f"the driver catalog has no virtio storage driver for Windows NT {nt[0]}.{nt[1]} "
        f"build {build} ({variant}) amd64: the guest keeps SATA disks and an {nic} NIC "
        "(no virtio drivers injected)")
    if nt < (6, 0):
        assert plan.warnings[1] == ("Windows NT 5.2 has no inbox AHCI driver: it boots only "
                                    "on IDE, which p2v does not offer yet")


@pytest.mark.parametrize("start", [3, 0])
def test_the_sata_fallback_makes_the_inbox_ahci_driver_start_at_boot(tmp_path: Path,
                                                                      start: int) -> None:
    """A Server 2008 (NT 6.0, no virtio-win driver) that booted from a RAID controller."""
    system = tmp_path / "SYSTEM"
    create_hive(system)
    with open_hive(system, write=True) as h:
        h.set_value("ControlSet001\\Services\\msahci", "Start", RegValue.dword(start))
    report = _report(6, 0, "server", 6002)
    plan = plan_windows(cast(GuestSession, None), report, load_catalog(), None,
                        {"SYSTEM": system})
    assert plan.caps.disk_bus == "sata"
    if start == 0:
        assert plan.empty
        return
    assert [str(c) for c in plan.changes] == [
        "registry SYSTEM: service msahci (inbox AHCI driver) starts at boot: 1 value(s) set"]
    with open_hive(system) as h:      # the host copy that apply uploads
        assert h.get("ControlSet001\\Services\\msahci", "Start") == RegValue.dword(0)
    again = plan_windows(cast(GuestSession, None), report, load_catalog(), None,
                         {"SYSTEM": system})
    assert again.empty


def test_a_known_version_without_virtio_win_is_told_to_give_it() -> None:
    with pytest.raises(UsageError, match="give --virtio-win DIR|ISO"):
        plan_windows(cast(GuestSession, None), _report(10, 0, "server", 17763), load_catalog(),
                     None, {})
