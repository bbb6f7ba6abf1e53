"""The batch manifest: a TOML file of defaults and servers, checked whole before anything runs.

Every problem is collected, not just the first, so a user fixes a 200-server manifest in one
pass; each is one line naming the file, the entry (1-based index and name) and the field.
The result is one `JobSpec` per server: the same value `p2v convert` builds from its flags.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2v.errors import (
    InputNotFound,
    ManifestInvalid,
    SourceSpecError,
    SshConfigRefused,
    UsageError,
)
from p2v.job import NAME_PATTERN, JobSpec, default_output_dir, image_source

# The libvirt domain name, which is also the stem of the job's work dir and image names.
NAME_RE = NAME_PATTERN
NAME_RULE = "use letters, digits and . _ + - (at most 63, starting with a letter or digit)"
_URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://\S*")
_MAPPING_RE = re.compile(r"(?:[^=\s]+=)?[^=\s]+")


_Table = dict[str, Any]      # a table as tomllib parses it: values not checked yet
_Values = dict[str, Any]     # checked values by manifest key, each of its field's type


class _Bad(Exception):
    """One field's problem; the caller adds where it is."""


# ------------------------------------------------------------------------- field checks
def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | int | float | bool) else _type_name(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_shown(value)}")
    if not value.strip():
        raise _Bad("must not be empty")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_shown(value)}")
    return value


def _positive(unit: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _Bad(f"must be a positive integer{unit}, got {_shown(value)}")
        return value
    return check


def _strings(check_item: Callable[[str], None]) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Bad(f"must be a list of strings, got {_shown(value)}")
        for item in value:
            if not isinstance(item, str):
                raise _Bad(f"must be a list of strings, got an item {_shown(item)}")
            check_item(item)
        if len(set(value)) != len(value):
            dup = next(v for v in value if value.count(v) > 1)
            raise _Bad(f"{json.dumps(dup)} is listed twice")
        return tuple(value)
    return check


def _disk(item: str) -> None:
    if not re.fullmatch(r"/dev/\S+", item):
        raise _Bad(f"{json.dumps(item)} is not a device path (want e.g. \"/dev/sda\")")


def _mapping(kind: str) -> Callable[[str], None]:
    def check(item: str) -> None:
        src, sep, target = item.rpartition("=" if "=" in item else ":")
        if not _MAPPING_RE.fullmatch(item) or (sep and not (src and target)):
            raise _Bad(f"{json.dumps(item)}: want \"SRC={kind}\" (SRC a NIC name or MAC; "
                       f"or \"SRC:{kind}\") or \"{kind}\"")
    return check


def _uri(value: Any) -> str:
    text = _string(value)
    if not _URI_RE.fullmatch(text):
        raise _Bad(f"{json.dumps(text)} is not a libvirt URI (want e.g. \"qemu:///system\")")
    return text


def _name(value: Any) -> str:
    text = _string(value)
    if not NAME_RE.fullmatch(text):
        raise _Bad(f"{json.dumps(text)} is not a valid name: {NAME_RULE}")
    return text


def _seconds(value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            or not math.isfinite(value)):   # TOML has inf and nan
        raise _Bad(f"must be a positive number of seconds, got {_shown(value)}")
    return float(value)


def _parallel(value: Any) -> int:
    from p2v.transfer.copy import MAX_PARALLEL

    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL:
        raise _Bad(f"must be 1 to {MAX_PARALLEL} (disks copied at a time), got {_shown(value)}")
    return value


def _rate(value: Any) -> float:
    """A rate as --bandwidth-limit takes it ("50M", "800K") or bytes/s as a number."""
    from p2v.ratelimit import parse_rate

    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise _Bad(f"must be a rate such as \"50M\" (MiB/s) or bytes/s, got {_shown(value)}")
    try:
        rate = parse_rate(text)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    if not math.isfinite(rate):
        raise _Bad(f"must be a finite rate, got {_shown(value)}")
    return rate


def _path(value: Any) -> Path:
    return Path(_string(value)).expanduser()


def _freeze(value: Any) -> str:
    if value not in ("strict", "best-effort"):
        raise _Bad(f"must be \"strict\" or \"best-effort\", got {_shown(value)}")
    return str(value)


def _freeze_timeout(value: Any) -> float:
    from p2v.source.freeze import MAX_FREEZE_TIMEOUT, MIN_FREEZE_TIMEOUT

    seconds = _seconds(value)
    if not MIN_FREEZE_TIMEOUT <= seconds <= MAX_FREEZE_TIMEOUT:
        raise _Bad(f"must be between {MIN_FREEZE_TIMEOUT:.0f} and {MAX_FREEZE_TIMEOUT:.0f} "
                   f"seconds, got {_shown(value)}")
    return seconds


# key -> (JobSpec field, check). Paths are made absolute against the manifest's directory.
_SERVER_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "source": ("source", _string),
    "name": ("name", _name),
    "disks": ("disks", _strings(_disk)),
    "memory": ("memory_mib", _positive(" (MiB)")),
    "vcpus": ("vcpus", _positive("")),
    "networks": ("networks", _strings(_mapping("NET"))),
    "bridges": ("bridges", _strings(_mapping("BRIDGE"))),
    "pool": ("pool", _string),
    "connect": ("connect", _uri),
    "start": ("start", _bool),
    "verify": ("verify", _bool),
    "verify_timeout": ("verify_timeout", _seconds),
    "new_macs": ("new_macs", _bool),
    "full": ("full", _bool),
    "compress": ("compress", _bool),
    "identity": ("identity", _path),
    "known_hosts": ("known_hosts", _path),
    "accept_new_host_key": ("accept_new_host_key", _bool),
    "ssh_config": ("ssh_config", _path),
    "parallel": ("parallel", _parallel),
    "bandwidth_limit": ("bandwidth_limit", _rate),
    "virtio_win": ("virtio_win", _path),
    "cutover": ("cutover", _bool),
    "freeze": ("freeze", _freeze),
    "freeze_timeout": ("freeze_timeout", _freeze_timeout),
    "before_final": ("before_final", _string),
    "after_final": ("after_final", _string),
    "image": ("images", _strings(lambda item: None)),
    "in_place": ("in_place", _bool),
}
_PER_SERVER_ONLY = ("source", "name", "image")
# What only a live source has: refused in an entry converted from images.
_LIVE_ONLY = ("disks", "cutover", "new_macs")
_DEFAULT_FIELDS = {k: v for k, v in _SERVER_FIELDS.items() if k not in _PER_SERVER_ONLY}
_BATCH_KEYS = ("output_dir", "connect")       # top level or [defaults]
# bandwidth_limit at the top level: the batch's own, shared by all its jobs on a host (in
# [defaults] or a [[server]] it is each job's own).
_TOP_KEYS = ("output_dir", "connect", "jobs", "bandwidth_limit", "defaults", "server", "hosts")
_HOST_KEYS = ("output_dir", "connect")
_PATH_KEYS = ("identity", "known_hosts", "ssh_config", "virtio_win")
# Only with cutover = true: the final pass is where they run.
_CUTOVER_ONLY = ("before_final", "after_final")


