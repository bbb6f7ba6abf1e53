"""sudo for real: a non-root login on the loopback sshd, with NOPASSWD sudo and with a
password, runs `p2v inspect` and `p2v copy`; the password shows up in no output, event, file,
log or process list, and a wrong one is one line, exit code 1, no hang.

The test creates a local user (its own home and key, removed afterwards) and a sudoers
drop-in per case (checked with `visudo -cf`, removed afterwards): root is needed for both.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from copy_helpers import identical
from loop_sources import LoopSource, write_random_disk
from procwatch import ProcWatch
from schema_check import assert_all_valid, assert_valid

from p2v import runner
from p2v.demo.image import FixtureImage
from p2v.demo.live import SourceEndpoint, generate_key

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: it creates a login user and a sudoers drop-in")

MiB = 1 << 20
SUDOERS_D = Path("/etc/sudoers.d")
# A p2v run never takes this long on the bios fixture; a hang fails instead of blocking CI.
RUN_TIMEOUT = 300


@dataclass(frozen=True)
class SudoUser:
    name: str
    home: Path
    key: Path
    password: str           # shell and sudo metacharacters: it must never be parsed
    token: str              # the password's random core, searched for on its own


@pytest.fixture(scope="module")
def sudo_user() -> Iterator[SudoUser]:
    """A throwaway login user with a key and a password; removed with its home afterwards."""
    if shutil.which("sudo") is None or shutil.which("visudo") is None:
        pytest.fail("sudo is not installed: run scripts/install-system-deps (make setup)")
    name = f"p2vs{secrets.token_hex(3)}"
    token = secrets.token_hex(8)
    password = f"pw {token} ;$(x)'\"`*"
    # Its own directory: the pytest tmp dirs are root's 0700, which sshd (reading the
    # user's authorized_keys as the user) cannot enter.
    home = Path(tempfile.mkdtemp(prefix=f"p2v-{name}-"))
    try:
        runner.run(["useradd", "--home-dir", home, "--no-create-home", "--shell", "/bin/sh",
                    "--user-group", name])
        try:
            # chpasswd reads "user:password" lines on stdin: the password is on no argv.
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700)
            key = Path(tempfile.mkdtemp(prefix="p2v-sudo-key-")) / "id_ed25519"
            (ssh_dir / "authorized_keys").write_text(generate_key(key, name) + "\n")
            runner.run(["chown", "-R", f"{name}:{name}", home])
            home.chmod(0o755)
            yield SudoUser(name, home, key, password, token)
            shutil.rmtree(key.parent, ignore_errors=True)
        finally:
            runner.run(["userdel", "--force", name], check=False)
            # sudo's per-user state: the "lecture" mark and the credential cache.
            for leftover in (Path("/var/lib/sudo/lectured", name), Path("/run/sudo/ts", name)):
                leftover.unlink(missing_ok=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 MiB, 16 MiB of it random: a second source disk that copies in a second or two."""
    path = tmp_path_factory.mktemp("sudo-src") / "small.raw"
    write_random_disk(path, 64 * MiB, 16 * MiB)
    return path


@pytest.fixture(scope="module")
def user_source(bios_image: FixtureImage, sudo_user: SudoUser, small_disk: Path
                ) -> Iterator[tuple[SourceEndpoint, Path]]:
    """The bios fixture's disk and the small disk (read-only loop devices, in that order)
    behind a loopback sshd that lets the sudo user log in; yields its endpoint for that user
    and the sshd's directory (its log)."""
    source = LoopSource(bios_image, files=[*bios_image.disks, small_disk],
                        login_users=(sudo_user.name,))
    with source as ep:
        assert source.workdir is not None
        yield replace(ep, user=sudo_user.name, key=sudo_user.key), source.workdir


@pytest.fixture(scope="module")
def root_inventory(user_source: tuple[SourceEndpoint, Path], sudo_user: SudoUser
                   ) -> dict[str, object]:
    """What `p2v inspect` sees logged in as root on the same sshd: sudo must see as much."""
    ep, workdir = user_source
    as_root = replace(ep, user="root", key=workdir / "client_ed25519")
    run = run_p2v(["inspect", "--json"], sudo_user, None, as_root)
    assert run.returncode == 0, run.stderr
    inventory: dict[str, object] = assert_valid(json.loads(run.stdout), "inventory")
    return inventory


def install_rule(user: str, nopasswd: bool) -> Path:
    """A sudoers drop-in letting user run anything as root, with or without its password."""
    return install_lines(user, f"{user} ALL=(root) {'NOPASSWD: ' if nopasswd else ''}ALL\n")


