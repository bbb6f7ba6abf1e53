"""`p2v convert --from-image` and manifest `image = [...]`: the arguments, the firmware read
from a partition table, and what the job decides without a live inventory (pure logic, plus
qemu-img create for real little images)."""

from __future__ import annotations

import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
from schema_check import assert_valid

from p2v.batch.manifest import load_manifest
from p2v.cli import build_parser, main
from p2v.cli.convert import job_spec
from p2v.errors import ExitCode, ManifestInvalid
from p2v.firmware import BIOS_BOOT_GUID, ESP_GUID, disk_firmware
from p2v.image_import import DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, image_inventory, image_plan
from p2v.job import IMAGE_STAGES, JobSpec, image_source, stages_for
from p2v.jobplan import nic_mappings
from p2v.jobs import convert_argv

LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


# ------------------------------------------------------------------ firmware from the table
def _gpt(types: list[str], sector: int = 512) -> bytes:
    """A disk's first MiB: a protective MBR and a GPT with one entry per type GUID."""
    head = bytearray(1 << 20)
    head[446 + 4] = 0xEE
    head[510:512] = b"\x55\xaa"
    header = bytearray(92)
    header[:8] = b"EFI PART"
    header[72:80] = (2).to_bytes(8, "little")          # entries from LBA 2
    header[80:84] = (128).to_bytes(4, "little")
    header[84:88] = (128).to_bytes(4, "little")
    head[sector:sector + 92] = header
    for i, kind in enumerate(types):
        at = 2 * sector + i * 128
        head[at:at + 16] = uuid.UUID(kind).bytes_le
    return bytes(head)


def _mbr() -> bytes:
    head = bytearray(1 << 20)
    head[446:446 + 5] = bytes([0x80, 0, 2, 0, 0x83])
    head[510:512] = b"\x55\xaa"
    return bytes(head)


@pytest.mark.parametrize("head, firmware", [
    (_gpt([ESP_GUID, LINUX_DATA]), "uefi"),
    (_gpt([LINUX_DATA, ESP_GUID], sector=4096), "uefi"),       # 4Kn disk
    (_gpt([BIOS_BOOT_GUID, ESP_GUID, LINUX_DATA]), "bios"),    # hybrid: boots BIOS too
    (_gpt([BIOS_BOOT_GUID, LINUX_DATA]), "bios"),
    (_gpt([LINUX_DATA]), "bios"),
    (_mbr(), "bios"),
    (bytes(1 << 20), "bios"),
    (b"", "bios"),
])
def test_the_firmware_an_image_boots_with_is_read_from_its_table(head: bytes,
                                                                 firmware: str) -> None:
    assert disk_firmware(head) == firmware


def test_the_fixtures_tables_give_their_firmware(tmp_path: Path) -> None:
    """sgdisk-made tables as the fixtures have them: a UEFI disk with an ESP, a BIOS one."""
    import shutil

    if shutil.which("sgdisk") is None:
        pytest.skip("sgdisk not installed")
    for name, codes, want in (("uefi", ["1:0:+64M", "-t", "1:ef00", "-n", "2:0:0"], "uefi"),
                              ("bios", ["1:0:+1M", "-t", "1:ef02", "-n", "2:0:0"], "bios")):
        disk = tmp_path / f"{name}.raw"
        subprocess.run(["truncate", "-s", "256M", str(disk)], check=True)
        subprocess.run(["sgdisk", "-n", *codes, str(disk)], check=True, capture_output=True)
        assert disk_firmware(disk.read_bytes()[:1 << 20]) == want


