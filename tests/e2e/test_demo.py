"""`p2v demo` runs the whole story on the built-in example and reports what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from schema_check import assert_valid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_converts_the_live_source_into_a_guest_that_boots_on_virtio(
        tmp_path: Path) -> None:
    demo = Path("/var/tmp") / f"p2v-demo-test-{os.getpid()}"   # qemu must reach the images
    env = {**os.environ, "P2V_DEMO_DIR": str(demo)}
    try:
        proc = subprocess.run([sys.executable, "-m", "p2v", "demo", "--json"],
                              capture_output=True, text=True, timeout=3600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        assert report["live_source"]["hostname"] == "p2v-bios"
        assert "10.0.2.15/24" in report["live_source"]["addresses"]
        job = assert_valid(report["job"], "report")
        assert job["ok"] is True and job["domain"]["disk_bus"] == "virtio"
        verdict = job["verdict"]
        assert verdict["booted"] is True and verdict["bus"] == "virtio"
        assert verdict["hostname"] == "p2v-bios"
        eth0 = next(i for i in verdict["interfaces"] if i["name"] == "eth0")
        assert "10.0.2.15/24" in eth0["addresses"]
        assert (demo / "demo-bios.json").is_file()
        assert any(line.strip().startswith("clean up:") for line in report["summary"])
    finally:
        subprocess.run([sys.executable, "-m", "p2v", "clean", "p2v-demo-bios", "--domain",
                        "--output-dir", str(demo / "jobs")], capture_output=True, timeout=300)
        subprocess.run(["rm", "-rf", str(demo)], check=False)