def install_lines(user: str, lines: str) -> Path:
    """A sudoers drop-in with these lines, checked with `visudo -cf` before it is in place."""
    # No dot in the name: sudo skips drop-ins whose name holds one.
    path = SUDOERS_D / f"p2v-test-{user}"
    staged = Path(tempfile.mkdtemp(prefix="p2v-sudoers-")) / "rule"
    try:
        staged.write_text(lines)
        runner.run(["visudo", "-cf", staged])
        staged.chmod(0o440)
        shutil.move(staged, path)
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    return path


@pytest.fixture(params=["nopasswd", "password"])
def sudo_rule(request: pytest.FixtureRequest, sudo_user: SudoUser) -> Iterator[str]:
    """A sudoers drop-in for the user: NOPASSWD, or the password asked (removed after)."""
    path = install_rule(sudo_user.name, nopasswd=request.param == "nopasswd")
    try:
        yield str(request.param)
    finally:
        path.unlink(missing_ok=True)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    watch: ProcWatch
    seconds: float


def run_p2v(argv: list[str], user: SudoUser, password: str | None, ep: SourceEndpoint
            ) -> Run:
    """Run the real `p2v` CLI as a child, watching every process on the host until it ends."""
    env = {k: v for k, v in os.environ.items() if k != "P2V_SUDO_PASSWORD"}
    if password is not None:
        env["P2V_SUDO_PASSWORD"] = password
    full = [sys.executable, "-m", "p2v.cli", argv[0], f"ssh://{ep.user}@{ep.host}:{ep.port}",
            "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
            "--ssh-config", "/dev/null", *argv[1:]]
    watch = ProcWatch(secrets=(user.password.encode(), user.token.encode()), keep=b"sudo")
    started = time.monotonic()
    with watch:
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        # p2v itself was given the password in its environment: that one is the caller's.
        watch.exempt.add(proc.pid)
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"p2v {argv[0]} did not end within {RUN_TIMEOUT} s")
    return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
               watch, time.monotonic() - started)


def assert_nowhere(run: Run, user: SudoUser, files: list[Path]) -> None:
    """The password (or its core) is in no output, no file and no process seen."""
    for secret in (user.password, user.token):
        assert secret not in run.stdout and secret not in run.stderr
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"the password is in {path}"
    assert run.watch.scans > 0
    assert not run.watch.leaks(), f"the password was visible: {run.watch.leaks()}"


def assert_one_error_line(run: Run, expected: str) -> str:
    """stderr ends in exactly one error line holding `expected` (progress lines may precede
    it), and holds no traceback; returns that line."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("p2v: error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1] == errors[0]
    assert expected in errors[0], errors[0]
    return errors[0]


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_inspect_and_copy_through_sudo_leak_no_password(
        user_source: tuple[SourceEndpoint, Path], sudo_user: SudoUser, sudo_rule: str,
        bios_image: FixtureImage, small_disk: Path, root_inventory: dict[str, object],
        tmp_path: Path) -> None:
    ep, sshd_dir = user_source
    password = sudo_user.password if sudo_rule == "password" else None

    inspected = run_p2v(["inspect", "--json"], sudo_user, password, ep)
    assert inspected.returncode == 0, inspected.stderr
    inventory = assert_valid(json.loads(inspected.stdout), "inventory")
    # Loop devices are not disks to an inventory: the host's own disks are what it sees.
    assert inventory["disks"] and inventory["disks"] == root_inventory["disks"]
    # What only root may read (serials, DMI) came through sudo. Filesystems and free space
    # are left out: other tests on this host mount and write while this one runs.
    for key in ("machine", "boot_disk", "unknown"):
        assert inventory[key] == root_inventory[key], key

    # The password case copies the fixture's disk (ext4 free blocks read through sudo too);
    # sudo -n runs the same readers, so the small disk keeps the suite's time down.
    disk, raw = ((ep.disks[0], bios_image.disks[0]) if password
                 else (ep.disks[1], small_disk))
    out = tmp_path / "out"
    copied = run_p2v(["copy", "--output-dir", str(out), "--disk", disk, "--name", "s",
                      "--json"], sudo_user, password, ep)
    assert copied.returncode == 0, copied.stderr
    events = assert_all_valid([json.loads(line) for line in copied.stdout.splitlines()], "events")
    done = next(e for e in events if e["event"] == "disk-done")
    assert identical(Path(raw), Path(done["image"]))

    # The watcher saw the commands on the source side, under sudo the way this case needs.
    flag = "-S" if password else "-n"
    assert any(f"sudo {flag} " in c or f"sudo -k {flag} " in c for c in copied.watch.seen), (
        copied.watch.seen[:5])
    for run in (inspected, copied):
        assert_nowhere(run, sudo_user, files_under(out, sshd_dir))


def test_wrong_password_is_one_line_and_no_hang(
        user_source: tuple[SourceEndpoint, Path], sudo_user: SudoUser, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    # Only a rule that asks for the password can be given a wrong one.
    rule = install_rule(sudo_user.name, nopasswd=False)
    request.addfinalizer(lambda: rule.unlink(missing_ok=True))
    ep, _ = user_source
    wrong = f"not-{sudo_user.token}"
    for argv in (["inspect"], ["copy", "--output-dir", str(tmp_path / "out"),
                               "--disk", ep.disks[1], "--name", "w"]):
        run = run_p2v(argv, sudo_user, wrong, ep)
        assert run.returncode == 1, run.stderr
        assert_one_error_line(run, f"sudo on {ep.host} as {sudo_user.name} failed: ")
        assert "incorrect password" in run.stderr
        # sudo reads one line, finds stdin closed and gives up: seconds, not a prompt's wait.
        assert run.seconds < 60
        assert wrong not in run.stderr and wrong not in run.stdout
        assert not list((tmp_path / "out").glob("*.qcow2"))


def test_sudo_refusals_say_what_sudo_said(
        user_source: tuple[SourceEndpoint, Path], sudo_user: SudoUser,
        request: pytest.FixtureRequest) -> None:
    """Not allowed at all, and a rule needing a terminal: sudo's own reason, one line."""
    ep, _ = user_source
    name = sudo_user.name
    path = SUDOERS_D / f"p2v-test-{name}"
    request.addfinalizer(lambda: path.unlink(missing_ok=True))
    path.unlink(missing_ok=True)
    run = run_p2v(["inspect"], sudo_user, sudo_user.password, ep)
    assert run.returncode == 1
    assert_one_error_line(run, f"{name} is not in the sudoers file")
    # requiretty (still found on older RHEL-like servers): asking for a password would
    # mislead, the terminal is what is missing.
    install_lines(name, f"Defaults:{name} requiretty\n{name} ALL=(root) NOPASSWD: ALL\n")
    run = run_p2v(["inspect"], sudo_user, None, ep)
    assert run.returncode == 1
    assert_one_error_line(run, "you must have a tty to run sudo")


