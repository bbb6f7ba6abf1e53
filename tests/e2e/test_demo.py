"""`p2v demo` runs on the built-in example and reports what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_reports_live_source_and_both_boot_checks(tmp_path: Path) -> None:
    env = {**os.environ, "P2V_DEMO_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "p2v.cli", "demo", "--json"],
                          capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["live_source"]["hostname"] == "p2v-bios"
    assert "10.0.2.15/24" in report["live_source"]["addresses"]
    assert report["verify_sata"]["booted"] is True
    assert report["verify_virtio"]["reason"] == "root-device-missing"
    assert (tmp_path / "demo-bios.json").is_file()
