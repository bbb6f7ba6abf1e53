"""SOURCE parsing (URLs, ssh_config aliases, ProxyJump) and the sudo wrapping of commands."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import paramiko
import pytest

from p2v.errors import ExitCode, SourceSpecError
from p2v.source.ssh import fingerprint, parse_source, password_input, sudo_argv


@pytest.fixture
def no_config(tmp_path: Path) -> Path:
    path = tmp_path / "empty_config"
    path.write_text("")
    return path


@pytest.mark.parametrize(("source", "user", "host", "port"), [
    ("ssh://web01", "root", "web01", 22),
    ("ssh://admin@web01:2222", "admin", "web01", 2222),
    ("ssh://admin@10.1.2.3", "admin", "10.1.2.3", 22),
    ("ssh://[2001:db8::1]:2200", "root", "2001:db8::1", 2200),
    ("web01", "root", "web01", 22),
    ("ops@web01:2022", "ops", "web01", 2022),
    ("[fe80::1]:2022", "root", "fe80::1", 2022),
])
def test_urls_and_plain_hosts(no_config: Path, source: str, user: str, host: str,
                              port: int) -> None:
    target = parse_source(source, ssh_config=no_config)
    assert (target.user, target.host, target.port) == (user, host, port)
    assert target.jump == ()


@pytest.mark.parametrize(("source", "fragment"), [
    ("http://web01", "scheme 'http' is not ssh"),
    ("ssh://web01/dev/sda", "no path"),
    ("ssh://root:secret@web01", "passwords do not belong"),
    ("ssh://web01:99999", "out of range"),
    ("web01:ssh", "not a number"),
    ("", "empty"),
    ("-oProxyCommand=x", "not a host name"),
    ("@web01", "empty user"),
])
def test_bad_sources_are_usage_errors(no_config: Path, source: str, fragment: str) -> None:
    with pytest.raises(SourceSpecError) as info:
        parse_source(source, ssh_config=no_config)
    assert fragment in info.value.message
    assert info.value.exit_code == ExitCode.USAGE


def test_ssh_config_alias_with_jump(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host web01\n"
        "  HostName 10.0.0.5\n  Port 2200\n  User ops\n  IdentityFile ~/keys/web01\n"
        "  ProxyJump bastion\n"
        "Host bastion\n  HostName 192.0.2.1\n  User jump\n  Port 2222\n"
    )
    target = parse_source("web01", ssh_config=config)
    assert (target.name, target.host, target.port, target.user) == ("web01", "10.0.0.5", 2200,
                                                                     "ops")
    assert target.identity_files == (Path("~/keys/web01").expanduser(),)
    (hop,) = target.jump
    assert (hop.host, hop.port, hop.user) == ("192.0.2.1", 2222, "jump")
    assert target.known_hosts_pattern == "[10.0.0.5]:2200"
    # Values in SOURCE win over the config; --identity replaces IdentityFile.
    override = parse_source("ssh://root@web01:22", ssh_config=config,
                            identity=Path("/k/id"))
    assert (override.user, override.port, override.identity_files) == ("root", 22,
                                                                       (Path("/k/id"),))


def test_proxyjump_loop_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(SourceSpecError, match="loop"):
        parse_source("a", ssh_config=config)


def test_missing_explicit_config_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SourceSpecError, match="not found"):
        parse_source("web01", ssh_config=tmp_path / "nope")


def test_sudo_wrapping_keeps_password_off_the_command_line() -> None:
    argv = ["sh", "-c", "cat /dev/sda"]
    assert sudo_argv(argv, "none") == argv
    assert sudo_argv(argv, "nopasswd") == ["sudo", "-n", "--", *argv]
    wrapped = sudo_argv(argv, "password")
    # -k: always read the password from stdin, so it never reaches the command's stdin.
    assert wrapped == ["sudo", "-k", "-S", "-p", "", "--", *argv]
    assert "hunter2" not in " ".join(wrapped)
    assert password_input("hunter2") == b"hunter2\n"


def test_fingerprint_matches_openssh_format() -> None:
    blob = base64.b64decode(
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
    public = paramiko.Ed25519Key(data=blob)
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint(public) == "SHA256:" + expected
