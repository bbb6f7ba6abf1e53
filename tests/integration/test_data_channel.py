"""The OpenSSH data channel (p2v/source/sshchild.py) against real sshds on loopback: a copy
through it is identical; it refuses a host whose key is not the one paramiko verified; it
follows a ProxyJump hop with the hop's own identity; without `ssh` p2v falls back to
paramiko and says so; no ssh child outlives a copy or a SIGKILLed p2v."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import identical
from loop_sources import LoopSource, SshServer, write_random_disk
from tcpproxy import LinkProxy

from p2v import cli
from p2v.demo.live import SourceEndpoint, free_port, known_hosts_line
from p2v.errors import DataChannelHostKey, ExitCode, RemoteCommandFailed, SshFailed
from p2v.source.extents import format_ranges
from p2v.source.reader import choose_reader
from p2v.source.ssh import SshOptions, SshSource
from p2v.source.sshchild import DATA_CHANNEL_ENV
from p2v.transfer.copy import CopyRequest, copy_disks, read_spec
from p2v.transfer.device import probe_device
from p2v.transfer.pump import open_extents
from p2v.transfer.sync import SyncRequest, sync

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
# The private known_hosts' scratch dir (ROOT/sshchild-XXXX): on every child's argv.
CHILD_MARK = "/sshchild-"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SourceEndpoint, Path]]:
    """64 MiB, 24 MiB of it random, behind a loopback sshd."""
    path = tmp_path_factory.mktemp("chan-src") / "disk.raw"
    write_random_disk(path, 64 * MiB, 24 * MiB)
    with LoopSource.from_files([path]) as ep:
        yield ep, path


def over_openssh(ep: SourceEndpoint) -> SshSource:
    source = SshSource.open(f"ssh://{ep.user}@{ep.host}:{ep.port}",
                            SshOptions(identity=ep.key, known_hosts=ep.known_hosts,
                                       use_agent=False, ssh_config=Path("/dev/null"),
                                       data_channel="openssh"))
    assert source.data_channel() == "openssh"
    return source


def children() -> list[str]:
    """Command lines of the ssh children (and their ProxyCommands) now running."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if CHILD_MARK in text and "/proc" not in text:
            found.append(text)
    return found


def copy_argv(ep: SourceEndpoint, out: Path, *extra: str) -> list[str]:
    return ["copy", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null",
            "--output-dir", str(out), "--disk", ep.disks[0], "--name", "c", "--json", *extra]


def done_image(out: str) -> Path:
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return Path(next(e for e in events if e["event"] == "disk-done")["image"])


