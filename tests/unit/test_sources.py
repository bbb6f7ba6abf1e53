"""Pure helpers of the test bed sources: known_hosts entries and the client argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.demo.live import SourceEndpoint, known_hosts_line


def test_known_hosts_line_brackets_non_default_port_and_drops_comment() -> None:
    line = known_hosts_line("127.0.0.1", 2222, "ssh-ed25519 AAAAC3Nza root@p2v-bios")
    assert line == "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza\n"
    assert known_hosts_line("h", 22, "ssh-rsa AAAB") == "h ssh-rsa AAAB\n"


def test_known_hosts_line_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        known_hosts_line("h", 22, "ssh-ed25519")


def test_ssh_argv_is_strict_isolated_and_quotes_remote_args() -> None:
    endpoint = SourceEndpoint(
        host="127.0.0.1", port=2222, user="root", key=Path("/k"),
        known_hosts=Path("/kh"), disks=("/dev/sda",), fixture=None,
    )
    argv = endpoint.ssh_argv(["sh", "-c", "cat /dev/sda | sha256sum"])
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    options = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"StrictHostKeyChecking=yes", "BatchMode=yes", "UserKnownHostsFile=/kh",
            "GlobalKnownHostsFile=/dev/null"} <= options
    assert argv[-3:] == ["127.0.0.1", "--", "sh -c 'cat /dev/sda | sha256sum'"]
    assert endpoint.ssh_argv(known_hosts=Path("/other"))[-1] == "127.0.0.1"
    assert "UserKnownHostsFile=/other" in endpoint.ssh_argv(known_hosts=Path("/other"))
