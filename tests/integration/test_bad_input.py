"""The bad-input corpus: every bad input is one line on stderr, its exit code, nothing written.

Each case is one row of CASES: the real `p2v` CLI runs as a subprocess with the row's argv in
a watched directory; the test asserts one `p2v…: error:` line (a bad manifest: one per
problem and the summary), the exit code, no traceback, no secret anywhere, and that no file in
the watched directory was created, changed or removed. Every manifest in
tests/unit/bad_manifests/ is a row too. Add a case by adding a row (`setup` writes the files
it needs, e.g. a torn journal, into the row's own directory before the "before" snapshot).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from stall_server import BANNER, stalling_listener

from p2v.errors import ExitCode, SshUnreachable
from p2v.source.ssh import SshOptions, SshSource, parse_source

REPO = Path(__file__).resolve().parents[2]
BAD_MANIFESTS = REPO / "tests" / "unit" / "bad_manifests"
SECRET = "s3cr3t-Pw"
USAGE, FAILURE = ExitCode.USAGE, ExitCode.FAILURE


@dataclass
class Env:
    """What a row's argv is built from: the watched dir and the loopback stall listeners."""

    dir: Path
    silent_port: int
    banner_port: int
    immutable: bool = False                    # ro/ could be made immutable (chattr +i)

    def p(self, name: str) -> str:
        return str(self.dir / name)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    code: int
    says: str                                  # a fragment of the error line
    lines: int | None = 1                      # None: a manifest, one line per problem + 1
    secret: str | None = None                  # must appear nowhere (stderr, stdout, files)
    needs_immutable: bool = False              # uses the immutable directory ro/
    setup: Callable[[Path], None] | None = None  # writes this row's own files into its dir
    timeout: float = 120                       # generous: the suite runs on loaded machines


def _copy_argv(out: str, *extra: str, source: str = "ssh://root@127.0.0.1:1") -> list[str]:
    return ["copy", source, "--disk", "/dev/sda", "--output-dir", out, *extra]


def _sync_argv(out: str, *extra: str, source: str = "ssh://root@127.0.0.1:1") -> list[str]:
    return ["sync", source, "--output-dir", out, *extra]


def _convert_argv(out: str, *extra: str, source: str = "ssh://root@127.0.0.1:1") -> list[str]:
    return ["convert", source, "--name", "web01", "--output-dir", out, *extra]


def _register_local(out: str) -> list[str]:
    return ["register", "disk.qcow2", "--name", "web01", "--output", "local",
            "--output-dir", out]


def _batch(manifest: str) -> list[str]:
    return ["batch", manifest]




_OUT_DIR_BAD = {"file": ("afile", "is not a directory"),
                "under-a-file": ("afile/sub", "is not a directory"),
                "not-writable": ("ro/sub", "is not writable")}
_OUT_DIR_BUILDERS: dict[str, Callable[[Env, str, str], list[str]]] = {
    "copy": lambda e, where, _kind: _copy_argv(e.p(where)),
    "sync": lambda e, where, _kind: _sync_argv(e.p(where)),
    "convert": lambda e, where, _kind: _convert_argv(e.p(where)),
    "register-local": lambda e, where, _kind: _register_local(e.p(where)),
    # A valid manifest whose output_dir is WHERE (written by _write_inputs); a real run.
    "batch": lambda e, _where, kind: _batch(e.p(f"out-{kind}.toml")),
}
_OUT_DIR_CASES = [
    Case(f"{cmd}-output-dir-{kind}", (lambda e, b=build, w=where, k=kind: b(e, w, k)), USAGE,
         says, needs_immutable=kind == "not-writable")
    for kind, (where, says) in _OUT_DIR_BAD.items()
    for cmd, build in _OUT_DIR_BUILDERS.items()
]

def _from_image(out: str, *images: str) -> list[str]:
    return ["convert", "--from-image", *images, "--name", "lab01", "--output-dir", out]


