"""p2v fix --virtio-win on phony Windows 7, Server 2019 and Server 2025 images.

Each image is fixed once per session, when a test first asks for it, on a qcow2 overlay of
the cached raw image (never written); a read-only appliance then reads its hives and files
back (`make test`: win2k19 only; `make test-slow`: the others, and the second runs that
must change nothing). Windows itself never runs here: what is
checked is what p2v wrote, value by value and file by file, and the first-boot script
that is on the image is run over simulated boots against a failing pnputil.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cmdsubset import CmdSubset
from schema_check import assert_valid
from winimage import PHONY_WINDOWS, make_virtio_win_iso, make_virtio_win_tree

from p2v.fix.base import FixResult
from p2v.fix.fixer import fix_images
from p2v.fix.options import FixOptions
from p2v.fix.session import open_guest
from p2v.fix.windows import firstboot
from p2v.fix.windows.catalog import load_catalog
from p2v.fix.windows.hive import RegValue, open_hive
from p2v.fix.windows.inspect import WindowsReport
from p2v.fix.windows.plan import CONFIGURATION, cdd_key
from p2v.runner import run

CATALOG = load_catalog()
# make test fixes only win2k19 (from the ISO; a DRIVERS hive); the others are slow.
KEYS = [pytest.param("win7", marks=pytest.mark.slow), "win2k19",
        pytest.param("win2k25", marks=pytest.mark.slow)]
SPECS = {s.key: s for s in PHONY_WINDOWS}
# Which catalog entry each phony image is, and whether it comes from the ISO or a directory.
EXPECT = {"win7": "w7", "win2k19": "2k19", "win2k25": "2k25"}
FROM_ISO = {"win2k19"}
STAGE = "Windows/Drivers/p2v-virtio"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Fixed:
    key: str
    image: Path
    options: FixOptions
    first: FixResult
    hash_first: str
    system: Path = Path()
    software: Path = Path()
    drivers: Path | None = None        # Windows 10+: the DRIVERS hive
    files: dict[str, bytes] = field(default_factory=dict)   # path under C: -> contents


@pytest.fixture(scope="session")
def virtio_win(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("virtio-win")
    tree = make_virtio_win_tree(root / "tree")
    return tree, make_virtio_win_iso(tree, root / "virtio-win.iso")


def _overlay(raw: Path, dest: Path) -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(dest)])
    return dest


def _read_back(f: Fixed, work: Path) -> None:
    """A read-only appliance copies the hives and the files p2v wrote to the host."""
    with open_guest([f.image], readonly=True, fmt="qcow2") as s:
        s.mount_ro("/dev/sda1", "/")
        local = work / f"{f.key}-hives"
        local.mkdir()
        f.system, f.software = local / "SYSTEM", local / "SOFTWARE"
        s.download("/Windows/System32/config/SYSTEM", f.system)
        s.download("/Windows/System32/config/SOFTWARE", f.software)
        if s.is_file("/Windows/System32/config/DRIVERS"):
            f.drivers = local / "DRIVERS"
            s.download("/Windows/System32/config/DRIVERS", f.drivers)
        for top in (STAGE, "Windows/System32/drivers", "Windows/System32/GroupPolicy",
                    "Windows/System32/DriverStore/FileRepository"):
            if not s.is_dir(f"/{top}"):
                continue
            for rel in s.find(f"/{top}"):
                rel = rel.lstrip("/")
                path = f"/{top}/{rel}"
                if s.is_file(path):
                    f.files[f"{top}/{rel}"] = s.read_file(path)


class LazyFixed(dict[str, Fixed]):
    """Each image is fixed (and read back) the first time a test asks for it: `make test`
    runs only the win2k19 rows, `make test-slow` the other two (two appliance runs each)."""

    def __init__(self, images: dict[str, Path], virtio_win: tuple[Path, Path],
                 work: Path) -> None:
        super().__init__()
        self.images, self.virtio_win, self.work = images, virtio_win, work

    def __missing__(self, key: str) -> Fixed:
        tree, iso = self.virtio_win
        raw = self.images[key]
        cached = sha256(raw)
        image = _overlay(raw, self.work / f"{key}.qcow2")
        options = FixOptions(virtio_win=iso if key in FROM_ISO else tree)
        first = fix_images([image], options)
        assert isinstance(first.report, WindowsReport)
        fixed = Fixed(key, image, options, first, sha256(image))
        _read_back(fixed, self.work)
        assert sha256(raw) == cached, "the cached image was written"
        self[key] = fixed
        return fixed


@pytest.fixture(scope="session")
def fixed(windows_images: dict[str, Path], virtio_win: tuple[Path, Path],
          tmp_path_factory: pytest.TempPathFactory) -> LazyFixed:
    return LazyFixed(windows_images, virtio_win, tmp_path_factory.mktemp("windows-fix"))


def _drivers(key: str) -> list[str]:
    version = next(w for w in CATALOG.windows if w.dir == EXPECT[key])
    return [d.name for d in CATALOG.drivers_for(version, "amd64")]


@pytest.mark.parametrize("key", KEYS)
def test_the_catalog_picks_the_drivers(fixed: LazyFixed, key: str) -> None:
    f = fixed[key]
    assert f.first.report.catalog_dir == EXPECT[key]
    assert f.first.report.product == SPECS[key].product
    assert f.first.report.arch == "amd64" and f.first.report.control_set == "ControlSet001"
    assert f.first.plan.drivers == ["viostor", "vioscsi"]
    staged = ["netkvm", "balloon", "viorng", "vioser", "qxl" if key == "win7" else "qxldod"]
    assert f.first.plan.staged == staged
    assert sorted(f.first.plan.drivers + staged) == sorted(_drivers(key))
    assert f.first.caps.disk_bus == "virtio" and f.first.caps.nic_model == "virtio"
    assert f.first.applied and not f.first.plan.warnings


@pytest.mark.parametrize("key", KEYS)
def test_boot_critical_services(fixed: LazyFixed, key: str) -> None:
    with open_hive(fixed[key].system) as h:
        for name, group in (("viostor", "SCSI miniport"), ("vioscsi", "SCSI miniport")):
            svc = f"ControlSet001\\Services\\{name}"
            assert h.values(svc) == {
                "Type": RegValue.dword(1), "Start": RegValue.dword(0),
                "ErrorControl": RegValue.dword(1), "Group": RegValue.sz(group),
                "ImagePath": RegValue.expand_sz(f"system32\\drivers\\{name}.sys"),
                "DisplayName": RegValue.sz(name)}
            assert h.values(svc + "\\Parameters\\PnpInterface") == {"5": RegValue.dword(1)}
        # The staged drivers get no service offline: pnputil installs them at first boot.
        for name in ("netkvm", "BALLOON", "VirtRng", "VirtioSerial"):
            assert h.node(f"ControlSet001\\Services\\{name}") is None


@pytest.mark.parametrize("key", KEYS)
def test_device_database_entries(fixed: LazyFixed, key: str) -> None:
    f = fixed[key]
    with open_hive(f.system) as h:
        cdd = "ControlSet001\\Control\\CriticalDeviceDatabase"
        for name in ("viostor", "vioscsi"):
            driver = CATALOG.driver(name)
            if key == "win7":
                for pci in driver.pci:
                    assert h.values(f"{cdd}\\{cdd_key(pci)}") == {
                        "Service": RegValue.sz(driver.service),
                        "ClassGUID": RegValue.sz("{4D36E97B-E325-11CE-BFC1-08002BE10318}")}
                assert h.node("DriverDatabase") is None
                continue
            assert h.node(f"{cdd}\\{cdd_key(driver.pci[0])}") is None
            inf = f"{name}.inf"
            files = h.values(f"DriverDatabase\\DriverInfFiles\\{inf}")
            package = str(files["Active"].data)
            assert package.startswith(f"{inf}_amd64_") and len(package) == len(inf) + 23
            assert files[""] == RegValue.multi_sz(package)
            pkg = f"DriverDatabase\\DriverPackages\\{package}"
            assert h.get(pkg, "") == RegValue.sz(inf)
            assert h.values(f"{pkg}\\Configurations\\{CONFIGURATION}") == {
                "Service": RegValue.sz(name), "ConfigFlags": RegValue.dword(0)}
            for pci in driver.pci:
                assert h.values(f"{pkg}\\Descriptors\\{pci}") == {
                    "Configuration": RegValue.sz(CONFIGURATION)}
                assert h.values(f"DriverDatabase\\DeviceIds\\{pci}") == {
                    inf: RegValue.binary(b"\x01\xff\x00\x00")}
            repo = f"Windows/System32/DriverStore/FileRepository/{package}"
            assert sorted(p for p in f.files if p.startswith(repo + "/")) == \
                sorted(f"{repo}/{n}" for n in driver.files)


@pytest.mark.parametrize("key", KEYS)
def test_device_path_and_group_policy_registration(fixed: LazyFixed, key: str) -> None:
    with open_hive(fixed[key].software) as h:
        assert h.get(r"Microsoft\Windows\CurrentVersion", "DevicePath") == RegValue.expand_sz(
            "%SystemRoot%\\inf;%SystemRoot%\\Drivers\\p2v-virtio")
        for base in firstboot.GP_KEYS:
            assert h.children(base) == ["0"]
            assert h.values(base + "\\0") == {
                "GPO-ID": RegValue.sz("LocalGPO"), "SOM-ID": RegValue.sz("Local"),
                "FileSysPath": RegValue.sz("C:\\Windows\\System32\\GroupPolicy\\Machine"),
                "DisplayName": RegValue.sz("Local Group Policy"),
                "GPOName": RegValue.sz("Local Group Policy"),
                "PSScriptOrder": RegValue.dword(1)}
            assert h.children(base + "\\0") == ["0"]
            assert h.values(base + "\\0\\0") == {
                "Script": RegValue.sz("p2v-firstboot.cmd"), "Parameters": RegValue.sz(""),
                "IsPowershell": RegValue.dword(0), "ExecTime": RegValue.qword(0)}


@pytest.mark.parametrize("key", KEYS)
def test_every_planned_value_is_in_the_hives(fixed: LazyFixed, key: str) -> None:
    f = fixed[key]
    assert len(f.first.plan.registry) > 20
    files = {"SYSTEM": f.system, "SOFTWARE": f.software, "DRIVERS": f.drivers}
    for edit in f.first.plan.registry:
        path = files[edit.hive]
        assert path is not None
        with open_hive(path) as h:
            assert h.get(edit.key, edit.name) == edit.value, (edit.key, edit.name)


@pytest.mark.parametrize("key", ["win2k19", pytest.param("win2k25", marks=pytest.mark.slow)])
def test_the_drivers_hive_has_the_same_driver_database(fixed: LazyFixed,
                                                       key: str) -> None:
    f = fixed[key]
    assert f.drivers is not None
    with open_hive(f.system) as system, open_hive(f.drivers) as drivers:
        for pci in CATALOG.driver("viostor").pci:
            ids = f"DriverDatabase\\DeviceIds\\{pci}"
            assert drivers.values(ids) == system.values(ids) == {
                "viostor.inf": RegValue.binary(b"\x01\xff\x00\x00")}
        active = system.get("DriverDatabase\\DriverInfFiles\\viostor.inf", "Active")
        assert active is not None
        assert drivers.get("DriverDatabase\\DriverInfFiles\\viostor.inf", "Active") == active
        # Only the driver database goes there: no services, no Group Policy.
        assert drivers.children("") == ["DriverDatabase"]


@pytest.mark.parametrize("key", KEYS)
def test_files_copied(fixed: LazyFixed, key: str, virtio_win: tuple[Path, Path]) -> None:
    f = fixed[key]
    tree = virtio_win[0]
    version = next(w for w in CATALOG.windows if w.dir == EXPECT[key])
    staged = {}
    for name in _drivers(key):
        driver = CATALOG.driver(name)
        for file in driver.files:
            staged[f"{STAGE}/{file}"] = (tree / driver.tree_dir(version, "amd64") / file)
    assert sorted(p for p in f.files if p.startswith(STAGE + "/")) == sorted(staged)
    for path, source in staged.items():
        assert f.files[path] == source.read_bytes(), path
    for name in ("viostor", "vioscsi"):
        src = tree / CATALOG.driver(name).tree_dir(version, "amd64") / f"{name}.sys"
        assert f.files[f"Windows/System32/drivers/{name}.sys"] == src.read_bytes()
    assert "Windows/System32/drivers/netkvm.sys" not in f.files
    gp = "Windows/System32/GroupPolicy"
    ini = f.files[f"{gp}/Machine/Scripts/scripts.ini"]
    assert ini.startswith(b"\xff\xfe")
    assert ini[2:].decode("utf-16-le") == "[Startup]\r\n0CmdLine=p2v-firstboot.cmd\r\n" \
        "0Parameters=\r\n"
    gpt = f.files[f"{gp}/gpt.ini"].decode()
    assert f"gPCMachineExtensionNames={firstboot.SCRIPTS_CSE}" in gpt and "Version=1" in gpt


@pytest.mark.parametrize("key", KEYS)
def test_the_first_boot_script_on_the_image_gives_up_after_the_bound(
        fixed: LazyFixed, key: str) -> None:
    script = fixed[key].files[f"Windows/System32/GroupPolicy/Machine/Scripts/Startup/"
                              f"{firstboot.SCRIPT_NAME}"].decode()
    calls: list[list[str]] = []

    def failing_pnputil(argv: list[str]) -> tuple[int, str]:
        calls.append(argv)
        return 5, "Access is denied."

    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp, "Drivers", "p2v-virtio")
        stage.mkdir(parents=True)
        for _boot in range(6):
            CmdSubset(Path(tmp), {"pnputil.exe": failing_pnputil}).run(script)
        assert len(calls) == firstboot.MAX_TRIES
        assert (stage / "firstboot.done").read_text().strip() == "gave up"
        assert "giving up after 3 attempts" in (stage / "firstboot.log").read_text()
    # Windows 7's pnputil has only the old syntax.
    assert calls[0][:2] == (["-i", "-a"] if key == "win7" else ["/add-driver",
                                                                 calls[0][1]])


# Second runs (through the CLI's text output) are slow: an appliance launch each.
@pytest.mark.slow
@pytest.mark.parametrize("key", list(EXPECT))
def test_a_second_run_changes_nothing(fixed: LazyFixed, key: str) -> None:
    f = fixed[key]
    assert f.first.caps_path is not None
    caps_text = f.first.caps_path.read_text()
    assert_valid(json.loads(caps_text), "caps")
    source = f.options.virtio_win
    assert source is not None
    proc = _cli(str(f.image), "--virtio-win", str(source))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{SPECS[key].product}: Windows NT ")
    assert "  drivers: boot-critical viostor, vioscsi; staged for first boot netkvm" in lines[1]
    assert "nothing to do: the guest needs no change" in lines
    assert lines[-1] == f"guest caps: disks virtio, NIC virtio, q35, bios -> {f.first.caps_path}"
    assert sha256(f.image) == f.hash_first          # not a byte written: no duplicates
    assert f.first.caps_path.read_text() == caps_text


@pytest.mark.slow
def test_dry_run_reports_and_writes_nothing(tmp_path: Path, windows_images: dict[str, Path],
                                            virtio_win: tuple[Path, Path]) -> None:
    image = _overlay(windows_images["win2k25"], tmp_path / "w25.qcow2")
    before = sha256(image)
    proc = _cli(str(image), "--virtio-win", str(virtio_win[1]), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["dry_run"] and not data["applied"] and data["caps_path"] is None
    assert data["drivers"] == {"boot": ["viostor", "vioscsi"],
                               "staged": ["netkvm", "balloon", "viorng", "vioser", "qxldod"]}
    targets = {c["target"] for c in data["changes"]}
    assert "Windows\\System32\\drivers\\viostor.sys" in targets
    assert "SYSTEM: DriverDatabase entries for viostor" in targets
    assert "DRIVERS: DriverDatabase entries for viostor" in targets
    assert data["caps"]["disk_bus"] == "virtio" and data["caps"]["os"]["catalog"] == "2k25"
    assert_valid(data["caps"], "caps")
    assert sha256(image) == before
    assert not (tmp_path / "w25.qcow2.caps.json").exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2v.cli", "fix", *args],
                          capture_output=True, text=True, timeout=600)


def test_a_bad_virtio_win_path_is_refused_before_anything(tmp_path: Path,
                                                          windows_images: dict[str, Path]) -> None:
    image = _overlay(windows_images["win7"], tmp_path / "w7.qcow2")
    before = sha256(image)
    proc = _cli(str(image), "--virtio-win", str(tmp_path / "nope"))
    assert proc.returncode == 7
    assert proc.stderr.strip().splitlines()[-1] == (
        f"p2v: error: --virtio-win {tmp_path / 'nope'}: no such file or directory; give the "
        "virtio-win ISO or a directory holding its contents")
    (tmp_path / "junk.iso").write_bytes(b"x" * 70000)
    proc = _cli(str(image), "--virtio-win", str(tmp_path / "junk.iso"))
    assert proc.returncode == 7 and "not an ISO 9660 image" in proc.stderr
    assert sha256(image) == before


def test_a_tree_without_a_needed_driver_names_it_and_writes_nothing(
        tmp_path: Path, windows_images: dict[str, Path]) -> None:
    tree = make_virtio_win_tree(tmp_path / "tree", windows_dirs=("2k25",), skip=("netkvm",))
    image = _overlay(windows_images["win2k25"], tmp_path / "w25.qcow2")
    before = sha256(image)
    proc = _cli(str(image), "--virtio-win", str(tree))
    assert proc.returncode == 7, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"p2v: error: the virtio-win tree {tree} has no netkvm driver for Windows "
                    "Server 2025 amd64 (looked for NetKVM/2k25/amd64/); use a virtio-win "
                    "release that has it, nothing was written")
    assert sha256(image) == before
    assert not (tmp_path / "w25.qcow2.caps.json").exists()
