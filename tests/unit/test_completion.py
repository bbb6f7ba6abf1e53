"""`p2v completion`: the scripts complete in a real bash and a real zsh.

The bash script is sourced in `bash --norc` and its completion function is called the way
bash calls it (COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT), and COMPREPLY is read back;
zsh completes typed lines on a pseudo-terminal (zpty) with compinit loading `_p2v`. zsh and
bash-completion come from scripts/install-system-deps."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2v.cli import build_parser
from p2v.cli.completion import INSTALL_PATHS, SHELLS, script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "p2v.bash"
    path.write_text(script(build_parser(), "bash"))
    return path


# Sources the script, finds the function `complete -p p2v` names (as bash would), calls it
# on the words given as arguments (the last one being completed) and prints COMPREPLY.
_DRIVE_BASH = r"""
source "$1"; shift
spec=$(complete -p p2v) || exit 3
[[ $spec =~ -F\ ([^ ]+) ]] || exit 4
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"${BASH_REMATCH[1]}" p2v "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete_bash(bash_script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the command line `words` (the last word is being completed)."""
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", _DRIVE_BASH, "bash", str(bash_script), *words],
        capture_output=True, text=True, timeout=30, cwd=cwd, check=False)
    assert result.returncode == 0, result.stderr
    return sorted(line for line in result.stdout.splitlines() if line)


def test_bash_completes_subcommand_names(bash_script: Path) -> None:
    names = complete_bash(bash_script, "p2v", "")
    assert {"convert", "batch", "inspect", "completion", "jobs"} <= set(names)
    assert complete_bash(bash_script, "p2v", "con") == ["convert"]
    assert complete_bash(bash_script, "p2v", "co") == ["completion", "convert", "copy"]


def test_bash_completes_each_subcommands_own_options(bash_script: Path) -> None:
    assert complete_bash(bash_script, "p2v", "convert", "--na") == ["--name"]
    assert complete_bash(bash_script, "p2v", "batch", "--on") == ["--only"]
    assert complete_bash(bash_script, "p2v", "batch", "--na") == []     # convert's, not batch's
    assert "--virtio-win" in complete_bash(bash_script, "p2v", "fix", "--")


def test_bash_completes_deep_in_the_line(bash_script: Path) -> None:
    """Not only the first word: after a global flag, the SOURCE and an option with its value."""
    words = ("p2v", "-v", "convert", "ssh://root@web01", "--name", "web01", "--ne")
    assert complete_bash(bash_script, *words) == ["--network", "--new-macs"]
    assert complete_bash(bash_script, "p2v", "verify", "disk.qcow2", "--bus", "") == [
        "sata", "virtio"]
    assert complete_bash(bash_script, "p2v", "completion", "") == sorted(SHELLS)


def test_bash_completes_paths_as_files_or_directories(bash_script: Path, tmp_path: Path) -> None:
    (tmp_path / "id_ed25519").write_text("key\n")
    (tmp_path / "id_dir").mkdir()
    (tmp_path / "jobs-file").write_text("")
    (tmp_path / "jobs-dir").mkdir()
    line = ("p2v", "inspect", "web01", "--identity", "id_")
    assert complete_bash(bash_script, *line, cwd=tmp_path) == ["id_dir", "id_ed25519"]
    line = ("p2v", "convert", "web01", "--name", "w", "--output-dir", "jobs")
    assert complete_bash(bash_script, *line, cwd=tmp_path) == ["jobs-dir"]
    line = ("p2v", "copy", "web01", "--ssh-config", "jobs")
    assert complete_bash(bash_script, *line, cwd=tmp_path) == ["jobs-dir", "jobs-file"]


def test_every_path_option_completes_as_a_path() -> None:
    """The rule follows the type: an option added later with type=Path is covered too."""
    text = script(build_parser(), "bash")
    for flag in ("convert___identity", "convert___ssh_config", "batch_pos_0",
                 "fix___virtio_win", "register___caps", "verify_pos_0"):
        assert f"_shtab_p2v_{flag}_COMPGEN=_shtab_compgen_files" in text
    for flag in ("convert___output_dir", "jobs___output_dir", "clean___output_dir"):
        assert f"_shtab_p2v_{flag}_COMPGEN=_shtab_compgen_dirs" in text


def test_cli_prints_the_script_and_refuses_other_shells() -> None:
    cmd = [sys.executable, "-m", "p2v.cli", "completion"]
    out = subprocess.run([*cmd, "bash"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True).stdout
    assert "complete -o bashdefault -F _shtab_p2v p2v" in out
    bad = subprocess.run([*cmd, "fish"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=False)
    assert bad.returncode == 2
    assert "invalid choice: 'fish'" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_make_setup_installs_where_the_help_says() -> None:
    installer = (ROOT / "scripts/install-completion").read_text()
    for path in INSTALL_PATHS.values():
        assert path in installer
    assert re.search(r"^setup:.*\bcompletion\b", (ROOT / "Makefile").read_text(), re.M)


# Types LINE and a Tab into an interactive `zsh -f` on a pseudo-terminal, with compinit
# loading _p2v from DIR, and prints what the terminal shows until NEEDLE appears (or TRIES/10 s).
_DRIVE_ZSH = r"""
zmodload zsh/zpty
dir=$1 line=$2 needle=$3 tries=$4
zpty z zsh -f -i
zpty -w z "PS1='READY> '; fpath=($dir \$fpath); autoload -Uz compinit;"\
" compinit -u -d $dir/dump; LISTMAX=0; print COMPINIT-DONE"
zpty -r -m z out '*COMPINIT-DONE*'
zpty -r -m z out '*READY> '
zpty -w -n z "$line"$'\t'
all=
for ((i = 0; i < tries; i++)); do
  sleep 0.1
  while zpty -r -t z chunk; do all+=$chunk; done
  [[ $all == *$needle* ]] && break
done
zpty -d z
print -r -- "$all"
"""


@pytest.fixture(scope="module")
def zsh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("zsh"), "zsh is missing: run `make setup` (scripts/install-system-deps)"
    directory = tmp_path_factory.mktemp("zsh")
    (directory / "_p2v").write_text(script(build_parser(), "zsh"))
    return directory


def complete_zsh(zsh_dir: Path, line: str, needle: str, wait: float = 10.0) -> str:
    """What the terminal shows after LINE and a Tab, read until `needle` shows or `wait` s."""
    argv = ["zsh", "-f", "-c", _DRIVE_ZSH, "zsh", str(zsh_dir), line, needle, str(int(wait * 10))]
    result = subprocess.run(argv,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)    # terminal escapes


def test_zsh_script_is_valid_zsh(zsh_dir: Path) -> None:
    result = subprocess.run(["zsh", "-n", str(zsh_dir / "_p2v")], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_zsh_completes_subcommands_and_their_options(zsh_dir: Path) -> None:
    assert "p2v batch --only" in complete_zsh(zsh_dir, "p2v batch --on", "--only")
    shown = complete_zsh(zsh_dir, "p2v co", "copy")
    assert "completion" in shown and "convert" in shown and "copy" in shown
    shown = complete_zsh(zsh_dir, "p2v -v convert web01 --name w --cut", "--cutover")
    assert "--cutover" in shown
    assert "--cutover" not in complete_zsh(zsh_dir, "p2v batch --cut", "--cutover", wait=2)