# ------------------------------------------------------------------ the command line
def _convert(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["convert", *argv])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return rc, err


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    path = tmp_path / "lab.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@pytest.mark.parametrize("argv, message", [
    ([], "give SOURCE (the live server) or --from-image IMG"),
    (["web01", "--from-image", "{img}"], "give SOURCE (web01) or --from-image, not both"),
    (["web01", "--in-place"], "--in-place needs --from-image"),
    (["--from-image", "{img}", "--disk", "/dev/sda"], "--disk is for a live SOURCE"),
    (["--from-image", "{img}", "--cutover"], "--cutover is for a live SOURCE"),
    (["--from-image", "{img}", "--new-macs"], "always gets fresh MACs"),
    (["--from-image", "{img}", "--network", "eth0=lan"],
     "--network 'eth0=lan': from an image each network given adds one NIC"),
    (["--from-image", "{img}", "{img}"], "it is given twice"),
    (["--from-image", "{dir}/nope.vmdk"], "image not found: {dir}/nope.vmdk"),
    (["--from-image", "{dir}/notes.txt"], "{dir}/notes.txt is not a disk image"),
])
def test_bad_image_arguments_are_one_line_before_anything_runs(
        argv: list[str], message: str, qcow2: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a disk\n")
    fill = {"img": str(qcow2), "dir": str(tmp_path)}
    rc, err = _convert([a.format(**fill) for a in argv]
                       + ["--name", "lab01", "--output-dir", str(tmp_path / "jobs")], capsys)
    assert rc == ExitCode.USAGE
    assert message.format(**fill) in err, err
    assert not (tmp_path / "jobs").exists()


def test_in_place_takes_only_raw_or_qcow2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    vmdk = tmp_path / "lab.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "16M"], check=True)
    rc, err = _convert(["--from-image", str(vmdk), "--in-place", "--name", "lab01"], capsys)
    assert rc == ExitCode.USAGE
    assert err == (f"p2v: error: --from-image {vmdk}: --in-place uses raw or qcow2 images where "
                   "they are; a VMDK image is converted into the work dir: drop --in-place; "
                   "nothing was copied")


def test_an_image_job_is_its_images_and_prints_back_the_same(qcow2: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    args = parser.parse_args(["convert", "--from-image", "lab.qcow2", "data.raw", "--in-place",
                              "--name", "lab01", "--memory", "1024", "--network", "lan"])
    spec = job_spec(args, "qemu:///system")
    assert spec.images == (qcow2, tmp_path / "data.raw")        # absolute
    assert spec.source == image_source(spec.images) == f"image:{qcow2},{tmp_path}/data.raw"
    assert spec.in_place and stages_for(spec) == IMAGE_STAGES
    argv = convert_argv(spec)
    assert argv[:4] == ["p2v", "convert", "--from-image", str(qcow2)]
    again = parser.parse_args(shlex.split(shlex.join(argv))[1:])
    assert job_spec(again, again.connect) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec           # spec.json round trip


# ------------------------------------------------------------------ what the job decides
def _facts(tmp_path: Path, firmware: str = "bios") -> list:  # type: ignore[type-arg]
    from p2v.image_import import ImageFacts

    return [ImageFacts(tmp_path / "boot.vmdk", "vmdk", 8 << 30, 3 << 30, firmware),
            ImageFacts(tmp_path / "data.qcow2", "qcow2", 20 << 30, 1 << 30, "bios")]


def test_without_flags_the_guest_gets_the_defaults_and_the_report_says_so(
        tmp_path: Path) -> None:
    images = tuple(f.path for f in _facts(tmp_path))
    spec = JobSpec(source=image_source(images), name="lab01", output_dir=tmp_path,
                   images=images)
    inv = image_inventory(spec, _facts(tmp_path), "bios")
    assert_valid(inv.to_dict(), "inventory")       # what inventory.json holds, as inspect's
    assert (inv.memory_mib, inv.cpu.logical if inv.cpu else None) == (DEFAULT_MEMORY_MIB,
                                                                      DEFAULT_VCPUS)
    assert [(d.name, d.boot) for d in inv.disks] == [("vda", True), ("vdb", False)]
    assert inv.firmware == "bios"
    plan = image_plan(spec, _facts(tmp_path), "bios")
    assert [(d.device, d.name) for d in plan.disks] == [(str(tmp_path / "boot.vmdk"), "vda"),
                                                        (str(tmp_path / "data.qcow2"), "vdb")]
    assert not plan.pin_nics
    assert [n for n, _mac in plan.pins] == ["net1"]             # one NIC, default network
    assert nic_mappings(spec, inv) == ()
    said = " ".join(plan.not_carried_over)
    assert f"{DEFAULT_MEMORY_MIB} MiB (the default for an image" in said
    assert f"{DEFAULT_VCPUS} vCPUs (the default for an image" in said
    assert plan.disk_choice.startswith("importing boot.vmdk (8.0 GiB VMDK, boot disk), "
                                       "data.qcow2 (20.0 GiB qcow2)")


def test_one_nic_per_network_and_bridge_with_the_sizes_asked_for(tmp_path: Path) -> None:
    images = tuple(f.path for f in _facts(tmp_path))
    spec = JobSpec(source=image_source(images), name="lab01", output_dir=tmp_path,
                   images=images, memory_mib=4096, vcpus=3, networks=("lan", "dmz"),
                   bridges=("br0",))
    inv = image_inventory(spec, _facts(tmp_path, "uefi"), "uefi")
    assert (inv.memory_mib, inv.cpu.logical if inv.cpu else None) == (4096, 3)
    assert inv.firmware == "uefi"
    plan = image_plan(spec, _facts(tmp_path, "uefi"), "uefi")
    assert [n for n, _mac in plan.pins] == ["net1", "net2", "net3"]
    assert len({mac for _n, mac in plan.pins}) == 3
    assert [(m.kind, m.target, m.src) for m in nic_mappings(spec, inv)] == [
        ("network", "lan", "net1"), ("network", "dmz", "net2"), ("bridge", "br0", "net3")]
    assert "4096 MiB (--memory)" in " ".join(plan.not_carried_over)


# ------------------------------------------------------------------ the manifest
def test_manifest_images_are_taken_from_the_manifests_directory(qcow2: Path,
                                                                tmp_path: Path) -> None:
    (tmp_path / "disks").mkdir()
    data = tmp_path / "disks" / "data.raw"
    data.write_bytes(bytes(1 << 20))
    manifest = tmp_path / "fleet.toml"
    manifest.write_text('[[server]]\nname = "lab01"\nimage = ["lab.qcow2", "disks/data.raw"]\n'
                        'networks = ["lan"]\nin_place = true\n'
                        '[[server]]\nname = "web01"\nsource = "ssh://root@web01"\n')
    import tomllib

    assert_valid(tomllib.loads(manifest.read_text()), "manifest")
    specs = {s.name: s for s in load_manifest(manifest).specs}
    lab = specs["lab01"]
    assert lab.images == (qcow2, data) and lab.in_place
    assert lab.source == image_source(lab.images) and stages_for(lab) == IMAGE_STAGES
    assert specs["web01"].images == ()


def test_manifest_image_entries_are_checked(tmp_path: Path) -> None:
    for name in ("a.qcow2", "b.qcow2"):
        (tmp_path / name).write_bytes(b"")
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(
        '[[server]]\nname = "both"\nsource = "ssh://root@x"\nimage = ["a.qcow2"]\n'
        '[[server]]\nname = "missing"\nimage = ["nope.qcow2"]\n'
        '[[server]]\nname = "live-keys"\nimage = ["b.qcow2"]\ndisks = ["/dev/sda"]\n'
        'cutover = true\nnetworks = ["eth0=lan"]\n'
        '[[server]]\nname = "again"\nimage = ["b.qcow2"]\n'
        '[[server]]\nname = "empty"\nimage = []\n'
        '[[server]]\nname = "in-place-live"\nsource = "ssh://root@y"\nin_place = true\n')
    with pytest.raises(ManifestInvalid) as info:
        load_manifest(manifest)
    problems = "\n".join(info.value.problems)
    for fragment in (
            'server[1] "both": image: and source are both set: give one',
            f'server[2] "missing": image: no such file: {tmp_path / "nope.qcow2"}',
            'server[3] "live-keys": disks: is for a live source, not image',
            'server[3] "live-keys": cutover: is for a live source, not image',
            'server[3] "live-keys": networks: \'eth0=lan\': from an image each network given '
            'adds one NIC',
            f'server[4] "again": image: {tmp_path / "b.qcow2"} is already a disk of '
            'server[3] "live-keys"',
            'server[5] "empty": image: is empty: list the guest\'s disk images',
            'server[6] "in-place-live": in_place: only with image'):
        assert fragment in problems, (fragment, problems)


def test_an_encrypted_image_is_refused_naming_it(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "secret.qcow2"
    # qcow2's own AES encryption: no LUKS key-stretching benchmark, which fails under load
    # ("Unable to get accurate CPU usage").
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "--object",
                    "secret,id=s0,data=lab", "-o", "encrypt.format=aes,encrypt.key-secret=s0",
                    str(image), "16M"], check=True)
    rc, err = _convert(["--from-image", str(image), "--name", "lab01"], capsys)
    assert rc == ExitCode.USAGE
    assert err.startswith(f"p2v: error: --from-image {image}: it is encrypted"), err


def test_guest_disk_names_go_on_past_z() -> None:
    from p2v.image_import import guest_disk

    assert [guest_disk(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "vda", "vdb", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"]
