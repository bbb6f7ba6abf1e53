"""`p2v jobs` prints the convert command that resumes a job: parsed again by the real convert
parser, it must ask for the very same job (a rerun with another spec is refused)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from p2v.cli import build_parser
from p2v.cli.convert import job_spec
from p2v.jobs import convert_argv
from p2v.libvirt_uri import default_uri


@pytest.mark.parametrize("flags", [
    [],
    ["--output-dir", "/srv/jobs", "--disk", "/dev/sda", "--disk", "/dev/sdb", "--memory",
     "2048", "--vcpus", "4", "--pool", "images", "--identity", "/root/.ssh/k",
     "--known-hosts", "/root/kh", "--ssh-config", "/dev/null", "--connect",
     "qemu+ssh://root@kvm1/system", "--verify-timeout", "900", "--network", "eth0=lan",
     "--network", "52:54:00:00:00:01:dmz", "--bridge", "eth1=br0", "--start", "--full",
     "--no-compress", "--accept-new-host-key", "--new-macs", "--serial-console",
     "--parallel", "3", "--bandwidth-limit", "50M"],
    ["--no-verify", "--cutover", "--freeze", "best-effort", "--freeze-timeout", "120",
     "--before-final", "systemctl stop 'my db'", "--after-final", "systemctl start db"],
    ["--cutover", "--parallel", "1", "--bandwidth-limit", "1234567"],
    ["--virtio-win", "/srv/iso/virtio-win-0.1.240.iso"],
])
def test_the_printed_command_asks_for_the_same_job(flags: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["convert", "ssh://root@web01:2222", "--name", "web01", *flags])
    spec = job_spec(args, args.connect or default_uri())
    argv = convert_argv(spec)
    assert argv[:2] == ["p2v", "convert"]
    printed = shlex.split(shlex.join(argv))          # as a user pastes it into a shell
    again = parser.parse_args(printed[1:])
    assert job_spec(again, again.connect or default_uri()) == spec


def test_default_values_are_left_out_but_the_libvirt_uri() -> None:
    # The URI always: the shell the command is pasted into may pick another default.
    args = build_parser().parse_args(["convert", "web01", "--name", "web01"])
    assert convert_argv(job_spec(args, "qemu:///system")) == [
        "p2v", "convert", "web01", "--name", "web01", "--connect", "qemu:///system"]


@pytest.mark.parametrize("flags", [["--verify-timeout", "1234567.5"],
                                   ["--verify-timeout", "0.1234567"],
                                   ["--bandwidth-limit", "1.3K"]])
def test_odd_numbers_print_back_exactly(flags: list[str]) -> None:
    parser = build_parser()
    spec = job_spec(parser.parse_args(["convert", "w", "--name", "w", *flags]), "test:///")
    again = parser.parse_args(convert_argv(spec)[1:])
    assert job_spec(again, "test:///") == spec


def test_a_relative_output_dir_is_printed_absolute(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["convert", "web01", "--name", "w", "--output-dir", "j"])
    argv = convert_argv(job_spec(args, default_uri()))
    assert argv[argv.index("--output-dir") + 1] == str(tmp_path / "j")