@dataclass(frozen=True)
class HostSettings:
    """A conversion host's own output dir and libvirt URI ([hosts."WORKER"]; None: not set)."""

    output_dir: Path | None = None
    connect: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: where the batch writes, how wide it may run, one JobSpec per server."""

    path: Path
    output_dir: Path
    jobs: int | None
    specs: tuple[JobSpec, ...]
    # The top-level bandwidth_limit: bytes/s shared by every job of the batch on one host.
    bandwidth_limit: float | None = None
    # `p2v batch --scheduler`: per conversion host (a Dask worker's name, address or host).
    hosts: dict[str, HostSettings] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """Where the batch keeps its ledger, lock and report (see docs/user/batch.md)."""
        return self.output_dir / ".p2v-batch"


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: list[str] = []

    def add(self, where: str, key: str | None, message: str) -> None:
        parts = [self.file] + [p for p in (where, key) if p] + [message]
        self.lines.append(": ".join(parts))


def _unknown(key: str, allowed: tuple[str, ...] | dict[str, Any], where_hint: str) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
    return f"unknown key {where_hint}; {hint}"


def _label(index: int, raw: _Table) -> str:
    name = raw.get("name")
    shown = f" {json.dumps(name)}" if isinstance(name, str) else ""
    return f"server[{index}]{shown}"


def load_manifest(path: Path) -> Manifest:
    """Read and check MANIFEST; raise ManifestInvalid listing every problem found."""
    file = str(path)
    if not path.is_file():
        raise InputNotFound(what="manifest", path=file)
    try:
        text = path.read_text(encoding="utf-8")
        line = _too_deep(text)
        if line is not None:
            raise ManifestInvalid(file, [f"{file}: arrays or inline tables nested more than "
                                         f"{MAX_NESTING} deep (at line {line})"])
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ManifestInvalid(file, [f"{file}: not UTF-8 text ({exc.reason} at byte "
                                     f"{exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestInvalid(file, [f"{file}: not valid TOML: {exc}"]) from None
    except RecursionError:      # the pre-scan is only a bound: never a traceback
        raise ManifestInvalid(file, [f"{file}: nested too deeply to be parsed"]) from None
    return check_manifest(data, path)


# tomllib recurses once per nesting level: a crafted file would exhaust the stack.
MAX_NESTING = 32
_QUOTES = ('"""', "'''", '"', "'")


