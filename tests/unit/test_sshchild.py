"""The OpenSSH data channel's argv and settings (pure logic; the real child is tested in
tests/integration/test_data_channel.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from p2v.errors import UsageError
from p2v.source.sshchild import (
    DATA_CHANNEL_ENV,
    Hop,
    command_argv,
    data_channel_setting,
    known_hosts_text,
)

SSH = "/usr/bin/ssh"
KH = Path("/run/p2v/sshchild-x/known_hosts")


def options(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "-o"]


def test_one_hop_trusts_only_the_verified_key_and_never_prompts() -> None:
    hop = Hop("10.0.0.5", 2222, "admin", "ssh-ed25519", "AAAAkey", (Path("/keys/id"),))
    argv = command_argv(SSH, [hop], KH, "sudo -n -- cat /dev/sda")
    assert argv[:3] == [SSH, "-F", "/dev/null"]
    assert argv[-3:] == ["--", "10.0.0.5", "sudo -n -- cat /dev/sda"]
    opts = options(argv)
    for wanted in ("StrictHostKeyChecking=yes", "BatchMode=yes", f"UserKnownHostsFile={KH}",
                   "GlobalKnownHostsFile=/dev/null", "HostKeyAlgorithms=ssh-ed25519",
                   "Port=2222", "User=admin", "IdentityFile=/keys/id", "IdentityAgent=none",
                   "IdentitiesOnly=yes", "Compression=no", "UpdateHostKeys=no"):
        assert wanted in opts
    assert known_hosts_text([hop]) == "[10.0.0.5]:2222 ssh-ed25519 AAAAkey\n"


def test_an_rsa_key_is_pinned_to_its_sha2_signatures_and_the_agent_may_help() -> None:
    hop = Hop("src", 22, "root", "ssh-rsa", "AAAArsa", agent=True)
    opts = options(command_argv(SSH, [hop], KH, "true"))
    assert "HostKeyAlgorithms=rsa-sha2-512,rsa-sha2-256,ssh-rsa" in opts
    assert not any(o.startswith(("IdentityAgent", "IdentitiesOnly", "IdentityFile"))
                   for o in opts)
    assert known_hosts_text([hop]) == "src ssh-rsa AAAArsa\n"


def test_each_jump_hop_is_its_own_ssh_w_with_its_own_user_key_and_proxy() -> None:
    first = Hop("bastion", 22, "jump", "ssh-ed25519", "A", (Path("/k/jump"),),
                proxy_command="nc -X 5 -x socks:1080 bastion 22")
    second = Hop("inner", 2200, "ops", "ecdsa-sha2-nistp256", "B", (Path("/k/100%"),))
    target = Hop("db", 22, "root", "ssh-ed25519", "C", (Path("/k/root"),))
    argv = command_argv(SSH, [first, second, target], KH, "true")
    outer = [o for o in options(argv) if o.startswith("ProxyCommand=")]
    assert len(outer) == 1
    # ssh expands %-tokens once per level: undo that to read the command it runs.
    to_second = shlex.split(outer[0].removeprefix("ProxyCommand=").replace("%%", "%"))
    assert to_second[-4:] == ["-W", "db:22", "--", "inner"]
    assert "User=ops" in options(to_second) and "IdentityFile=/k/100%%" in options(to_second)
    assert "HostKeyAlgorithms=ecdsa-sha2-nistp256" in options(to_second)
    inner = [o for o in options(to_second) if o.startswith("ProxyCommand=")]
    to_first = shlex.split(inner[0].removeprefix("ProxyCommand=").replace("%%", "%"))
    assert to_first[-4:] == ["-W", "inner:2200", "--", "bastion"]
    assert "User=jump" in options(to_first)
    assert "ProxyCommand=nc -X 5 -x socks:1080 bastion 22" in options(to_first)
    assert known_hosts_text([first, second, target]).splitlines() == [
        "bastion ssh-ed25519 A", "[inner]:2200 ecdsa-sha2-nistp256 B", "db ssh-ed25519 C"]


def test_the_setting_comes_from_the_option_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_CHANNEL_ENV, raising=False)
    assert data_channel_setting(None) == "paramiko"
    monkeypatch.setenv(DATA_CHANNEL_ENV, "OpenSSH")
    assert data_channel_setting(None) == "openssh"
    assert data_channel_setting("auto") == "auto"
    monkeypatch.setenv(DATA_CHANNEL_ENV, "scp")
    with pytest.raises(UsageError, match="'scp'.*P2V_DATA_CHANNEL.*paramiko, openssh, auto"):
        data_channel_setting(None)


def test_an_ipv6_hop_is_forwarded_to_in_brackets() -> None:
    jump = Hop("bastion", 22, "jump", "ssh-ed25519", "A")
    target = Hop("fd00::5", 22, "root", "ssh-ed25519", "C")
    proxy = [o for o in options(command_argv(SSH, [jump, target], KH, "true"))
             if o.startswith("ProxyCommand=")][0]
    assert shlex.split(proxy.removeprefix("ProxyCommand="))[-4:-2] == ["-W", "[fd00::5]:22"]
