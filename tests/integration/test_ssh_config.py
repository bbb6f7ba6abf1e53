"""ssh_config as OpenSSH reads it, against a real sshd on loopback: an alias from an
Included file, a ProxyCommand, a Match block, the agent options, and refused options.

The Include and Match cases run through both readers: `ssh -G`, and the fallback used
where OpenSSH's client is missing (paramiko's parser, p2v's Include expansion).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loop_sources import SshServer

from p2v import cli
from p2v.demo.live import SourceEndpoint, free_port, generate_key
from p2v.errors import ExitCode, SshAuthFailed, SshUnreachable
from p2v.source import sshconfig
from p2v.source.ssh import SshOptions, SshSource


@pytest.fixture(scope="module")
def sshd() -> Iterator[SourceEndpoint]:
    with SshServer([]) as endpoint:
        yield endpoint


@pytest.fixture(params=["ssh", "paramiko"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "paramiko":
        monkeypatch.setattr(sshconfig, "ssh_binary", lambda: None)
    return str(request.param)


def login_lines(ep: SourceEndpoint, *, port: int | None = None,
                known_hosts: Path | None = None) -> str:
    """The block lines that log in to the test sshd: address, user, key, known_hosts."""
    return (f"  HostName {ep.host}\n  Port {port or ep.port}\n  User {ep.user}\n"
            f"  IdentityFile {ep.key}\n  UserKnownHostsFile {known_hosts or ep.known_hosts}\n")


def no_agent(config: Path) -> SshOptions:
    return SshOptions(ssh_config=config, use_agent=False, connect_timeout=10.0)


def test_an_alias_from_an_included_glob_logs_in(reader: str, sshd: SourceEndpoint,
                                                tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/10-src.conf").write_text(
        f"Host src\n{login_lines(sshd)}  IdentitiesOnly yes\n")
    (tmp_path / "conf.d/20-decoy.conf").write_text("Host src\n  Port 1\n")
    config = tmp_path / "config"
    config.write_text(f"Include {tmp_path}/conf.d/*.conf\n")
    with SshSource.open("src", no_agent(config)) as source:
        assert source.target.port == sshd.port
        assert source.run(["echo", "via include"]).text == "via include\n"


def test_a_match_host_block_logs_in(reader: str, sshd: SourceEndpoint, tmp_path: Path) -> None:
    config = tmp_path / "config"
    # The port, user and key come only from the Match block on the resolved address.
    config.write_text(f"Host m\n  HostName {sshd.host}\n"
                      f"Match host {sshd.host} originalhost m\n{login_lines(sshd)}"
                      "Host *\n  Port 1\n")
    with SshSource.open("m", no_agent(config)) as source:
        assert source.run(["echo", "matched"]).text == "matched\n"


def proxy_script(tmp_path: Path, real_port: int) -> tuple[Path, Path]:
    """A ProxyCommand that records its arguments and pid, then relays to the real port
    (whatever %p says: the config's Port is one nothing listens on)."""
    marker = tmp_path / "proxy-used"
    script = tmp_path / "proxy.sh"
    script.write_text("#!/bin/sh\n"
                      f'echo "$$ $*" > {marker}\n'
                      f"exec nc 127.0.0.1 {real_port}\n")
    script.chmod(0o755)
    return script, marker


def test_proxycommand_is_the_way_in_and_dies_on_close(reader: str, sshd: SourceEndpoint,
                                                      tmp_path: Path) -> None:
    script, marker = proxy_script(tmp_path, sshd.port)
    dead_port = free_port()
    known = tmp_path / "known_hosts"
    # The host key as known_hosts names the configured (unreachable) port.
    key_line = sshd.known_hosts.read_text().split(" ", 1)[1]
    known.write_text(f"[{sshd.host}]:{dead_port} {key_line}")
    config = tmp_path / "config"
    config.write_text(f"Host viaproxy\n{login_lines(sshd, port=dead_port, known_hosts=known)}"
                      f"  ProxyCommand {script} %h %p %r %n\n")
    with SshSource.open("viaproxy", no_agent(config)) as source:
        assert source.run(["echo", "through the proxy"]).text == "through the proxy\n"
        pid, args = marker.read_text().split(" ", 1)
        assert args.split() == [sshd.host, str(dead_port), sshd.user, "viaproxy"]
        assert Path(f"/proc/{pid}").exists()
    assert not Path(f"/proc/{pid}").exists()


def test_a_failing_proxycommand_is_named_with_its_stderr(reader: str, sshd: SourceEndpoint,
                                                         tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host broken\n{login_lines(sshd)}"
                      "  ProxyCommand sh -c 'echo no route to %h >&2; exit 3'\n")
    with pytest.raises(SshUnreachable) as info:
        SshSource.open("broken", no_agent(config))
    message = info.value.message
    assert "exited with status 3" in message and f"no route to {sshd.host}" in message


def test_accept_new_from_the_config_records_the_key(reader: str, sshd: SourceEndpoint,
                                                    tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    config = tmp_path / "config"
    config.write_text(f"Host fresh\n{login_lines(sshd, known_hosts=known)}"
                      "  StrictHostKeyChecking accept-new\n"
                      f"Host strict\n{login_lines(sshd, known_hosts=known)}")
    with SshSource.open("fresh", no_agent(config)) as source:
        assert source.run(["true"]).returncode == 0
    assert known.read_text().startswith(f"[{sshd.host}]:{sshd.port} ssh-ed25519 ")
    with SshSource.open("strict", no_agent(config)) as source:
        assert source.run(["true"]).returncode == 0


@pytest.fixture
def agent(sshd: SourceEndpoint, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An ssh-agent holding the key the sshd accepts, in SSH_AUTH_SOCK."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(sshd.key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize(("extra", "agent_used"), [
    ("", True),
    ("  IdentitiesOnly yes\n", False),
    ("  IdentityAgent none\n", False),
])
def test_identities_only_and_identity_agent_none_keep_agent_keys_out(
        sshd: SourceEndpoint, agent: Path, tmp_path: Path, extra: str, agent_used: bool) -> None:
    """The only key that works is in the agent; the config names another one."""
    stranger = tmp_path / "stranger"
    generate_key(stranger, "stranger")
    config = tmp_path / "config"
    config.write_text(f"Host a\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
                      f"  IdentityFile {stranger}\n  UserKnownHostsFile {sshd.known_hosts}\n"
                      f"{extra}")
    options = SshOptions(ssh_config=config, use_agent=True, connect_timeout=10.0)
    if agent_used:
        with SshSource.open("a", options) as source:
            assert source.run(["true"]).returncode == 0
    else:
        with pytest.raises(SshAuthFailed):
            SshSource.open("a", options)


@pytest.mark.parametrize(("line", "option"), [
    ("Ciphers aes128-ctr", "Ciphers"),
    ("StrictHostKeyChecking no", "StrictHostKeyChecking"),
    ("LocalForward 8080 localhost:80", "LocalForward"),
])
def test_cli_refuses_an_option_it_cannot_honour(
        reader: str, sshd: SourceEndpoint, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], line: str, option: str) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host r\n{login_lines(sshd)}  {line}\n")
    assert cli.main(["inspect", "r", "--ssh-config", str(config)]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and "'r'" in err[0]


def test_every_user_known_hosts_file_is_read(reader: str, sshd: SourceEndpoint,
                                             tmp_path: Path) -> None:
    """The key is in the second UserKnownHostsFile only; the first one stays untouched."""
    first = tmp_path / "known_hosts"
    first.write_text("")
    config = tmp_path / "config"
    config.write_text(f"Host two\n  HostName {sshd.host}\n  Port {sshd.port}\n"
                      f"  User {sshd.user}\n  IdentityFile {sshd.key}\n"
                      f"  UserKnownHostsFile {first} {sshd.known_hosts}\n")
    with SshSource.open("two", no_agent(config)) as source:
        assert source.run(["true"]).returncode == 0
    assert first.read_text() == ""


def test_a_jump_host_reached_through_its_proxycommand(reader: str, sshd: SourceEndpoint,
                                                      tmp_path: Path) -> None:
    """ProxyJump hop whose own config has a ProxyCommand: the command carries the first
    hop, the hop forwards to the target (the same sshd, forwarding to itself)."""
    script, marker = proxy_script(tmp_path, sshd.port)
    config = tmp_path / "config"
    config.write_text(f"Host target\n{login_lines(sshd)}  ProxyJump hop\n"
                      f"Host hop\n{login_lines(sshd)}  ProxyCommand {script} %h %p %r %n\n")
    with SshSource.open("target", no_agent(config)) as source:
        assert [hop.name for hop in source.target.jump] == ["hop"]
        assert source.run(["echo", "two hops"]).text == "two hops\n"
        assert marker.read_text().split()[1:] == [sshd.host, str(sshd.port), sshd.user, "hop"]
