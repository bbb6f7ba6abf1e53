"""p2v's SSH client against a real sshd on loopback: host keys, errors, commands, inspect."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from loop_sources import SshServer
from schema_check import assert_valid

from p2v import cli
from p2v.demo.live import SourceEndpoint, free_port, generate_key
from p2v.errors import (
    ExitCode,
    HostKeyChanged,
    HostKeyUnknown,
    RemoteCommandFailed,
    SshAuthFailed,
    SshUnreachable,
)
from p2v.source.ssh import SshOptions, SshSource


@pytest.fixture(scope="module")
def sshd() -> Iterator[SourceEndpoint]:
    with SshServer([]) as endpoint:
        yield endpoint


def url(ep: SourceEndpoint) -> str:
    return f"ssh://{ep.user}@{ep.host}:{ep.port}"


def options(ep: SourceEndpoint, **changes: object) -> SshOptions:
    values: dict[str, object] = {"identity": ep.key, "known_hosts": ep.known_hosts,
                                 "use_agent": False, "connect_timeout": 10.0}
    values.update(changes)
    return SshOptions(**values)  # type: ignore[arg-type]


def host_fingerprint(ep: SourceEndpoint) -> str:
    """What `ssh-keygen -lf` says about the server's host key."""
    assert ep.known_hosts.parent.is_dir()
    pub = ep.known_hosts.parent / "ssh_host_ed25519_key.pub"
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def inspect_cli(ep: SourceEndpoint, *extra: str, known_hosts: Path | None = None
                ) -> list[str]:
    return ["inspect", url(ep), "--identity", str(ep.key), "--known-hosts",
            str(known_hosts or ep.known_hosts), "--ssh-config", "/dev/null", *extra]


def test_commands_are_quoted_and_output_returned(sshd: SourceEndpoint) -> None:
    with SshSource.open(url(sshd), options(sshd)) as source:
        tricky = "a b; $(touch /tmp/p2v-pwned) 'q' \"d\" `x` *"
        assert source.run(["printf", "%s", tricky]).text == tricky
        assert not Path("/tmp/p2v-pwned").exists()
        result = source.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (result.returncode, result.text, result.stderr) == (3, "out\n", "err\n")
        with pytest.raises(RemoteCommandFailed, match="exit code 3: err"):
            source.run(["sh", "-c", "echo err >&2; exit 3"])


def test_stream_reads_a_long_output_and_checks_the_exit(sshd: SourceEndpoint) -> None:
    with SshSource.open(url(sshd), options(sshd)) as source:
        with source.stream(["head", "-c", str(32 << 20), "/dev/zero"]) as out:
            total = 0
            while block := out.read(1 << 20):
                assert block.count(0) == len(block)
                total += len(block)
        assert total == 32 << 20
        with pytest.raises(RemoteCommandFailed, match="No such file"):
            with source.stream(["cat", "/nonexistent/device"]) as out:
                assert out.read() == b""


def test_unknown_host_key_is_refused_with_fingerprint_and_flag(
        sshd: SourceEndpoint, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknown) as info:
        SshSource.open(url(sshd), options(sshd, known_hosts=empty))
    message = info.value.message
    assert host_fingerprint(sshd) in message
    assert "--accept-new-host-key" in message and str(empty) in message
    assert info.value.exit_code == ExitCode.HOST_KEY == 3
    assert empty.read_text() == ""


def test_accept_new_host_key_records_it_then_strict_checking_passes(
        sshd: SourceEndpoint, tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    SshSource.open(url(sshd), options(sshd, known_hosts=known, accept_new_host_key=True)
                   ).close()
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    with SshSource.open(url(sshd), options(sshd, known_hosts=known)) as source:
        assert source.run(["true"]).returncode == 0
    # OpenSSH agrees with what was recorded.
    assert sshd.ssh(["true"], known_hosts=known).returncode == 0


def test_changed_host_key_is_refused_even_with_accept_new(
        sshd: SourceEndpoint, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other", "other").split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    before = known.read_text()
    with pytest.raises(HostKeyChanged) as info:
        SshSource.open(url(sshd), options(sshd, known_hosts=known, accept_new_host_key=True))
    assert "CHANGED" in info.value.message and host_fingerprint(sshd) in info.value.message
    assert info.value.exit_code == ExitCode.HOST_KEY
    assert known.read_text() == before


def test_unreachable_host_is_one_line(sshd: SourceEndpoint) -> None:
    port = free_port()
    with pytest.raises(SshUnreachable) as info:
        SshSource.open(f"ssh://root@127.0.0.1:{port}", options(sshd))
    assert info.value.message == f"cannot reach 127.0.0.1 port {port}: Connection refused"


def test_something_that_is_not_sshd_is_unreachable(sshd: SourceEndpoint) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(SshUnreachable,
                           match="no SSH server answered|no answer|SSH handshake did not finish"):
            SshSource.open(f"ssh://root@127.0.0.1:{port}",
                           options(sshd, connect_timeout=2.0))


def test_bad_auth_is_one_line(sshd: SourceEndpoint, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    generate_key(stranger, "stranger")
    with pytest.raises(SshAuthFailed) as info:
        SshSource.open(url(sshd), options(sshd, identity=stranger))
    assert info.value.message.startswith(f"{sshd.user}@127.0.0.1 refused the login")
    assert "\n" not in info.value.message
    with pytest.raises(SshAuthFailed, match="not found"):
        SshSource.open(url(sshd), options(sshd, identity=tmp_path / "missing"))


def test_ssh_config_alias_and_proxyjump(sshd: SourceEndpoint, tmp_path: Path) -> None:
    """An alias with HostName/Port/User/IdentityFile, reached through a jump host (the same
    sshd, forwarding to itself)."""
    config = tmp_path / "config"
    config.write_text(
        f"Host src\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key}\n  ProxyJump hop\n"
        f"Host hop\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key}\n"
    )
    opts = SshOptions(known_hosts=sshd.known_hosts, ssh_config=config, use_agent=False)
    with SshSource.open("src", opts) as source:
        assert len(source.target.jump) == 1
        assert source.run(["echo", "via jump"]).text == "via jump\n"


def test_cli_errors_are_one_line_with_exit_codes(
        sshd: SourceEndpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    assert cli.main(inspect_cli(sshd, known_hosts=empty)) == ExitCode.HOST_KEY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("p2v: error: the host key of")
    assert "--accept-new-host-key" in err[0]
    assert cli.main(["inspect", "http://x"]) == ExitCode.USAGE
    assert "bad SOURCE" in capsys.readouterr().err


def test_inspect_cli_json_on_the_loop_host(
        sshd: SourceEndpoint, capsys: pytest.CaptureFixture[str]) -> None:
    """The loop source is this host itself: the inventory must describe it."""
    assert cli.main(inspect_cli(sshd, "--json")) == 0
    data = assert_valid(json.loads(capsys.readouterr().out), "inventory")
    assert data["schema"] == "p2v.inventory/1"
    assert data["hostname"] == Path("/proc/sys/kernel/hostname").read_text().strip()
    assert data["firmware"] == ("uefi" if Path("/sys/firmware/efi").is_dir() else "bios")
    assert data["cpu"]["logical"] >= 1 and data["memory_mib"] >= 128
    assert cli.main(inspect_cli(sshd)) == 0
    assert data["hostname"] in capsys.readouterr().out