CASES: list[Case] = [
    # convert --from-image: a bad image is one line naming it, before the work dir exists.
    Case("convert-from-image-text-file", lambda e: _from_image(e.p("out"), e.p("notes.txt")),
         USAGE, "notes.txt is not a disk image: no partition table"),
    Case("convert-from-image-empty", lambda e: _from_image(e.p("out"), e.p("empty.img")),
         USAGE, "empty.img is not a disk image: it is empty (0 bytes)"),
    Case("convert-from-image-missing", lambda e: _from_image(e.p("out"), e.p("nope.vmdk")),
         USAGE, "image not found: "),
    Case("convert-from-image-and-source",
         lambda e: [*_convert_argv(e.p("out")), "--from-image", e.p("notes.txt")], USAGE,
         "give SOURCE (ssh://root@127.0.0.1:1) or --from-image, not both"),
    Case("convert-virtio-win-missing",
         lambda e: _convert_argv(e.p("out"), "--virtio-win", e.p("nope.iso")),
         ExitCode.DRIVERS_UNAVAILABLE, "nope.iso: no such file or directory"),
    # verify / fix: nothing boots, no appliance starts, for a file that is not a disk.
    Case("verify-empty-image", lambda e: ["verify", e.p("empty.img")], USAGE,
         "is not a disk image: it is empty (0 bytes)"),
    Case("verify-text-file", lambda e: ["verify", e.p("notes.txt")], USAGE,
         "is not a disk image: no partition table"),
    Case("verify-qcow2-of-size-0", lambda e: ["verify", e.p("zero.qcow2")], USAGE,
         "its virtual size is 0"),
    Case("verify-directory", lambda e: ["verify", str(e.dir)], USAGE, "not a regular file"),
    Case("fix-empty-image", lambda e: ["fix", e.p("empty.img")], USAGE,
         "is not a disk image: it is empty (0 bytes)"),
    Case("fix-text-file", lambda e: ["fix", "--dry-run", e.p("notes.txt")], USAGE,
         "is not a disk image: no partition table"),
    # SOURCE: IDNA-invalid and control characters, never echoed raw.
    Case("inspect-idna-empty-label", lambda e: ["inspect", "ssh://root@a..b"], USAGE,
         "not a valid host name: 'a..b'"),
    Case("inspect-idna-label-too-long", lambda e: ["inspect", f"ssh://root@{'a' * 64}.com"],
         USAGE, "not a valid host name"),
    Case("convert-idna-empty-label", lambda e: _convert_argv(e.p("out"), source="root@a..b"),
         USAGE, "not a valid host name: 'a..b'"),
    Case("inspect-host-with-escape", lambda e: ["inspect", "ssh://root@web\x1b[31m01"],
         USAGE, "it contains control characters"),
    Case("copy-host-with-newline",
         lambda e: _copy_argv(e.p("out"), source="ssh://root@web\n01"), USAGE,
         "it contains control characters"),
    Case("convert-host-with-control-char",
         lambda e: _convert_argv(e.p("out"), source="root@web\x0101"), USAGE,
         "it contains control characters"),
    # A password in SOURCE: refused, and never shown.
    Case("inspect-password-in-url", lambda e: ["inspect", f"ssh://root:{SECRET}@127.0.0.1"],
         USAGE, "passwords do not belong in SOURCE", secret=SECRET),
    Case("inspect-password-without-scheme", lambda e: ["inspect", f"root:{SECRET}@127.0.0.1"],
         USAGE, "'root:***@127.0.0.1'", secret=SECRET),
    Case("inspect-password-and-bad-port",
         lambda e: ["inspect", f"ssh://root:{SECRET}@127.0.0.1:99999"], USAGE,
         "root:***@", secret=SECRET),
    Case("copy-password-in-url",
         lambda e: _copy_argv(e.p("out"), source=f"ssh://root:{SECRET}@127.0.0.1"), USAGE,
         "passwords do not belong in SOURCE", secret=SECRET),
    Case("sync-password-in-url",
         lambda e: _sync_argv(e.p("out"), source=f"ssh://root:{SECRET}@127.0.0.1"), USAGE,
         "passwords do not belong in SOURCE", secret=SECRET),
    Case("convert-password-in-url",
         lambda e: _convert_argv(e.p("out"), source=f"ssh://root:{SECRET}@127.0.0.1"), USAGE,
         "passwords do not belong in SOURCE", secret=SECRET),
    Case("batch-password-in-source", lambda e: _batch(e.p("password.toml")), USAGE,
         '"ssh://root:***@web01": passwords do not belong', lines=None, secret=SECRET),
    # --name is one path component, for every command that takes one.
    Case("copy-name-dotdot", lambda e: _copy_argv(e.p("out"), "--name", "../x"), USAGE,
         "--name '../x': use letters"),
    Case("copy-name-slash", lambda e: _copy_argv(e.p("out"), "--name", "a/b"), USAGE,
         "--name 'a/b': use letters"),
    Case("sync-name-dotdot", lambda e: _sync_argv(e.p("out"), "--name", "../x"), USAGE,
         "--name '../x': use letters"),
    Case("convert-name-slash",
         lambda e: ["convert", "ssh://root@127.0.0.1:1", "--name", "a/b", "--output-dir",
                    e.p("out")], USAGE, "--name 'a/b': use letters"),
    Case("register-name-dotdot",
         lambda e: ["register", "disk.qcow2", "--name", "../x", "--output", "local",
                    "--output-dir", e.p("out")], USAGE, "--name '../x': use letters"),
    # NaN / inf / overflowing numbers, for every float option.
    Case("verify-timeout-nan", lambda e: ["verify", "disk.qcow2", "--timeout", "nan"], USAGE,
         "argument --timeout: must be a finite number"),
    Case("verify-timeout-inf", lambda e: ["verify", "disk.qcow2", "--timeout", "inf"], USAGE,
         "argument --timeout: must be a finite number"),
    Case("convert-verify-timeout-nan",
         lambda e: _convert_argv(e.p("out"), "--verify-timeout", "NaN"), USAGE,
         "argument --verify-timeout: must be a finite number"),
    Case("convert-freeze-timeout-inf",
         lambda e: _convert_argv(e.p("out"), "--cutover", "--freeze-timeout", "inf"), USAGE,
         "argument --freeze-timeout: must be a finite number"),
    Case("sync-freeze-timeout-minus-inf",
         lambda e: _sync_argv(e.p("out"), "--freeze", "--freeze-timeout=-inf"), USAGE,
         "argument --freeze-timeout: must be a finite number"),
    # A --freeze-timeout the thaw timer cannot keep: refused before the copy, not after it.
    Case("convert-freeze-timeout-too-short",
         lambda e: _convert_argv(e.p("out"), "--cutover", "--freeze-timeout", "5"), USAGE,
         "--freeze-timeout must be between 10 and 86400 seconds"),
    Case("sync-freeze-timeout-too-short",
         lambda e: _sync_argv(e.p("out"), "--freeze", "--freeze-timeout", "3"), USAGE,
         "--freeze-timeout must be between 10 and 86400 seconds"),
    Case("copy-bandwidth-limit-overflows",
         lambda e: _copy_argv(e.p("out"), "--bandwidth-limit", "9" * 400), USAGE,
         "argument --bandwidth-limit: not a finite rate"),
    Case("sync-bandwidth-limit-nan",
         lambda e: _sync_argv(e.p("out"), "--bandwidth-limit", "nan"), USAGE,
         "argument --bandwidth-limit: not a rate"),
    Case("copy-chunk-size-zero", lambda e: _copy_argv(e.p("out"), "--chunk-size", "0"), USAGE,
         "argument --chunk-size: must be at least 1"),
    Case("batch-verify-timeout-inf", lambda e: _batch(e.p("inf.toml")), USAGE,
         "verify_timeout: must be a positive number of seconds, got Infinity", lines=None),
    Case("batch-verify-timeout-nan", lambda e: _batch(e.p("nan.toml")), USAGE,
         "verify_timeout: must be a positive number of seconds, got NaN", lines=None),
    # Deeply nested TOML: a bound, not a RecursionError.
    Case("batch-deeply-nested-array", lambda e: _batch(e.p("deep.toml")), USAGE,
         "nested more than 32 deep (at line 1)", lines=None),
    Case("batch-deeply-nested-inline-table", lambda e: _batch(e.p("deep-table.toml")), USAGE,
         "nested more than 32 deep", lines=None),
    # register --inventory / --caps: not UTF-8, not JSON, nested too deep.
    Case("register-inventory-not-utf8",
         lambda e: ["register", "disk.qcow2", "--name", "x", "--inventory", e.p("latin1.json")],
         USAGE, "cannot be read: not UTF-8 text"),
    Case("register-caps-not-utf8",
         lambda e: ["register", "disk.qcow2", "--name", "x", "--caps", e.p("latin1.json")],
         USAGE, "guest caps"),
    Case("register-inventory-bad-json",
         lambda e: ["register", "disk.qcow2", "--name", "x", "--inventory", e.p("bad.json")],
         USAGE, "not valid JSON"),
    Case("register-caps-deep-json",
         lambda e: ["register", "disk.qcow2", "--name", "x", "--caps", e.p("deep.json")],
         USAGE, "nested too deeply"),
    Case("fix-inventory-not-utf8",
         lambda e: ["fix", "--inventory", e.p("latin1.json"), e.p("notes.txt")], USAGE,
         "cannot be read: not UTF-8 text"),
    # An SSH server that accepts and never finishes the handshake (15 s connect timeout).
    Case("inspect-banner-then-stall",
         lambda e: ["inspect", f"ssh://root@127.0.0.1:{e.banner_port}", "--known-hosts",
                    e.p("known_hosts")], FAILURE,
         "cannot reach 127.0.0.1 port {banner}: the SSH handshake did not finish within 15 s"),
    *_OUT_DIR_CASES,
    *[Case(f"manifest-{m.stem}", (lambda e, m=m: ["batch", e.p(m.name), "--dry-run"]), USAGE,
           "problem(s) in the manifest", lines=None)
      for m in sorted(BAD_MANIFESTS.glob("*.toml"))],
]