def test_a_copy_through_the_openssh_channel_is_identical_and_leaves_no_child(
        source: tuple[SourceEndpoint, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    ep, raw = source
    monkeypatch.setenv(DATA_CHANNEL_ENV, "openssh")
    caplog.set_level(logging.INFO, logger="p2v")
    assert cli.main(copy_argv(ep, tmp_path / "out")) == 0
    assert identical(raw, done_image(capsys.readouterr().out))
    assert "goes through an OpenSSH child" in caplog.text
    assert "paramiko carries the data" not in caplog.text
    assert children() == []


def test_the_child_refuses_a_host_key_paramiko_did_not_verify(
        source: tuple[SourceEndpoint, Path], tmp_path: Path) -> None:
    """Two sshds, two host keys, one address (a proxy): paramiko logs in to the first and
    verifies its key; then the address leads to the second, and the child must refuse."""
    ep, _ = source
    proxy = LinkProxy(ep.port)
    try:
        key = ep.known_hosts.read_text().split()
        known = tmp_path / "known_hosts"
        known.write_text(known_hosts_line(ep.host, proxy.port, f"{key[1]} {key[2]}"))
        options = SshOptions(identity=ep.key, known_hosts=known, use_agent=False,
                             ssh_config=Path("/dev/null"), data_channel="openssh")
        with SshServer([]) as other, \
                SshSource.open(f"ssh://{ep.user}@{ep.host}:{proxy.port}", options) as src:
            assert other.known_hosts.read_text().split()[2] != key[2]
            proxy.target = other.port
            with pytest.raises(DataChannelHostKey) as info, \
                    src.stream(["cat", "/proc/version"]) as out:
                out.read()
            assert info.value.exit_code == ExitCode.HOST_KEY
            assert f"[{ep.host}]:{proxy.port}" in info.value.message
            assert "\n" not in info.value.message
    finally:
        proxy.close()
    assert children() == []


def test_proxyjump_with_the_hops_own_identity(
        source: tuple[SourceEndpoint, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """The hop is another sshd with its own client key and host key: the child reaches the
    source through it (its log shows the child's logins), and the copy is identical."""
    ep, raw = source
    server = SshServer([])
    with server as hop:
        config = tmp_path / "config"
        config.write_text(
            f"Host src\n  HostName {ep.host}\n  Port {ep.port}\n  User {ep.user}\n"
            f"  IdentityFile {ep.key}\n  IdentitiesOnly yes\n  ProxyJump hop\n"
            f"Host hop\n  HostName {hop.host}\n  Port {hop.port}\n  User {hop.user}\n"
            f"  IdentityFile {hop.key}\n  IdentitiesOnly yes\n")
        known = tmp_path / "known_hosts"
        known.write_text(ep.known_hosts.read_text() + hop.known_hosts.read_text())
        monkeypatch.setenv(DATA_CHANNEL_ENV, "openssh")
        caplog.set_level(logging.INFO, logger="p2v")
        argv = ["copy", "src", "--known-hosts", str(known), "--ssh-config", str(config),
                "--output-dir", str(tmp_path / "out"), "--disk", ep.disks[0], "--name", "j",
                "--json"]
        assert cli.main(argv) == 0
        assert identical(raw, done_image(capsys.readouterr().out))
        assert "goes through an OpenSSH child" in caplog.text
        assert server.workdir is not None
        hop_log = "".join(p.read_text(errors="replace")
                          for p in server.workdir.glob("sshd-*.log"))
        # paramiko's login, the child's check and at least one stream: three logins.
        assert hop_log.count("Accepted publickey") >= 3, hop_log[-2000:]
    assert children() == []


def test_without_ssh_on_path_paramiko_carries_the_data_and_says_so(
        source: tuple[SourceEndpoint, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    ep, raw = source
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            link = bin_dir / program.name
            if program.name != "ssh" and not link.exists() and os.access(program, os.X_OK):
                link.symlink_to(program)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv(DATA_CHANNEL_ENV, "openssh")
    assert cli.main(copy_argv(ep, tmp_path / "out")) == 0
    assert identical(raw, done_image(capsys.readouterr().out))
    # A warning: on stderr unless -q (cli.main's handler; here pytest's captures it).
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "OpenSSH data channel" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "no OpenSSH client (ssh) on PATH" in warnings[0]
    assert "paramiko carries the data" in warnings[0]


def test_a_key_only_paramiko_will_use_falls_back_to_paramiko(
        source: tuple[SourceEndpoint, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """OpenSSH refuses a private key others can read; paramiko uses it: the login works,
    the child's is refused, and paramiko carries the data (one warning names why)."""
    ep, raw = source
    key = tmp_path / "open_key"
    key.write_bytes(ep.key.read_bytes())
    key.chmod(0o644)
    monkeypatch.setenv(DATA_CHANNEL_ENV, "auto")
    argv = copy_argv(ep, tmp_path / "out")
    argv[argv.index(str(ep.key))] = str(key)
    assert cli.main(argv) == 0
    assert identical(raw, done_image(capsys.readouterr().out))
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "OpenSSH data channel" in r.getMessage()]
    assert len(warnings) == 1 and "Permission denied" in warnings[0], caplog.text
    assert children() == []


def test_no_child_outlives_a_sigkilled_p2v(tmp_path: Path) -> None:
    """p2v copying through a slow link, SIGKILLed while its ssh child streams: the child
    (and so the source's reader) is gone within seconds."""
    path = tmp_path / "big.raw"
    write_random_disk(path, 256 * MiB, 128 * MiB)
    with LoopSource.from_files([path]) as ep:
        proxy = LinkProxy(ep.port, link_bps=8e6)
        try:
            key = ep.known_hosts.read_text().split()
            known = tmp_path / "known_hosts"
            known.write_text(known_hosts_line(ep.host, proxy.port, f"{key[1]} {key[2]}"))
            argv = [sys.executable, "-m", "p2v.cli", "copy",
                    f"ssh://{ep.user}@{ep.host}:{proxy.port}", "--identity", str(ep.key),
                    "--known-hosts", str(known), "--ssh-config", "/dev/null",
                    "--output-dir", str(tmp_path / "out"), "--disk", ep.disks[0]]
            env = {**os.environ, DATA_CHANNEL_ENV: "openssh"}
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 120
                while not any(" exit 0" not in c for c in children()):
                    assert proc.poll() is None, "p2v ended before its child streamed"
                    assert time.monotonic() < deadline, "no ssh child streamed"
                    time.sleep(0.05)
                time.sleep(1.0)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            deadline = time.monotonic() + 15
            while children() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert children() == []
        finally:
            proxy.close()


@pytest.mark.parametrize("reader", ["python3", "sh"])
def test_both_readers_take_15000_ranges_on_the_childs_stdin(
        source: tuple[SourceEndpoint, Path], tmp_path: Path, reader: str) -> None:
    """Over 128 KiB of ranges go down the child's stdin before its output is read."""
    ep, raw = source
    chunk = 64 << 10
    ranges = [(5, 6), (7, 8)] + [(i, i + 1) for i in range(2000, 32_000, 2)]
    assert len(format_ranges(ranges)) > 128 << 10
    request = CopyRequest(disks=ep.disks, output_dir=tmp_path, name="r", chunk_size=chunk)
    with over_openssh(ep) as src:
        info = probe_device(src, ep.disks[0])
        chosen = choose_reader(reader, python3=info.python3, gzip=info.gzip, zstd=info.zstd,
                               host=src.target.host, device=info.device)
        with open_extents(src, read_spec(src, info, request, chosen), ranges) as stream:
            got = [(e.index, e.corrupt, e.data) for e in stream.extents]
    data = raw.read_bytes()
    assert got == [(5, False, data[5 * chunk:6 * chunk]), (7, False, data[7 * chunk:8 * chunk])]


def test_a_sync_over_the_child_fetches_only_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "rw.raw"
    write_random_disk(path, 32 * MiB, 12 * MiB)
    with LoopSource.from_files([path], writable=True) as ep:
        with over_openssh(ep) as src:
            (copied,) = copy_disks(src, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                    name="s", chunk_size=MiB))
        assert identical(path, copied.image)
        fd = os.open(ep.disks[0], os.O_WRONLY)
        try:
            for index in (2, 9, 30):
                os.pwrite(fd, b"changed", index * MiB + 100)
            os.fsync(fd)
        finally:
            os.close(fd)
        with over_openssh(ep) as src:
            (result,) = sync(src, SyncRequest(output_dir=tmp_path, name="s")).disks
        assert result.changed_chunks == 3 and identical(path, result.image)
    assert children() == []


def test_a_failed_or_stalled_command_over_the_child_is_named_as_over_paramiko(
        source: tuple[SourceEndpoint, Path]) -> None:
    ep, _ = source
    with over_openssh(ep) as src:
        with pytest.raises(RemoteCommandFailed) as info, \
                src.stream(["sh", "-c", "echo no such device >&2; exit 3"]) as out:
            out.read()
        assert info.value.fields["returncode"] == 3
        assert "no such device" in info.value.message
        started = time.monotonic()
        with pytest.raises(SshFailed, match="stalled for 1 s"), \
                src.stream(["sleep", "60"], timeout=1.0) as out:
            out.read()
        assert time.monotonic() - started < 20
    assert children() == []


def test_a_proxycommand_carries_the_child_too_and_dies_with_it(
        source: tuple[SourceEndpoint, Path], tmp_path: Path) -> None:
    """ssh_config's ProxyCommand (tokens expanded by p2v) is the child's way in as well;
    every instance, paramiko's and the children's, is gone once the session closes."""
    ep, raw = source
    marker = tmp_path / "proxy-pids"
    script = tmp_path / "proxy.sh"
    script.write_text(f'#!/bin/sh\necho "$$ $*" >> {marker}\nexec nc 127.0.0.1 {ep.port}\n')
    script.chmod(0o755)
    dead_port = free_port()
    key = ep.known_hosts.read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(ep.host, dead_port, f"{key[1]} {key[2]}"))
    config = tmp_path / "config"
    config.write_text(f"Host viaproxy\n  HostName {ep.host}\n  Port {dead_port}\n"
                      f"  User {ep.user}\n  IdentityFile {ep.key}\n"
                      f"  UserKnownHostsFile {known}\n  ProxyCommand {script} %h %p\n")
    options = SshOptions(ssh_config=config, use_agent=False, data_channel="openssh")
    with SshSource.open("viaproxy", options) as src:
        assert src.data_channel() == "openssh"
        with src.stream(["cat", ep.disks[0]]) as out:
            assert out.read() == raw.read_bytes()
    runs = [line.split() for line in marker.read_text().splitlines()]
    # paramiko's login, the child's check, the stream: each through the proxy, %h %p as set.
    assert len(runs) >= 3 and all(r[1:] == [ep.host, str(dead_port)] for r in runs)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{r[0]}").exists() for r in runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [r[0] for r in runs if Path(f"/proc/{r[0]}").exists()]
    assert children() == []
