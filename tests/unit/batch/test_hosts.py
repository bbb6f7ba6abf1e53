"""Per-host settings of `p2v batch --scheduler`: the manifest's [hosts] table and its checks,
and which value a worker uses (host table, then the worker's environment, then the manifest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from p2v.batch.dask_pool import host_settings
from p2v.batch.manifest import HostSettings, load_manifest
from p2v.job import JobSpec

SPEC = JobSpec(source="ssh://root@web01", name="web01", output_dir=Path("/srv/jobs"))


def test_host_table_beats_the_environment_which_beats_the_manifest() -> None:
    hosts = {"conv1": HostSettings(output_dir=Path("/data/p2v")),
             "10.0.0.6": HostSettings(connect="qemu+ssh://root@kvm6/system")}
    env = {"P2V_OUTPUT_DIR": "/env/p2v", "P2V_CONNECT": "qemu:///session"}
    by_name = host_settings(SPEC, hosts, "conv1", "tcp://10.0.0.5:40001", env)
    assert (by_name.output_dir, by_name.connect) == (Path("/data/p2v"), "qemu:///session")
    assert by_name.work_dir == Path("/data/p2v/web01")
    by_host = host_settings(SPEC, hosts, "conv2", "tcp://10.0.0.6:40001", env)
    assert (by_host.output_dir, by_host.connect) == (Path("/env/p2v"),
                                                     "qemu+ssh://root@kvm6/system")
    plain = host_settings(SPEC, hosts, "conv3", "tcp://10.0.0.7:40001", {})
    assert plain == SPEC


def test_manifest_hosts_table_is_checked(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text('output_dir = "/srv/jobs"\n[[server]]\nname = "a"\n'
                        'source = "ssh://root@a"\n'
                        '[hosts."tcp://10.0.0.5:40001"]\noutput_dir = "/data/p2v"\n'
                        'connect = "qemu:///system"\n')
    hosts = load_manifest(manifest).hosts
    assert hosts == {"tcp://10.0.0.5:40001": HostSettings(Path("/data/p2v"), "qemu:///system")}
    manifest.write_text('output_dir = "/srv/jobs"\n[[server]]\nname = "a"\n'
                        'source = "ssh://root@a"\n[hosts.conv1]\noutput_dir = "rel"\n'
                        'conect = "qemu:///system"\n')
    proc = subprocess.run([sys.executable, "-m", "p2v", "batch", str(manifest), "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert f'{manifest}: [hosts."conv1"]: output_dir: "rel" must be an absolute path' in \
        lines[0], lines
    assert "conect: unknown key in [hosts]; did you mean 'connect'?" in lines[1], lines
    assert "2 problem(s)" in lines[2]