def _too_deep(text: str) -> int | None:
    """The line where [ and { nest deeper than MAX_NESTING outside strings, or None."""
    depth, line, i, quote = 0, 1, 0, ""
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
        if quote:
            if c == "\\" and quote[0] == '"':
                i += 2
                continue
            if text.startswith(quote, i):
                i, quote = i + len(quote), ""
                continue
        elif c == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c in "\"'":
            quote = next(q for q in _QUOTES if text.startswith(q, i))
            i += len(quote)
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def check_manifest(data: _Table, path: Path) -> Manifest:
    """Check parsed manifest DATA (read from PATH); relative paths are taken from PATH's dir."""
    problems = _Problems(str(path))
    base = path.resolve().parent
    _check_top_keys(data, problems)
    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        problems.add("", "defaults", f"must be a table ([defaults]), got "
                                     f"{_type_name(defaults_raw)}")
        defaults_raw = {}
    output_dir, connect = _batch_settings(data, defaults_raw, base, problems)
    jobs: int | None = None
    if "jobs" in data:
        try:
            jobs = _positive("")(data["jobs"])
        except _Bad as exc:
            problems.add("", "jobs", str(exc))
    shared: float | None = None
    if "bandwidth_limit" in data:
        try:
            shared = _rate(data["bandwidth_limit"])
        except _Bad as exc:
            problems.add("", "bandwidth_limit", str(exc))
    defaults = _check_defaults(defaults_raw, problems)
    specs = _check_servers(_server_tables(data, problems), defaults, connect, base, output_dir,
                           problems)
    hosts = _check_hosts(data.get("hosts", {}), problems)
    if problems.lines:
        raise ManifestInvalid(str(path), problems.lines)
    assert output_dir is not None
    return Manifest(path=path, output_dir=output_dir, jobs=jobs, specs=tuple(specs),
                    bandwidth_limit=shared, hosts=hosts)


def _check_top_keys(data: _Table, problems: _Problems) -> None:
    for key in data:
        if key not in _TOP_KEYS:
            if key in _SERVER_FIELDS:
                problems.add("", key, "belongs in [defaults] or a [[server]] entry, not at "
                                      "the top level")
            else:
                problems.add("", key, _unknown(key, _TOP_KEYS, "at the top level"))


def _batch_settings(data: _Table, defaults_raw: _Table, base: Path,
                    problems: _Problems) -> tuple[Path | None, str]:
    """output_dir and connect for the whole batch: at the top level or in [defaults], not both.

    The output dir is None when the one given is bad (the problem is recorded)."""
    batch_values: dict[str, Any] = {}
    for key in _BATCH_KEYS:
        if key in data and key in defaults_raw:
            problems.add("", key, "is set both at the top level and in [defaults]; keep one")
        if key in data:
            batch_values[key] = (data[key], "")
        elif key in defaults_raw:
            batch_values[key] = (defaults_raw[key], "[defaults]")

    output_dir: Path | None = None
    if "output_dir" in batch_values:
        value, where = batch_values["output_dir"]
        try:
            output_dir = _absolute(_path(value), base)
        except _Bad as exc:
            problems.add(where, "output_dir", str(exc))
    else:
        output_dir = default_output_dir()
    connect = ""          # none given: the URI virsh would use where the job runs
    if "connect" in batch_values:
        value, where = batch_values["connect"]
        try:
            connect = _uri(value)
        except _Bad as exc:
            problems.add(where, "connect", str(exc))
    return output_dir, connect


