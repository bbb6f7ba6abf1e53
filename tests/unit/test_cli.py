"""CLI behaviour a user sees: help, version, one-line errors with distinct exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from p2v import __version__
from p2v.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"p2v {__version__}"


def test_help_lists_only_existing_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "verify" in out and "demo" in out
    assert "inspect" in out and "copy" in out
    assert "convert" in out and "batch" in out and "sync" in out


def test_verify_help_documents_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = capsys.readouterr().out
    for word in ("--bus", "--firmware", "--nvram", "--mac", "--timeout", "--json",
                 "no-bootloader", "root-device-missing", "kernel-panic"):
        assert word in out


def test_missing_image_is_a_one_line_usage_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["verify", str(tmp_path / "nope.qcow2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0
    assert "nope.qcow2" in err and "not found" in err


def test_bad_mac_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "p2v.cli", "verify", "x.img", "--mac", "zz"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not a MAC address: 'zz'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nvram_with_bios_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, vars_fd = tmp_path / "d.img", tmp_path / "VARS.fd"
    img.write_bytes(b"\0" * 510 + b"\x55\xaa")      # an (empty) MBR: a disk image
    vars_fd.write_bytes(b"\0" * 512)
    rc = main(["verify", str(img), "--firmware", "bios", "--nvram", str(vars_fd)])
    assert rc == 2
    assert "--nvram goes with --firmware uefi" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["verify"], "give the guest's IMAGE(s), or --domain-xml FILE"),
    (["verify", "--domain-xml", "{d}/x.xml", "{d}/a.img"], "give no IMAGE"),
    (["verify", "--domain-xml", "{d}/x.xml", "--connect", "qemu+ssh://h/system"],
     "this host's libvirt only"),
    (["verify", "--domain-xml", "{d}/missing.xml"], "missing.xml"),
    (["verify", "--domain-xml", "{d}/pool.xml"], "is a pool volume"),
])
def test_domain_xml_bad_input_is_one_line(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.xml").write_text("<domain/>")
    (tmp_path / "pool.xml").write_text(
        "<domain><devices><disk type='volume' device='disk'>"
        "<source pool='default' volume='v.qcow2'/></disk></devices></domain>")
    rc = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert message in err and err.count("\n") == 0


def test_convert_checks_virtio_win_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from p2v.errors import ExitCode

    missing = tmp_path / "virtio-win.iso"
    rc = main(["convert", "ssh://root@127.0.0.1:1", "--name", "win01", "--output-dir",
               str(tmp_path / "jobs"), "--virtio-win", str(missing)])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.DRIVERS_UNAVAILABLE
    assert err.count("\n") == 0 and f"--virtio-win {missing}: no such file" in err, err
    assert not (tmp_path / "jobs").exists()        # no work dir, no connection tried
    not_iso = tmp_path / "drivers.iso"
    not_iso.write_bytes(b"\0" * 40000)
    rc = main(["convert", "ssh://root@127.0.0.1:1", "--name", "win01", "--output-dir",
               str(tmp_path / "jobs"), "--virtio-win", str(not_iso)])
    assert rc == ExitCode.DRIVERS_UNAVAILABLE
    assert "not an ISO 9660 image" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-q", "-v", "jobs"], ["-q", "jobs", "-v"],
                                  ["jobs", "--quiet", "-vv"], ["-v", "jobs", "-q"]])
def test_quiet_and_verbose_together_are_a_one_line_usage_error(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "-q/--quiet and -v/--verbose" in line and "give one of them" in line, line


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_works_on_either_side_and_a_report_command_still_reports(
        where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["jobs", "--output-dir", str(tmp_path)]
    assert main(["-q", *argv] if where == "before" else [*argv, "-q"]) == 0
    out, err = capsys.readouterr()
    assert out == f"no convert jobs in {tmp_path}\n" and err == ""     # jobs' result is its output


def test_help_says_what_quiet_keeps(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "-q, --quiet" in out
    assert "nothing on stdout or stderr but errors" in out
    assert "inspect, jobs," in out and "--json output is printed under -q too" in out


def test_quiet_clean_prints_nothing_and_an_error_still_shows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["-q", "clean", "nosuchjob", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc != 0 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("p2v: error: ") and "nosuchjob" in line, line


@pytest.mark.parametrize("booted", [True, False])
def test_quiet_verify_prints_only_a_failed_boot_as_an_error(
        booted: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The boot itself is faked (this is the CLI's -q logic); the image is a real qcow2."""
    from p2v import runner
    from p2v.verify import boot

    image = tmp_path / "g.qcow2"
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"])
    verdict = boot.BootVerdict(
        booted=booted, reason=None if booted else "kernel-panic", elapsed_s=3.0,
        accel="tcg", bus="virtio", firmware="bios", os="linux", hostname="h", root="/dev/vda1",
        interfaces=(), evidence=("Kernel panic - not syncing: VFS",))
    monkeypatch.setattr(boot, "verify_boot", lambda images, options, progress: verdict)
    rc = main(["-q", "verify", str(image)])
    out, err = capsys.readouterr()
    assert out == ""
    if booted:
        assert (rc, err) == (0, "")
    else:
        assert rc == 4
        (line,) = err.strip().splitlines()
        assert line.startswith("p2v: error: the guest did not boot (kernel-panic); "), line
