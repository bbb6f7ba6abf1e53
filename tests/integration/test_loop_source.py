"""The loop source is real: a loopback sshd over loop devices, reached with strict host keys."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from loop_sources import LoopSource, write_random_disk

from p2v import runner
from p2v.demo.live import SourceEndpoint, generate_key, known_hosts_line
from p2v.errors import CommandFailed

SIZE = 32 << 20


@pytest.fixture
def random_disk(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "disk.raw"
    return path, write_random_disk(path, SIZE, random_bytes=SIZE // 2)


def _attached(device: str) -> bool:
    """Whether a loop device still has a backing file (sysfs shows it only while attached)."""
    return (Path("/sys/block", Path(device).name) / "loop" / "backing_file").exists()


def _alive(pid: int) -> bool:
    """Whether pid runs; a zombie counts as dead (this host's pid 1 may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_write_random_disk_hash_matches_file(random_disk: tuple[Path, str]) -> None:
    path, digest = random_disk
    assert path.stat().st_size == SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_reads_device_over_ssh_with_strict_host_key(random_disk: tuple[Path, str]) -> None:
    path, digest = random_disk
    with LoopSource.from_files([path]) as endpoint:
        assert endpoint.host == "127.0.0.1"
        assert endpoint.fixture is None
        (device,) = endpoint.disks
        assert device.startswith("/dev/loop")
        assert f"[127.0.0.1]:{endpoint.port} ssh-ed25519 " in endpoint.known_hosts.read_text()
        remote = endpoint.ssh(["sh", "-c", f"cat {device} | sha256sum"]).stdout.split()[0]
        assert remote == digest
        assert endpoint.ssh(["blockdev", "--getsize64", device]).stdout.strip() == str(SIZE)


def test_listens_on_loopback_only(random_disk: tuple[Path, str]) -> None:
    with LoopSource.from_files([random_disk[0]]) as endpoint:
        listening = runner.run(["ss", "-Htlnp", f"sport = :{endpoint.port}"]).stdout
        addresses = {line.split()[3] for line in listening.splitlines() if line.strip()}
        assert addresses == {f"127.0.0.1:{endpoint.port}"}


def test_wrong_or_missing_host_key_is_refused(
    random_disk: tuple[Path, str], tmp_path: Path
) -> None:
    impostor = generate_key(tmp_path / "impostor", "impostor")
    with LoopSource.from_files([random_disk[0]]) as endpoint:
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(known_hosts_line(endpoint.host, endpoint.port, impostor))
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        for known_hosts in (wrong, empty):
            result = endpoint.ssh(["true"], check=False, known_hosts=known_hosts)
            assert result.returncode == 255
            assert "Host key verification failed" in result.stderr
        assert endpoint.ssh(["true"], check=False).returncode == 0


def test_read_only_attach_refuses_writes(random_disk: tuple[Path, str]) -> None:
    path, digest = random_disk
    with LoopSource.from_files([path]) as endpoint:
        (device,) = endpoint.disks
        assert endpoint.ssh(["blockdev", "--getro", device]).stdout.strip() == "1"
        with pytest.raises(CommandFailed):
            endpoint.ssh(
                ["dd", "if=/dev/zero", f"of={device}", "bs=4096", "count=1", "conv=notrunc"]
            )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_writable_attach_writes_through(random_disk: tuple[Path, str]) -> None:
    path, digest = random_disk
    with LoopSource.from_files([path], writable=True) as endpoint:
        (device,) = endpoint.disks
        assert endpoint.ssh(["blockdev", "--getro", device]).stdout.strip() == "0"
        endpoint.ssh(
            ["dd", "if=/dev/zero", f"of={device}", "bs=4096", "count=1", "conv=notrunc,fsync"]
        )
    assert path.read_bytes()[:4096] == bytes(4096)
    assert hashlib.sha256(path.read_bytes()).hexdigest() != digest


def test_teardown_detaches_loop_and_kills_sshd(random_disk: tuple[Path, str]) -> None:
    source = LoopSource.from_files([random_disk[0]])
    with source as endpoint:
        (device,) = endpoint.disks
        pid = source.sshd_pid
        workdir = source.workdir
        assert pid is not None and _alive(pid)
        assert _attached(device)
        assert workdir is not None and workdir.is_dir()
    assert not _alive(pid)
    assert not _attached(device)
    assert not workdir.exists()


def test_teardown_runs_when_the_body_raises(random_disk: tuple[Path, str]) -> None:
    source = LoopSource.from_files([random_disk[0]])
    with pytest.raises(RuntimeError, match="boom"), source as endpoint:
        device = endpoint.disks[0]
        pid = source.sshd_pid
        raise RuntimeError("boom")
    assert pid is not None and not _alive(pid)
    assert not _attached(device)


def test_teardown_ends_open_sessions(random_disk: tuple[Path, str]) -> None:
    """A command still running in a session must not outlive the source (it would hold
    the loop device open): sshd runs it in a session of its own, out of sshd's group."""
    source = LoopSource.from_files([random_disk[0]])
    with source as endpoint:
        reader = runner.spawn(
            endpoint.ssh_argv(["sh", "-c", "echo $$; exec sleep 300"]), stdout=subprocess.PIPE
        )
        try:
            assert reader.stdout is not None
            remote_pid = int(reader.stdout.readline())
            assert _alive(remote_pid)
        except BaseException:
            runner.stop(reader)
            raise
    try:
        reader.wait(15)
        assert not _alive(remote_pid)
    finally:
        runner.stop(reader)


def test_several_disks_and_partitions(tmp_path: Path) -> None:
    first, second = tmp_path / "a.raw", tmp_path / "b.raw"
    write_random_disk(first, 16 << 20, random_bytes=0)
    write_random_disk(second, 8 << 20, random_bytes=1 << 20)
    runner.run(["sfdisk", "-q", first], input="label: gpt\nsize=4MiB\nsize=6MiB\n")
    source = LoopSource.from_files([first, second], partitions=True)
    with source as endpoint:
        assert len(endpoint.disks) == 2
        disk = endpoint.disks[0]
        nodes = [str(n) for n in source.partition_nodes]
        assert nodes == [f"{disk}p1", f"{disk}p2"]
        sizes = endpoint.ssh(["blockdev", "--getsize64", *nodes]).stdout.split()
        assert sizes == [str(4 << 20), str(6 << 20)]
    assert not any(Path(n).exists() for n in nodes)


def test_endpoint_is_frozen(random_disk: tuple[Path, str]) -> None:
    with LoopSource.from_files([random_disk[0]]) as endpoint:
        assert isinstance(endpoint, SourceEndpoint)
        with pytest.raises(AttributeError):
            endpoint.port = 1  # type: ignore[misc]
