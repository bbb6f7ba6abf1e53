"""How a non-root login gets root: the decision and what goes where (commands faked)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from p2v.errors import SudoFailed
from p2v.source.ssh import (
    SUDO_PROBE,
    RemoteResult,
    SshOptions,
    SshSource,
    SshTarget,
    sudo_refusal,
)

SECRET = "s3cr3t pass"


class FakeSource(SshSource):
    """SshSource whose remote side is a table: argv prefix -> exit code."""

    def __init__(self, uid: str, nopasswd: bool, password: str | None,
                 options: SshOptions | None = None) -> None:
        super().__init__(SshTarget(name="web01", host="web01", user="ops"), options)
        self.uid, self.nopasswd, self.password = uid, nopasswd, password
        self.calls: list[tuple[list[str], bytes | None]] = []

    def _plain(self, argv: Sequence[str], *, timeout: float | None,
               stdin: bytes | None = None) -> RemoteResult:
        argv = list(argv)
        self.calls.append((argv, stdin))
        if argv == ["id", "-u"]:
            return RemoteResult("id -u", 0, (self.uid + "\n").encode(), "")
        if argv == list(SUDO_PROBE) or argv[:2] == ["sudo", "-n"]:
            return RemoteResult("sudo", 0 if self.nopasswd else 1, b"",
                                "" if self.nopasswd else "sudo: a password is required\n")
        if argv[:2] == ["sudo", "-k"]:
            ok = stdin == f"{self.password}\n".encode()
            return RemoteResult("sudo", 0 if ok else 1, b"ok" if ok else b"",
                                "" if ok else "Sorry, try again.\n")
        return RemoteResult(" ".join(argv), 0, b"ok", "")


def test_root_login_runs_commands_as_they_are() -> None:
    source = FakeSource("0", nopasswd=False, password=None)
    source.run(["cat", "/dev/sda"])
    assert source.calls[-1] == (["cat", "/dev/sda"], None)


def test_passwordless_sudo() -> None:
    source = FakeSource("1000", nopasswd=True, password=None)
    source.run(["cat", "/dev/sda"])
    assert source.calls[-1] == (["sudo", "-n", "--", "cat", "/dev/sda"], None)


def test_password_from_environment_goes_to_stdin_only(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("P2V_SUDO_PASSWORD", SECRET)
    caplog.set_level(logging.DEBUG)
    source = FakeSource("1000", nopasswd=False, password=SECRET)
    assert source.run(["cat", "/dev/sda"]).text == "ok"
    argv, stdin = source.calls[-1]
    assert argv == ["sudo", "-k", "-S", "-p", "", "--", "cat", "/dev/sda"]
    assert stdin == f"{SECRET}\n".encode()
    assert not any(SECRET in " ".join(a) for a, _ in source.calls)
    assert SECRET not in caplog.text


def test_password_from_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2V_SUDO_PASSWORD", raising=False)
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return SECRET

    source = FakeSource("1000", nopasswd=False, password=SECRET,
                        options=SshOptions(sudo_prompt=prompt))
    source.run(["true"])
    source.run(["true"])
    assert asked == ["[sudo] password for ops@web01: "]     # asked once per session


def test_wrong_or_missing_password_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2V_SUDO_PASSWORD", "wrong")
    with pytest.raises(SudoFailed, match="Sorry, try again"):
        FakeSource("1000", nopasswd=False, password=SECRET).run(["true"])
    monkeypatch.delenv("P2V_SUDO_PASSWORD")
    with pytest.raises(SudoFailed) as info:
        FakeSource("1000", nopasswd=False, password=SECRET).run(["true"])
    assert "a password is needed and none was given" in info.value.message
    assert "P2V_SUDO_PASSWORD" in info.value.message


def test_a_refusal_a_password_cannot_fix_is_sudos_own_reason() -> None:
    assert sudo_refusal(1, "sudo: a password is required\n") is None
    assert sudo_refusal(1, "") is None
    assert sudo_refusal(127, "env: 'sudo': No such file or directory\n") == (
        "sudo is not installed on the source (or not on the login's PATH)")
    assert sudo_refusal(1, "sudo: sorry, you must have a tty to run sudo\n") == (
        "sudo: sorry, you must have a tty to run sudo")


def test_the_probe_is_in_the_c_locale_so_its_answer_can_be_read() -> None:
    source = FakeSource("1000", nopasswd=True, password=None)
    source.run(["true"])
    assert [argv for argv, _ in source.calls[:2]] == [
        ["id", "-u"], ["env", "LC_ALL=C", "sudo", "-n", "true"]]