def _check_defaults(defaults_raw: _Table, problems: _Problems) -> _Values:
    """The [defaults] every server inherits, checked (the batch-wide keys left out)."""
    defaults: _Values = {}
    for key, value in defaults_raw.items():
        if key in _BATCH_KEYS:
            continue
        if key in _PER_SERVER_ONLY:
            problems.add("[defaults]", key, "differs per server: set it in each [[server]]")
            continue
        if key not in _DEFAULT_FIELDS:
            problems.add("[defaults]", key, _unknown(key, _DEFAULT_FIELDS, "in [defaults]"))
            continue
        check = _DEFAULT_FIELDS[key][1]
        try:
            defaults[key] = check(value)
        except _Bad as exc:
            problems.add("[defaults]", key, str(exc))
    return defaults


def _server_tables(data: _Table, problems: _Problems) -> list[_Table]:
    servers = data.get("server", [])
    if not isinstance(servers, list) or not all(isinstance(s, dict) for s in servers):
        problems.add("", "server", "must be an array of tables: one [[server]] entry per server")
        return []
    if not servers and "server" not in data:
        problems.add("", "server", "no [[server]] entries; add one per server to convert")
    elif not servers:
        problems.add("", "server", "is empty; add one [[server]] entry per server to convert")
    return servers


def _check_servers(servers: list[_Table], defaults: _Values, connect: str,
                   base: Path, output_dir: Path | None, problems: _Problems) -> list[JobSpec]:
    """Each [[server]] entry checked, and no two sharing a name or a source."""
    specs: list[JobSpec] = []
    names: dict[str, str] = {}
    sources: dict[str, str] = {}
    images: dict[Path, str] = {}
    for index, raw in enumerate(servers, start=1):
        where = _label(index, raw)
        spec = _check_server(raw, where, defaults, connect, base, output_dir, problems)
        name = raw.get("name")
        if isinstance(name, str) and NAME_RE.fullmatch(name):
            if name in names:
                problems.add(where, "name", f"{json.dumps(name)} is already the name of "
                                            f"{names[name]}; names must be unique")
            else:
                names[name] = where
        source = raw.get("source")
        if isinstance(source, str) and source.strip():
            if source in sources:
                from p2v.source.ssh import redact_source

                problems.add(where, "source", f"{json.dumps(redact_source(source))} is already "
                                              f"the source of {sources[source]}")
            else:
                sources[source] = where
        listed = raw.get("image")
        for item in listed if isinstance(listed, list) else ():
            if not isinstance(item, str) or not item.strip():
                continue
            image = _absolute(Path(item).expanduser(), base)
            if image in images and images[image] != where:
                problems.add(where, "image", f"{image} is already a disk of {images[image]}")
            images.setdefault(image, where)
        if spec is not None:
            specs.append(spec)
    return specs


def _check_hosts(raw: Any, problems: _Problems) -> dict[str, HostSettings]:
    """[hosts."WORKER"] tables: each conversion host's output_dir (absolute) and connect."""
    if not isinstance(raw, dict):
        problems.add("", "hosts", f"must be a table of tables ([hosts.\"WORKER\"]), got "
                                  f"{_type_name(raw)}")
        return {}
    hosts: dict[str, HostSettings] = {}
    for host, table in raw.items():
        where = f"[hosts.{json.dumps(host)}]"
        if not isinstance(table, dict):
            problems.add(where, None, f"must be a table with output_dir and/or connect, got "
                                      f"{_type_name(table)}")
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            try:
                if key == "output_dir":
                    path = _path(value)
                    if not path.is_absolute():
                        raise _Bad(f"{json.dumps(value)} must be an absolute path (it is a "
                                   "path on that host)")
                    values[key] = path
                elif key == "connect":
                    values[key] = _uri(value)
                else:
                    problems.add(where, key, _unknown(key, _HOST_KEYS, "in [hosts]"))
            except _Bad as exc:
                problems.add(where, key, str(exc))
        hosts[host] = HostSettings(**values)
    return hosts