def test_a_source_without_sudo_is_named(small_disk: Path, sudo_user: SudoUser) -> None:
    """A non-root login on a server with no sudo: said so, not "a password is needed"."""
    # The login's whole PATH; the user must be able to enter it (pytest's tmp is root's).
    bin_dir = Path(tempfile.mkdtemp(prefix="p2v-nosudo-"))
    try:
        bin_dir.chmod(0o755)
        for tool in ("id", "env"):
            (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
        source = LoopSource(None, files=[small_disk], login_users=(sudo_user.name,),
                            session_path=str(bin_dir))
        with source as ep:
            ep = replace(ep, user=sudo_user.name, key=sudo_user.key)
            # The fault is the one meant: id and env answer, sudo is not there.
            assert ep.ssh(["id", "-u"]).stdout.strip() != "0"
            assert ep.ssh(["env", "sudo", "-n", "true"], check=False).returncode == 127
            run = run_p2v(["inspect"], sudo_user, None, ep)
            assert run.returncode == 1
            assert_one_error_line(run, "sudo is not installed")
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)


def test_copy_over_the_openssh_channel_feeds_sudo_its_password_on_stdin(
        user_source: tuple[SourceEndpoint, Path], sudo_user: SudoUser, small_disk: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
        ) -> None:
    """The ssh child runs the reader under `sudo -S` too: the password goes down its stdin,
    never onto its command line or into its environment (the watcher sees both)."""
    rule = install_rule(sudo_user.name, nopasswd=False)
    request.addfinalizer(lambda: rule.unlink(missing_ok=True))
    monkeypatch.setenv("P2V_DATA_CHANNEL", "openssh")
    ep, sshd_dir = user_source
    out = tmp_path / "out"
    copied = run_p2v(["copy", "--output-dir", str(out), "--disk", ep.disks[1], "--name", "o",
                      "--json", "-v"], sudo_user, sudo_user.password, ep)
    assert copied.returncode == 0, copied.stderr
    events = [json.loads(line) for line in copied.stdout.splitlines()]
    done = next(e for e in events if e["event"] == "disk-done")
    assert identical(small_disk, Path(done["image"]))
    assert "goes through an OpenSSH child" in copied.stderr
    # The child itself was seen, with the sudo -S reader as its remote command.
    assert any("/sshchild-" in c and "sudo -k -S " in c for c in copied.watch.seen), (
        copied.watch.seen[:5])
    assert_nowhere(copied, sudo_user, files_under(out, sshd_dir))
