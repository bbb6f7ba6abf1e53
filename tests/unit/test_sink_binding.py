"""Without python3-libnbd the sink refuses in one line that says what to install, before
it starts a daemon or touches the image."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.sink import nbd
from p2v.sink.qcow2 import Qcow2Writer, SinkError


def test_a_missing_libnbd_binding_is_a_one_line_sink_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbd, "nbd", None)
    image = tmp_path / "x.qcow2"
    with pytest.raises(SinkError) as caught:
        Qcow2Writer(image)
    message = caught.value.message
    assert "python3-libnbd" in message and str(image) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
