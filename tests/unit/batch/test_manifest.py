"""The batch manifest: every bad manifest is refused whole, one line per problem, exit 2.

Each file in tests/unit/bad_manifests/ starts with `# expect: FRAGMENT` lines; every fragment
must appear in one of the error lines, each of which names the file first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2v.batch.manifest import load_manifest
from p2v.cli import main
from p2v.errors import ManifestInvalid

BAD = Path(__file__).parent.parent / "bad_manifests"
DOCS = Path(__file__).parents[3] / "docs" / "user" / "batch.md"
CASES = sorted(BAD.glob("*.toml"))


def _expected(path: Path) -> list[str]:
    return [line.removeprefix("# expect:").strip()
            for line in path.read_text().splitlines() if line.startswith("# expect:")]


def test_there_are_at_least_twenty_bad_manifests() -> None:
    assert len(CASES) >= 20
    assert all(_expected(case) for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_manifest_is_refused_with_one_line_per_problem(
        case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / case.name
    shutil.copy(case, manifest)
    rc = main(["batch", str(manifest), "--dry-run"])
    err = capsys.readouterr()
    assert rc == 2
    assert err.out == ""
    lines = err.err.splitlines()
    assert "Traceback" not in err.err
    assert all(line.startswith(f"p2v: error: {manifest}: ") for line in lines), lines
    problems = lines[:-1]
    assert lines[-1] == (f"p2v: error: {manifest}: {len(problems)} problem(s) in the manifest; "
                         "nothing was run")
    for fragment in _expected(case):
        assert any(fragment in line for line in problems), (fragment, problems)
    # Nothing was created: no state dir next to the manifest or in the default output dir.
    assert sorted(p.name for p in tmp_path.iterdir()) == [case.name]


def test_every_problem_is_reported_not_just_the_first() -> None:
    with pytest.raises(ManifestInvalid) as exc:
        load_manifest(BAD / "37-every-problem-at-once.toml")
    assert len(exc.value.problems) == len(_expected(BAD / "37-every-problem-at-once.toml"))


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ManifestInvalid) as exc:
        load_manifest(BAD / "01-toml-syntax.toml")
    (line,) = exc.value.problems
    assert re.search(r"01-toml-syntax.toml: not valid TOML: .*line 5", line)


def test_missing_manifest_is_a_one_line_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", str(tmp_path / "fleet.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"p2v: error: manifest not found: {tmp_path / 'fleet.toml'}. Check the path " \
                  "and try again."


def test_no_traceback_from_the_real_command(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.toml"
    shutil.copy(BAD / "04-memory-with-unit.toml", manifest)
    proc = subprocess.run([sys.executable, "-m", "p2v", "batch", str(manifest)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (f'{manifest}: server[2] "db01": memory: must be a positive integer (MiB), got "4G"'
            in proc.stderr)


def _docs_example() -> str:
    text = DOCS.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "docs/user/batch.md has no ```toml example"
    return blocks[0]


def test_the_full_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(_docs_example())
    # The files the example names, relative to the manifest.
    (tmp_path / "keys").mkdir()
    for name in ("keys/p2v_ed25519", "keys/known_hosts", "keys/ssh_config"):
        (tmp_path / name).write_text("")
    m = load_manifest(manifest)
    assert m.output_dir == Path("/srv/p2v/jobs")
    assert m.jobs == 2
    assert m.state_dir == Path("/srv/p2v/jobs/.p2v-batch")
    specs = {s.name: s for s in m.specs}
    assert list(specs) == ["web01", "db01", "legacy-erp"]
    web, db, erp = specs["web01"], specs["db01"], specs["legacy-erp"]
    # Defaults apply; entries override them; paths are taken from the manifest's directory.
    assert web.identity == tmp_path / "keys/p2v_ed25519"
    assert web.known_hosts == tmp_path / "keys/known_hosts"
    assert web.connect == "qemu:///system" and web.networks == ("default",)
    assert web.memory_mib is None and web.verify
    assert db.memory_mib == 8192 and db.vcpus == 4
    assert db.disks == ("/dev/sda", "/dev/sdb")
    assert db.networks == ("eth0=prod", "eth1=backup")
    assert erp.source == "erp-via-bastion" and erp.ssh_config == tmp_path / "keys/ssh_config"
    assert erp.bridges == ("br0",) and erp.networks == ("default",)
    assert erp.start and erp.full and not erp.compress and erp.verify_timeout == 600
    assert all(s.work_dir == Path("/srv/p2v/jobs") / s.name for s in m.specs)


def test_parallel_and_bandwidth_limit_reach_the_jobs(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text('[defaults]\nbandwidth_limit = "50M"\n'
                        '[[server]]\nname = "a"\nsource = "ssh://root@a"\nparallel = 1\n'
                        '[[server]]\nname = "b"\nsource = "ssh://root@b"\n'
                        'bandwidth_limit = 1048576\n')
    specs = {s.name: s for s in load_manifest(manifest).specs}
    assert (specs["a"].parallel, specs["a"].bandwidth_limit) == (1, 50 * 2**20)
    assert (specs["b"].parallel, specs["b"].bandwidth_limit) == (2, 2**20)
    # No `connect`: left to the host the job runs on (run_job resolves it there, as virsh would).
    assert specs["a"].connect == specs["b"].connect == ""


def test_only_runs_the_servers_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'output_dir = "{tmp_path / "jobs"}"\n'
                        + "".join(f'[[server]]\nname = "{n}"\nsource = "ssh://root@{n}"\n'
                                  for n in ("a", "b", "c")))
    assert main(["batch", "--only", "c,a", str(manifest), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [p["job"] for p in plan] == ["a", "c"]
    assert main(["batch", str(manifest), "--dry-run", "--only", "d"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("p2v: error: --only d: ") and "its servers: a, b, c" in line, line


@pytest.mark.parametrize("item", ["eth0:", ":lan"])
def test_a_colon_mapping_with_an_empty_side_is_refused_at_load(tmp_path: Path, item: str) -> None:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'[[server]]\nname = "a"\nsource = "ssh://root@a"\n'
                        f'networks = ["{item}"]\n')
    with pytest.raises(ManifestInvalid) as info:
        load_manifest(manifest)
    assert any(f'networks: "{item}": want "SRC=NET"' in p for p in info.value.problems)


def test_cutover_keys_and_virtio_win_reach_the_jobs(tmp_path: Path) -> None:
    (tmp_path / "drivers").mkdir()
    manifest = tmp_path / "fleet.toml"
    manifest.write_text('[defaults]\ncutover = true\nfreeze = "best-effort"\n'
                        'virtio_win = "drivers"\n'
                        '[[server]]\nname = "db"\nsource = "ssh://root@db"\n'
                        'freeze_timeout = 120\nbefore_final = "systemctl stop pg"\n'
                        'after_final = "systemctl start pg"\n'
                        '[[server]]\nname = "web"\nsource = "ssh://root@web"\ncutover = false\n')
    specs = {s.name: s for s in load_manifest(manifest).specs}
    db, web = specs["db"], specs["web"]
    assert (db.cutover, db.freeze, db.freeze_timeout) == (True, "best-effort", 120.0)
    assert (db.before_final, db.after_final) == ("systemctl stop pg", "systemctl start pg")
    assert not web.cutover and web.before_final is None
    # Relative to the manifest's directory, as every other path.
    assert db.virtio_win == web.virtio_win == tmp_path / "drivers"


def test_the_top_level_bandwidth_limit_is_the_batchs_shared_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'output_dir = "{tmp_path / "jobs"}"\nbandwidth_limit = "100M"\n'
                        '[[server]]\nname = "a"\nsource = "ssh://root@a"\n'
                        'bandwidth_limit = "10M"\n'
                        '[[server]]\nname = "b"\nsource = "ssh://root@b"\n')
    m = load_manifest(manifest)
    assert m.bandwidth_limit == 100 * 2**20
    # Per server, bandwidth_limit is still the job's own.
    assert [s.bandwidth_limit for s in m.specs] == [10 * 2**20, None]
    assert main(["batch", str(manifest), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["bandwidth_limit"] == 100 * 2**20
    assert {p["spec"]["host_bandwidth_limit"] for p in plan["plan"]} == {100 * 2**20}
    # --bandwidth-limit wins over the manifest's.
    assert main(["batch", str(manifest), "--dry-run", "--json", "--bandwidth-limit", "8M"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {p["spec"]["host_bandwidth_limit"] for p in plan["plan"]} == {8 * 2**20}
    assert [p["spec"]["bandwidth_limit"] for p in plan["plan"]] == [10 * 2**20, None]


def test_an_ssh_config_option_p2v_cannot_honour_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host erp\n  HostName 192.0.2.9\n  StrictHostKeyChecking no\n")
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'[[server]]\nname = "erp"\nsource = "erp"\nssh_config = "{config}"\n')
    with pytest.raises(ManifestInvalid) as info:
        load_manifest(manifest)
    (problem,) = info.value.problems
    assert "source: ssh_config for 'erp': StrictHostKeyChecking" in problem, problem
    assert "(want ssh://" not in problem
