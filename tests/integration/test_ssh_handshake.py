"""A server that sends its SSH banner and then stalls: the error is p2v's own one line,
whichever timeout (p2v's connect timeout or paramiko's handshake timeout) runs out first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stall_server import BANNER, stalling_listener

from p2v.errors import SshUnreachable
from p2v.source.ssh import SshOptions, SshSource


@pytest.fixture
def banner_then_stall() -> Iterator[int]:
    with stalling_listener(BANNER) as port:
        yield port


def test_a_connect_timeout_beyond_paramikos_handshake_timeout(banner_then_stall: int,
                                                              tmp_path: Path) -> None:
    """paramiko ends a handshake after 15 s by itself (an EOFError from its thread); a
    20 s connect timeout must still give SshUnreachable after 20 s, not a raw EOFError."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    options = SshOptions(known_hosts=known, use_agent=False, connect_timeout=20.0)
    started = time.monotonic()
    with pytest.raises(SshUnreachable, match="handshake did not finish within 20 s"):
        SshSource.open(f"ssh://root@127.0.0.1:{banner_then_stall}", options)
    assert time.monotonic() - started >= 19.0