def _absolute(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _check_server(raw: _Table, where: str, defaults: _Values, connect: str,
                  base: Path, output_dir: Path | None, problems: _Problems) -> JobSpec | None:
    """One [[server]] entry merged over the defaults; None when it has a problem."""
    before = len(problems.lines)
    values = dict(defaults)
    for key, value in raw.items():
        if key == "output_dir":
            problems.add(where, key, "is set for the whole batch: put it at the top level or "
                                     "in [defaults]")
            continue
        if key not in _SERVER_FIELDS:
            problems.add(where, key, _unknown(key, _SERVER_FIELDS, "in [[server]]"))
            continue
        try:
            values[key] = _SERVER_FIELDS[key][1](value)
        except _Bad as exc:
            problems.add(where, key, str(exc))
    if "name" not in raw:
        problems.add(where, "name", "missing (required in every [[server]])")
    if "source" not in raw and "image" not in raw:
        problems.add(where, "source", "missing (required in every [[server]]), unless image "
                                      "lists disk images to convert instead")
    for key in _PATH_KEYS:
        if key in values:
            values[key] = _absolute(values[key], base)
    config_ok = _check_files(values, raw, where, problems)
    _check_cutover(values, raw, where, problems)
    if "image" in values:
        values["image"] = tuple(_absolute(Path(p).expanduser(), base) for p in values["image"])
        _check_image_entry(values, raw, where, problems)
    elif "source" in values and config_ok:
        _check_source(values, where, problems)
    if values.get("in_place") and "image" not in values:
        problems.add(where, "in_place", "only with image (the images used where they are)")
    if len(problems.lines) != before or output_dir is None:
        return None
    kwargs = {_SERVER_FIELDS[k][0]: v for k, v in values.items()}
    kwargs.setdefault("connect", connect)
    if "images" in kwargs:
        kwargs["source"] = image_source(kwargs["images"])
    return JobSpec(output_dir=output_dir, **kwargs)


def _check_image_entry(values: _Values, raw: _Table, where: str, problems: _Problems) -> None:
    """An entry from existing images: not also a source, nothing only a live source has,
    each image there (its format and locks are the job's import stage to judge)."""
    from p2v.image_import import mapping_problem

    if "source" in raw:
        problems.add(where, "image", "and source are both set: give one (image converts the "
                                     "listed disk images, source a live server)")
    if not values["image"]:
        problems.add(where, "image", "is empty: list the guest's disk images, boot disk first")
    for key in _LIVE_ONLY:
        if values.get(key):
            problems.add(where, key, "is for a live source, not image")
    problem = mapping_problem(values.get("networks", ()), values.get("bridges", ()),
                              ("networks", "bridges"))
    if problem:
        problems.add(where, *problem)
    for path in values["image"]:
        if not path.is_file():
            what = "no such file" if not path.exists() else "not a regular file"
            problems.add(where, "image", f"{what}: {path}")


def _check_files(values: _Values, raw: _Table, where: str,
                 problems: _Problems) -> bool:
    """Report missing files; False when the ssh_config the source is resolved with is missing.

    A path inherited from [defaults] is reported once, at [defaults], not once per server.
    """
    config_ok = True

    def add(key: str, message: str) -> None:
        at = where if key in raw else "[defaults]"
        line = ": ".join([problems.file, at, key, message])
        if line not in problems.lines:
            problems.lines.append(line)

    for key in ("identity", "ssh_config"):
        path = values.get(key)
        if path is not None and not path.is_file():
            add(key, f"no such file: {path}")
            config_ok = config_ok and key != "ssh_config"
    drivers = values.get("virtio_win")
    if drivers is not None:
        from p2v.fix.windows.virtio_win import VirtioWinError, check_virtio_win

        try:
            check_virtio_win(drivers)
        except VirtioWinError as exc:
            add("virtio_win", f"{drivers}: {exc.fields['detail']}")
    known = values.get("known_hosts")
    if known is not None and not known.is_file() and not values.get("accept_new_host_key"):
        add("known_hosts", f"no such file: {known} (set accept_new_host_key = true to create "
                           "it with the servers' keys)")
    return config_ok


def _check_cutover(values: _Values, raw: _Table, where: str, problems: _Problems) -> None:
    """before_final/after_final run at the cutover's final pass: without cutover, refused."""
    if values.get("cutover"):
        return
    for key in _CUTOVER_ONLY:
        if key in values:
            inherited = "" if key in raw else " (set in [defaults])"
            problems.add(where, key, f"needs cutover = true{inherited}: the hook runs at the "
                                     "cutover's final pass")


def _check_source(values: _Values, where: str, problems: _Problems) -> None:
    # The same parser p2v convert uses, with the entry's ssh_config: an alias must resolve.
    from p2v.source.ssh import parse_source, redact_source

    try:
        parse_source(values["source"], ssh_config=values.get("ssh_config"))
    except SshConfigRefused as exc:
        problems.add(where, "source", exc.message)
    except SourceSpecError as exc:
        shown = json.dumps(redact_source(values["source"]))     # never the password itself
        problems.add(where, "source", f"{shown}: {exc.fields['detail']} "
                                      "(want ssh://[user@]host[:port] or an ssh_config Host "
                                      "alias)")
    except UsageError as exc:
        problems.add(where, "source", exc.message)
