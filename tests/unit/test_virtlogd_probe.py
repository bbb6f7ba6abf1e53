"""virtlogd is judged by whether its socket answers, not by whether the socket file exists.

CI once failed every guest start with "virtlogd-sock: Connection refused": a killed virtlogd
had left its socket file behind, so the test bed thought it was running.
"""

from __future__ import annotations

import socket
from pathlib import Path

from p2v.demo.libvirtd import virtlogd_answers


def test_a_listening_socket_answers(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(1)
        assert virtlogd_answers(str(path))


def test_a_stale_socket_file_does_not(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(1)
    assert path.exists()            # the file outlives its listener
    assert not virtlogd_answers(str(path))


def test_no_socket_file_does_not(tmp_path: Path) -> None:
    assert not virtlogd_answers(str(tmp_path / "missing"))
