"""Which libvirt a command talks to when no --connect is given: the one virsh would use.

An admin who set LIBVIRT_DEFAULT_URI, or `uri_default` in libvirt's client config, expects
p2v to register where `virsh list` looks. The order is virsh's: --connect, else
$VIRSH_DEFAULT_CONNECT_URI, else $LIBVIRT_DEFAULT_URI, else `uri_default` in
/etc/libvirt/libvirt.conf (root) or $XDG_CONFIG_HOME/libvirt/libvirt.conf (anyone else), else
qemu:///system for root and qemu:///session for anyone else. (uri_aliases are not expanded.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "LIBVIRT_DEFAULT_URI"
VIRSH_ENV = "VIRSH_DEFAULT_CONNECT_URI"     # virsh's own, deprecated but still set
SYSTEM_URI = "qemu:///system"
SESSION_URI = "qemu:///session"
# `uri_default = "..."` (or '...'), alone on its line or before a `;` or a comment.
_URI_DEFAULT = re.compile(r"""^\s*uri_default\s*=\s*(?:"([^"]*)"|'([^']*)')\s*(?:[;#].*)?$""",
                          re.M)


@dataclass(frozen=True)
class LibvirtUri:
    """A libvirt URI and where it came from, for the messages that name the target."""

    uri: str
    origin: str

    @property
    def chosen_by_config(self) -> bool:
        """Set by the environment or libvirt.conf, not on the command line nor libvirt's
        fallback: worth saying, as the user may not remember setting it."""
        return self.origin.startswith(("$", "uri_default"))


def client_config(env: Mapping[str, str] | None = None, root: bool | None = None) -> Path:
    """The libvirt client config file libvirt itself reads for this user."""
    env = os.environ if env is None else env
    if os.geteuid() == 0 if root is None else root:
        return Path("/etc/libvirt/libvirt.conf")
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "libvirt" / "libvirt.conf"


def read_uri_default(path: Path) -> str | None:
    """`uri_default = "..."` from a libvirt client config, or None (no file, no setting)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = _URI_DEFAULT.search(text)          # libvirt takes the first setting
    value = (match.group(1) or match.group(2)) if match else None
    return value or None


def resolve_uri(flag: str | None, env: Mapping[str, str] | None = None,
                config: Path | None = None, root: bool | None = None) -> LibvirtUri:
    """The URI to use, in libvirt's order (see the module docstring)."""
    if flag:
        return LibvirtUri(flag, "--connect")
    env = os.environ if env is None else env
    for name in (VIRSH_ENV, ENV):           # virsh reads its own variable first
        if env.get(name):
            return LibvirtUri(env[name], f"${name}")
    path = config if config is not None else client_config(env, root)
    value = read_uri_default(path)
    if value:
        return LibvirtUri(value, f"uri_default in {path}")
    is_root = os.geteuid() == 0 if root is None else root
    if is_root:
        return LibvirtUri(SYSTEM_URI, "libvirt's default for root")
    return LibvirtUri(SESSION_URI, "libvirt's default for a non-root user")


def default_uri() -> str:
    """The URI without --connect (for defaults of requests and job specs)."""
    return resolve_uri(None).uri


__all__ = ["ENV", "LibvirtUri", "client_config", "default_uri", "read_uri_default",
           "resolve_uri"]
