"""p2v.secure on the real file system: modes whatever the umask, symlinks and foreign owners
refused (run as root: the foreign owner is `nobody`, set with chown)."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2v import cli
from p2v.errors import ExitCode, UnsafePath
from p2v.jobdir import WorkDir, write_json
from p2v.secure import check_path, open_private, private_dir, write_private

NOBODY = pwd.getpwnam("nobody").pw_uid


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_dirs_and_files_are_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == mode(made) == 0o700
    write_private(made / "x.json", "{}")
    with open_private(made / "log", "a") as out:
        out.write("line\n")
    assert mode(made / "x.json") == mode(made / "log") == 0o600


def test_an_existing_loose_file_is_made_private_and_a_work_dir_tightened(
        tmp_path: Path, umask_000: None) -> None:
    loose = tmp_path / "report.json"
    loose.write_text("old")
    loose.chmod(0o666)
    write_private(loose, "new")
    assert mode(loose) == 0o600 and loose.read_text() == "new"
    work = tmp_path / "job"
    work.mkdir(mode=0o755)
    private_dir(work)
    assert mode(work) == 0o700
    keep = tmp_path / "users-output"
    keep.mkdir(mode=0o755)
    private_dir(keep, tighten=False)                    # a user's --output-dir keeps its mode
    assert mode(keep) == 0o755


def test_work_dir_files_are_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    with WorkDir(tmp_path / "jobs" / "web01", "web01") as wd:
        write_json(wd.file("inventory.json"), {"hostname": "web01"})
        wd.log("started")
        wd.record_event({"event": "x"})
        wd.mark_done("inspect", 1.0)
    for path in [wd.path.parent, wd.path, wd.markers]:
        assert mode(path) == 0o700, path
    for path in wd.path.rglob("*"):
        if path.is_file():
            assert mode(path) == 0o600, path


@pytest.mark.parametrize("kind", ["symlink", "foreign"])
def test_symlinked_or_foreign_paths_are_refused_and_nothing_is_written(
        tmp_path: Path, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    work = tmp_path / "job"
    if kind == "symlink":
        work.symlink_to(elsewhere)
    else:
        work.mkdir()
        os.chown(work, NOBODY, -1)
    with pytest.raises(UnsafePath) as err:
        WorkDir(work, "job").__enter__()
    problem = "is a symlink" if kind == "symlink" else f"is owned by uid {NOBODY}"
    assert f"work dir {work} {problem}" in err.value.message
    assert list(elsewhere.iterdir()) == []
    if kind == "foreign":
        assert list(work.iterdir()) == []


def test_a_file_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "caps.json"
    link.symlink_to(victim)
    with pytest.raises(UnsafePath, match="is a symlink"):
        write_private(link, "{}")
    foreign = tmp_path / "foreign.json"
    foreign.write_text("theirs")
    os.chown(foreign, NOBODY, -1)
    with pytest.raises(UnsafePath, match=f"owned by uid {NOBODY}"):
        write_private(foreign, "{}")
    assert victim.read_text() == "keep" and foreign.read_text() == "theirs"
    check_path(tmp_path / "missing", "file")                # absent: nothing to refuse


@pytest.mark.parametrize("kind", ["symlink", "foreign"])
def test_a_redirected_state_dir_stops_convert_in_one_line(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The default --output-dir is $P2V_STATE_DIR/jobs: a state dir someone else planted
    (a symlink, or a dir of `nobody`'s) is refused before any connection or write."""
    target = tmp_path / "planted"
    target.mkdir()
    state = tmp_path / "state"
    if kind == "symlink":
        state.symlink_to(target)
    else:
        state.mkdir()
        os.chown(state, NOBODY, -1)
    monkeypatch.setenv("P2V_STATE_DIR", str(state))
    code = cli.main(["convert", "ssh://root@127.0.0.1:1", "--name", "web01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ExitCode.USAGE
    assert len(err) == 1 and str(state) in err[0] and "Traceback" not in err[0], err
    assert list(target.iterdir()) == []
    if kind == "foreign":
        assert list(state.iterdir()) == []