def _write_inputs(d: Path) -> None:
    """The files the rows point at; the watched state is taken after this."""
    (d / "empty.img").write_bytes(b"")
    (d / "notes.txt").write_text("not a disk\n" * 100)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "zero.qcow2"), "0"],
                   check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "disk.qcow2"), "1M"],
                   check=True)
    (d / "afile").write_text("a file, not a directory\n")
    (d / "ro").mkdir()
    (d / "latin1.json").write_bytes('{"hostname": "caf\xe9"}'.encode("latin-1"))
    (d / "bad.json").write_text('{"hostname": ')
    (d / "deep.json").write_text("[" * 200_000)
    server = '[[server]]\nname = "web01"\nsource = "ssh://root@127.0.0.1:1"\n'
    (d / "password.toml").write_text(
        f'[[server]]\nname = "web01"\nsource = "ssh://root:{SECRET}@web01"\n')
    (d / "inf.toml").write_text(server + "verify_timeout = inf\n")
    (d / "nan.toml").write_text(server + "verify_timeout = nan\n")
    (d / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n" + server)
    (d / "deep-table.toml").write_text("x = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n"
                                       + server)
    for kind, (where, _) in _OUT_DIR_BAD.items():     # relative: from the manifest's dir
        (d / f"out-{kind}.toml").write_text(f'output_dir = "{where}"\n' + server)
    for manifest in BAD_MANIFESTS.glob("*.toml"):
        shutil.copy(manifest, d / manifest.name)


def _state(d: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(d)): (p.lstat().st_mode, p.lstat().st_size,
                                    p.lstat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def stall_ports() -> Iterator[tuple[int, int]]:
    """Two loopback listeners: one accepts and never speaks, one sends a banner and stalls."""
    with stalling_listener() as silent, stalling_listener(BANNER) as banner:
        yield silent, banner


@dataclass
class Outcome:
    """One row's run: its own copy of the inputs, the state before and after, the process."""

    env: Env
    before: dict[str, tuple[int, int, int]]
    after: dict[str, tuple[int, int, int]] | None = None
    proc: subprocess.CompletedProcess[bytes] | None = None
    failure: str | None = None                 # the run itself failed (e.g. it hung)


def _run(case: Case, out: Outcome) -> None:
    env = out.env
    child_env = {**os.environ, "HOME": str(env.dir / ".home"), "PYTHONPATH": str(REPO),
                 "P2V_STATE_DIR": str(env.dir / "state")}
    child_env.pop("P2V_SUDO_PASSWORD", None)
    try:
        out.proc = subprocess.run([sys.executable, "-m", "p2v", *case.argv(env)],
                                  cwd=env.dir, capture_output=True, env=child_env,
                                  stdin=subprocess.DEVNULL, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        out.failure = f"no answer within {case.timeout:.0f} s (a hang)"
    out.after = _state(env.dir)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             stall_ports: tuple[int, int]) -> Iterator[dict[str, Outcome]]:
    """The selected rows run at once (each a subprocess mostly importing Python), each in
    its own dir."""
    # This module's rows only: other modules parametrize a "case" of their own.
    selected = {item.callspec.params["case"].id for item in request.session.items
                if isinstance(getattr(getattr(item, "callspec", None), "params", {}).get("case"),
                              Case)}
    cases = [case for case in CASES if case.id in selected]
    template = tmp_path_factory.mktemp("bad-input-template")
    _write_inputs(template)
    root = tmp_path_factory.mktemp("bad-input")
    result: dict[str, Outcome] = {}
    frozen: list[Path] = []
    for index, case in enumerate(cases):
        d = root / f"{index:03d}"
        shutil.copytree(template, d)
        (d / ".home").mkdir()               # no ~/.ssh/config or known_hosts of the runner
        immutable = subprocess.run(["chattr", "+i", str(d / "ro")], capture_output=True
                                   ).returncode == 0
        if immutable:
            frozen.append(d / "ro")
        if case.setup is not None:
            case.setup(d)                   # e.g. a torn journal; part of the "before" state
        env = Env(d, *stall_ports, immutable=immutable)
        result[case.id] = Outcome(env, _state(d))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(_run, case, result[case.id]) for case in cases]:
            future.result()
    yield result
    for path in frozen:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_its_exit_code_and_nothing_written(
        case: Case, outcomes: dict[str, Outcome]) -> None:
    out = outcomes[case.id]
    if case.needs_immutable and not out.env.immutable:
        pytest.skip("chattr +i is not supported here: no unwritable directory for root")
    assert out.failure is None and out.proc is not None, out.failure
    proc = out.proc
    err = proc.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert proc.returncode == case.code, err
    assert all(" error: " in line and line.startswith("p2v") for line in lines), lines
    if case.lines is None:
        assert lines and lines[-1].endswith(
            f"{len(lines) - 1} problem(s) in the manifest; nothing was run"), lines
    else:
        assert len(lines) == case.lines, lines
    says = case.says.format(banner=out.env.banner_port)
    assert any(says in line for line in lines), (says, lines)
    # No raw control character reaches the terminal (or a log reading stderr).
    assert all(c.isprintable() for line in lines for c in line), lines
    assert out.after == out.before
    if case.secret is not None:
        assert case.secret not in err and case.secret.encode() not in proc.stdout


# ------------------------------------------------------------------ the key-exchange stall
@pytest.mark.parametrize("which", ["silent", "banner"])
def test_a_stalled_handshake_is_a_timeout_naming_the_host(
        which: str, stall_ports: tuple[int, int]) -> None:
    """Accepts TCP, then never speaks SSH (or stops after the banner): a timeout naming the
    host, not paramiko's "No existing session" (its start_client() times out silently)."""
    port = stall_ports[0 if which == "silent" else 1]
    target = parse_source(f"ssh://root@127.0.0.1:{port}")
    with pytest.raises(SshUnreachable) as info:
        SshSource(target, SshOptions(connect_timeout=2, use_agent=False,
                                     known_hosts=Path("/nonexistent/known_hosts"))).connect()
    message = info.value.message
    handshake = f"cannot reach 127.0.0.1 port {port}: the SSH handshake did not finish within 2 s"
    if which == "banner":
        assert message.startswith(handshake)
    else:   # whichever of paramiko's banner timer and its start_client() timer fires first
        assert message.startswith(handshake) or message.startswith(
            f"cannot reach 127.0.0.1 port {port}: no SSH server answered (Error reading SSH "
            "protocol banner"), message
