"""The SSH connection to a source server: the only module that imports paramiko.

Everything p2v does on a source goes through `SshSource`: commands are argv lists quoted
with shlex.join (the remote side runs them through the login user's shell), host keys are
checked strictly against known_hosts, and a non-root login runs each command under sudo with
the password sent on stdin, never on a command line and never logged.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import ipaddress
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import paramiko

from p2v.errors import (
    HostKeyChanged,
    HostKeyUnknown,
    P2VError,
    RemoteCommandFailed,
    SourceSpecError,
    SshAuthFailed,
    SshFailed,
    SshUnreachable,
    SudoFailed,
)
from p2v.source import sshconfig
from p2v.source.protocol import RemoteResult
from p2v.source.proxy import ProxyCommand
from p2v.source.sshchild import PARAMIKO, Hop, LoginRefused, SshChild, data_channel_setting

log = logging.getLogger(__name__)

SUDO_PASSWORD_ENV = "P2V_SUDO_PASSWORD"
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
CONNECT_TIMEOUT = 15.0
# A ProxyJump chain longer than this is most likely a loop in ssh_config.
_MAX_JUMPS = 8


# ---------------------------------------------------------------------------------------------
# SOURCE parsing


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in, after ssh_config was applied (p2v.source.sshconfig).

    `name` is what the user typed (URL host or Host alias); `host` the address to connect to
    (ssh_config HostName); `jump` the ProxyJump hops, outermost first (the first may have a
    `proxy_command`: the command SSH to it is spoken through).
    """

    name: str
    host: str
    port: int = 22
    user: str = "root"
    identity_files: tuple[Path, ...] = ()
    jump: tuple[SshTarget, ...] = ()
    known_hosts_files: tuple[Path, ...] = ()
    global_known_hosts_files: tuple[Path, ...] | None = None    # None: the system file
    proxy_command: str | None = None
    identities_only: bool = False       # the listed (or default) key files, no agent keys
    use_agent: bool = True              # False: IdentityAgent none
    connect_timeout: float | None = None
    accept_new_host_key: bool = False   # StrictHostKeyChecking accept-new

    @property
    def known_hosts_pattern(self) -> str:
        """How known_hosts names this server: host, or [host]:port off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}" + ("" if self.port == 22 else f":{self.port}")


class _RawConfig(paramiko.SSHConfig):
    """paramiko's ssh_config reader, its token expansion left to p2v.source.sshconfig
    (which expands as OpenSSH does); a Match exec command is still expanded."""

    def _allowed_tokens(self, key: str) -> list[str]:
        return list(super()._allowed_tokens(key)) if key == "match-exec" else []


def _paramiko_lookup(text: str, alias: str) -> dict[str, list[str]]:
    """Every option a config text sets for `alias`, by paramiko (no `ssh` installed)."""
    try:
        entry = _RawConfig.from_text(text).lookup(alias)
    except (paramiko.SSHException, ValueError, ImportError) as exc:
        raise SourceSpecError(source=alias, detail=f"unreadable ssh config: {exc}") from None
    return {key: (list(value) if isinstance(value, list) else [str(value)])
            for key, value in entry.items() if value is not None}


def _port(text: str, source: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise _bad_source(source, f"port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise _bad_source(source, f"port {port} is out of range")
    return port


def redact_source(source: str) -> str:
    """SOURCE with any password in it replaced by ***: safe to show in a message or log."""
    scheme, sep, rest = source.rpartition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return source
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def _bad_source(source: str, detail: str) -> SourceSpecError:
    return SourceSpecError(source=redact_source(source), detail=detail)


def _host_problem(host: str) -> str | None:
    """Why `host` cannot be connected to (IDNA-invalid, spaces, a leading -), or None."""
    if not host or any(c.isspace() for c in host) or host.startswith("-"):
        return f"not a host name: {host!r}"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError:
        return (f"not a valid host name: {host!r} (an empty label, a label over 63 "
                "characters, or a character DNS cannot carry)")
    return None


def _split_source(source: str) -> tuple[str | None, str, int | None]:
    """(user, host, port) of `ssh://[user@]host[:port]`, `[user@]host[:port]` or an alias."""
    text = source.strip()
    if not text:
        raise _bad_source(source, "it is empty")
    # Before urlsplit, which silently drops tabs and newlines (another host than typed).
    if any(not c.isprintable() for c in text):
        raise _bad_source(source, "it contains control characters")
    user, host, port = _split_source_text(source, text)
    if user is not None and ":" in user:
        raise _bad_source(source, "passwords do not belong in SOURCE; use keys or agent")
    problem = _host_problem(host)
    if problem is not None:
        raise _bad_source(source, problem)
    return user, host, port


def _split_source_text(source: str, text: str) -> tuple[str | None, str, int | None]:
    if "://" in text:
        url = urlsplit(text)
        if url.scheme != "ssh":
            raise _bad_source(source, f"scheme {url.scheme!r} is not ssh")
        if url.path not in ("", "/") or url.query or url.fragment:
            raise _bad_source(source, "a source has no path or query")
        if url.password is not None:
            raise _bad_source(source, "passwords do not belong in SOURCE; use keys or agent")
        try:
            port = url.port
        except ValueError as exc:
            raise _bad_source(source, str(exc)) from None
        if not url.hostname:
            raise _bad_source(source, "no host")
        return url.username or None, url.hostname, port
    user: str | None = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
        if not user:
            raise _bad_source(source, "empty user name")
    port_value: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise _bad_source(source, "unbalanced [")
        if rest:
            if not rest.startswith(":"):
                raise _bad_source(source, f"junk after ]: {rest!r}")
            port_value = _port(rest[1:], source)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port_value = _port(port_text, source)
    else:
        host = text
    return user, host, port_value


def parse_source(
    source: str,
    *,
    ssh_config: Path | None = None,
    identity: Path | None = None,
    _depth: int = 0,
) -> SshTarget:
    """Turn SOURCE into an SshTarget, applying ~/.ssh/config (or `ssh_config`) as OpenSSH
    reads it; an option p2v cannot honour is refused (SshConfigRefused).

    Values in SOURCE win over ssh_config (as with OpenSSH); `identity` replaces the
    IdentityFile list. The login user defaults to root: p2v reads block devices.
    """
    if _depth > _MAX_JUMPS:
        raise _bad_source(source, "ProxyJump chain too long (a loop?)")
    user, name, port = _split_source(source)
    found = sshconfig.resolve(name, user=user, port=port, config=ssh_config,
                              fallback=_paramiko_lookup)
    problem = _host_problem(found.host) if found.host != name.lower() else None
    if problem is not None:
        raise _bad_source(source, f"its ssh_config HostName is {problem}")
    jumps: list[SshTarget] = []
    for index, hop_text in enumerate(found.proxy_jump):
        hop = parse_source(hop_text, ssh_config=ssh_config, _depth=_depth + 1)
        if index == 0:
            # The first hop is reached as its own config says (its jumps, its proxy);
            # the later ones through the chain, as `ssh -J` does.
            jumps.extend(hop.jump)
            jumps.append(replace(hop, jump=()))
        else:
            jumps.append(replace(hop, jump=(), proxy_command=None))
    return SshTarget(
        name=name, host=found.host, port=found.port, user=found.user,
        identity_files=(identity,) if identity is not None else found.identity_files,
        jump=tuple(jumps), known_hosts_files=found.known_hosts_files,
        global_known_hosts_files=found.global_known_hosts_files,
        proxy_command=None if jumps else found.proxy_command,
        identities_only=found.identities_only, use_agent=found.use_agent,
        connect_timeout=found.connect_timeout, accept_new_host_key=found.accept_new_host_key)


# ---------------------------------------------------------------------------------------------
# Host keys


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it: SHA256:base64, unpadded."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _StrictPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host (naming its fingerprint), or record it when allowed to."""

    def __init__(self, target: SshTarget, known_hosts: Path, accept_new: bool) -> None:
        self.target = target
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise HostKeyUnknown(host=self.target.known_hosts_pattern,
                                 key_type=key.get_name(), fingerprint=fingerprint(key),
                                 known_hosts=self.known_hosts)
        # Appended, not rewritten: paramiko's save() would drop comments and markers.
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.known_hosts.open("a") as out:
            out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning("recorded the host key of %s (%s %s) in %s", hostname, key.get_name(),
                    fingerprint(key), self.known_hosts)


# ---------------------------------------------------------------------------------------------
# The connection


def _transport(timeout: float, sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A transport whose own handshake timeout (15 s by default) outlasts ours, so the
    timeout that ends a stalled handshake is the one p2v reports."""
    transport = paramiko.Transport(sock, **kwargs)
    transport.handshake_timeout = timeout + 5.0
    return transport


def _handshake_timeout(target: SshTarget, timeout: float) -> SshUnreachable:
    return SshUnreachable(host=target.host, port=target.port,
                          detail=f"the SSH handshake did not finish within {timeout:.0f} s "
                                 "(the port accepts connections, but no SSH banner and key "
                                 "exchange followed)")


def _kex_unfinished(client: paramiko.SSHClient) -> bool:
    """The server sent its banner but the key exchange is still pending (timed out)."""
    transport = client.get_transport()
    return (transport is not None and transport.is_active()
            and not getattr(transport, "initial_kex_done", True))


def _tail(text: str, lines: int = 3) -> str:
    rest = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(rest[-lines:]) or "(no output)"


@dataclass
class SshOptions:
    """How to connect: the CLI's --identity, --known-hosts, --accept-new-host-key, sudo."""

    identity: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    ssh_config: Path | None = None
    use_agent: bool = True
    connect_timeout: float = CONNECT_TIMEOUT
    # What carries stream(): "paramiko", "openssh" (an ssh child, paramiko where it cannot
    # log in) or "auto" (the same, for now); None: $P2V_DATA_CHANNEL, else paramiko.
    data_channel: str | None = None
    # Asked for the sudo password when P2V_SUDO_PASSWORD is unset; None: fail instead.
    sudo_prompt: Callable[[str], str] | None = field(default=None, repr=False)


def terminal_sudo_prompt(question: str) -> str:
    """A sudo password prompt on the terminal (no echo)."""
    return getpass.getpass(question)


class SshSource:
    """A logged-in SSH session to the source (a `protocol.Source`); use as a context manager.

    `run(argv)` runs a command and returns its output; `stream(argv)` yields its stdout as
    a binary file for long transfers. Both run as root: directly for a root login, else
    through sudo.
    """

    def __init__(self, target: SshTarget, options: SshOptions | None = None) -> None:
        self.target = target
        self.options = options or SshOptions()
        self._clients: list[paramiko.SSHClient] = []
        self._proxies: list[ProxyCommand] = []
        self._client: paramiko.SSHClient | None = None
        self._sudo: str | None = None       # "none" (root), "nopasswd" or "password"
        self._password: str | None = None
        self._sudo_lock = threading.Lock()
        self._child: SshChild | None = None
        self._channel: str | None = None    # what carries stream(), decided once
        self._channel_lock = threading.Lock()

    # -- connecting -------------------------------------------------------------------------
    @classmethod
    def open(cls, source: str, options: SshOptions | None = None) -> SshSource:
        options = options or SshOptions()
        target = parse_source(source, ssh_config=options.ssh_config, identity=options.identity)
        return cls(target, options).connect()

    def _known_hosts(self, target: SshTarget) -> Path:
        if self.options.known_hosts is not None:
            return self.options.known_hosts
        if target.known_hosts_files:
            return target.known_hosts_files[0]
        return DEFAULT_KNOWN_HOSTS.expanduser()

    def _trust(self, client: paramiko.SSHClient, target: SshTarget, known_hosts: Path) -> None:
        """The host keys `client` accepts: known_hosts (and the system's file unless
        --known-hosts replaced both); an unknown one is refused or recorded (_StrictPolicy)."""
        if self.options.known_hosts is None:
            # The system-wide files count too, as with OpenSSH, and any further
            # UserKnownHostsFile; read, never written.
            system = target.global_known_hosts_files
            for path in ((_SYSTEM_KNOWN_HOSTS,) if system is None else system) + tuple(
                    p for p in target.known_hosts_files if p != known_hosts):
                if path.is_file():
                    client.load_system_host_keys(str(path))
        if known_hosts.is_file():
            try:
                client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise SshFailed(host=target.host,
                                detail=f"cannot read known_hosts {known_hosts}: {exc}") from None
        accept_new = self.options.accept_new_host_key or target.accept_new_host_key
        client.set_missing_host_key_policy(_StrictPolicy(target, known_hosts, accept_new))

    def _keys(self, target: SshTarget) -> tuple[list[str] | None, bool, bool]:
        """How `target` authenticates: (its key files, whether the agent may add its keys,
        whether the default ~/.ssh/id_* keys may); IdentitiesOnly and IdentityAgent none
        keep the agent out."""
        identities = [str(p) for p in target.identity_files if p.is_file()]
        missing = [str(p) for p in target.identity_files if not p.is_file()]
        if self.options.identity is not None and missing:
            raise SshAuthFailed(user=target.user, host=target.host,
                                detail=f"identity file {missing[0]} not found")
        agent = (self.options.use_agent and self.options.identity is None
                 and target.use_agent and not target.identities_only)
        return identities or None, agent, not identities

    def _connect_one(self, target: SshTarget, sock: Any | None) -> paramiko.SSHClient:
        """Log in to one hop (over `sock`: through the previous hop); fails as an SSH error."""
        known_hosts = self._known_hosts(target)
        client = paramiko.SSHClient()
        self._clients.append(client)
        self._trust(client, target, known_hosts)
        key_files, agent, default_keys = self._keys(target)
        timeout = target.connect_timeout or self.options.connect_timeout
        started = time.monotonic()
        try:
            client.connect(
                target.host, port=target.port, username=target.user, key_filename=key_files,
                allow_agent=agent, look_for_keys=default_keys,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                sock=sock, transport_factory=partial(_transport, timeout),
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(host=target.known_hosts_pattern, key_type=exc.key.get_name(),
                                 fingerprint=fingerprint(exc.key), known_hosts=known_hosts,
                                 pattern=target.known_hosts_pattern) from None
        except paramiko.AuthenticationException as exc:
            raise SshAuthFailed(user=target.user, host=target.host,
                                detail=(str(exc) or type(exc).__name__).rstrip(".")
                                ) from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            detail = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
            raise SshUnreachable(host=target.host, port=target.port, detail=detail) from None
        except TimeoutError:
            raise SshUnreachable(host=target.host, port=target.port,
                                 detail=f"no answer within {timeout:.0f} s") from None
        except socket.gaierror as exc:
            raise SshUnreachable(host=target.host, port=target.port,
                                 detail=f"unknown host ({exc.strerror})") from None
        except OSError as exc:
            raise SshUnreachable(host=target.host, port=target.port,
                                 detail=exc.strerror or str(exc)) from None
        except EOFError:
            # paramiko's own handshake timeout (15 s) fires in the transport's thread and
            # ends it with EOFError, which start_client() re-raises: under load it can come
            # before start_client's timeout. Early, it is a server that hung up.
            if time.monotonic() - started < timeout - 1.0:
                raise SshUnreachable(host=target.host, port=target.port,
                                     detail="the server closed the connection during the "
                                            "SSH handshake") from None
            raise _handshake_timeout(target, timeout) from None
        except paramiko.SSHException as exc:
            if _kex_unfinished(client):
                # start_client() returns silently when its timeout passes mid key exchange;
                # paramiko then fails later with a misleading "No existing session".
                raise _handshake_timeout(target, timeout) from None
            # e.g. "Error reading SSH protocol banner": something that is not sshd answered.
            raise SshUnreachable(host=target.host, port=target.port,
                                 detail=f"no SSH server answered ({exc})") from None
        return client

    def _first_hop(self, hop: SshTarget) -> paramiko.SSHClient:
        """Log in to the outermost hop: over TCP, or through its ProxyCommand (a command
        that failed is named, with its stderr)."""
        if hop.proxy_command is None:
            return self._connect_one(hop, None)
        proxy = ProxyCommand(hop.proxy_command)
        self._proxies.append(proxy)
        try:
            return self._connect_one(hop, proxy.sock)
        except (SshUnreachable, SshFailed):
            why = proxy.failure()
            if why is None:
                raise
            raise SshUnreachable(host=hop.host, port=hop.port, detail=why) from None

    def connect(self) -> SshSource:
        """Log in (through the ProxyCommand and ProxyJump hops, if any); raises one of the
        SSH errors."""
        try:
            sock: Any | None = None
            hops = [*self.target.jump, self.target]
            for index, hop in enumerate(hops):
                client = self._first_hop(hop) if index == 0 else self._connect_one(hop, sock)
                if index + 1 < len(hops):
                    nxt = hops[index + 1]
                    transport = client.get_transport()
                    assert transport is not None
                    try:
                        sock = transport.open_channel("direct-tcpip", (nxt.host, nxt.port),
                                                      ("127.0.0.1", 0))
                    except paramiko.ChannelException as exc:
                        raise SshUnreachable(host=nxt.host, port=nxt.port,
                                             detail=f"jump host {hop.host} could not connect: "
                                                    f"{exc.text}") from None
                else:
                    self._client = client
        except BaseException:
            self.close()
            raise
        log.info("connected to %s", self.target)
        return self

    def close(self) -> None:
        for client in reversed(self._clients):
            client.close()
        self._clients.clear()
        for proxy in self._proxies:
            proxy.close()
        self._proxies.clear()
        self._client = None
        if self._child is not None:
            self._child.close()
        self._child = None
        self._channel = None

    def host_key(self) -> str:
        """The logged-in server's host key as "TYPE SHA256:…" (the last hop, past any jump):
        what identifies the machine a copy came from, whatever it calls itself."""
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise SshFailed(host=self.target.host, detail="not connected")
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {fingerprint(key)}"

    def __enter__(self) -> SshSource:
        if self._client is None:
            self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- sudo -------------------------------------------------------------------------------
    def _exec(self, command: str, timeout: float | None) -> paramiko.Channel:
        if self._client is None:
            raise SshFailed(host=self.target.host, detail="not connected")
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SshFailed(host=self.target.host, detail="the connection was lost")
        try:
            channel = transport.open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            # EOFError: paramiko re-raises the transport's own end-of-stream when the link
            # died while the channel was being opened.
            raise SshFailed(host=self.target.host, detail=f"cannot start a command: {exc}"
                            ) from None
        return channel

    def _sudo_mode(self) -> str:
        """How commands get root: "none" (already root), "nopasswd" or "password"."""
        # One decision per session: parallel disk threads must not prompt twice.
        with self._sudo_lock:
            if self._sudo is None:
                self._sudo = self._decide_sudo()
            return self._sudo

    def _decide_sudo(self) -> str:
        who = self._plain(["id", "-u"], timeout=30)
        if who.returncode == 0 and who.text.strip() == "0":
            return "none"
        probe = self._plain(SUDO_PROBE, timeout=30)
        if probe.returncode == 0:
            return "nopasswd"
        refusal = sudo_refusal(probe.returncode, probe.stderr)
        if refusal is not None:
            raise SudoFailed(host=self.target.host, user=self.target.user, detail=refusal)
        password = os.environ.get(SUDO_PASSWORD_ENV)
        if password is None and self.options.sudo_prompt is not None:
            password = self.options.sudo_prompt(f"[sudo] password for {self.target}: ")
        if password is None:
            raise SudoFailed(host=self.target.host, user=self.target.user,
                             detail="a password is needed and none was given")
        check = self._plain(sudo_argv(["true"], "password"), timeout=60,
                            stdin=password_input(password))
        if check.returncode != 0:
            raise SudoFailed(host=self.target.host, user=self.target.user,
                             detail=_tail(check.stderr) if check.stderr.strip()
                             else "wrong password or not allowed")
        self._password = password
        return "password"

    # -- the data channel ---------------------------------------------------------------------
    def _hops(self) -> list[Hop]:
        """The logins paramiko made, outermost first, with the host keys it verified."""
        hops: list[Hop] = []
        for client, target in zip(self._clients, [*self.target.jump, self.target],
                                  strict=True):
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                raise SshFailed(host=target.host, detail="the connection was lost")
            key = transport.get_remote_server_key()
            key_files, agent, _ = self._keys(target)
            hops.append(Hop(host=target.host, port=target.port, user=target.user,
                            key_type=key.get_name(), key_base64=key.get_base64(),
                            identities=tuple(Path(p) for p in key_files or ()), agent=agent,
                            proxy_command=target.proxy_command,
                            connect_timeout=target.connect_timeout
                            or self.options.connect_timeout))
        return hops

    def data_channel(self) -> str:
        """What carries stream(): "openssh" or "paramiko" (decided on first use: an ssh
        child that cannot log in leaves it to paramiko, said once in the log)."""
        with self._channel_lock:
            if self._channel is None:
                self._channel = self._choose_channel()
            return self._channel

    def _choose_channel(self) -> str:
        wanted = data_channel_setting(self.options.data_channel)
        if wanted == PARAMIKO:
            return PARAMIKO
        child: SshChild | None = None
        try:
            child = SshChild.find(self._hops())
            child.check()
        except LoginRefused as exc:
            if child is not None:
                child.close()
            log.warning("the OpenSSH data channel to %s cannot log in (%s); paramiko "
                        "carries the data", self.target, exc)
            return PARAMIKO
        except BaseException:
            if child is not None:
                child.close()
            raise
        self._child = child
        log.info("the data to %s goes through an OpenSSH child (%s)", self.target, child.ssh)
        return "openssh"

    # -- commands ---------------------------------------------------------------------------
    def _plain(self, argv: Sequence[str], *, timeout: float | None,
               stdin: bytes | None = None) -> RemoteResult:
        command = shlex.join(argv)
        channel = self._exec(command, timeout)
        try:
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            out = bytearray()
            err = bytearray()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                busy = False
                if channel.recv_ready():
                    out += channel.recv(1 << 16)
                    busy = True
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 16)
                    busy = True
                if busy:
                    continue
                # Data precedes exit-status on the wire, so everything is buffered by now.
                if channel.exit_status_ready() or channel.closed:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError
                time.sleep(0.005)
            code = channel.recv_exit_status()
        except TimeoutError:
            raise SshFailed(host=self.target.host,
                            detail=f"`{_short(argv)}` did not finish within {timeout:.0f} s"
                            ) from None
        finally:
            channel.close()
        return RemoteResult(_short(argv), code, bytes(out), err.decode("utf-8", "replace"))

    def run(self, argv: Sequence[str], *, timeout: float | None = 300, check: bool = True,
            root: bool = True) -> RemoteResult:
        """Run argv on the source (as root unless root=False) and return its output."""
        mode = self._sudo_mode() if root else "none"
        stdin = password_input(self._password) if mode == "password" and self._password else None
        result = self._plain(sudo_argv(argv, mode), timeout=timeout, stdin=stdin)
        if check and result.returncode != 0:
            raise RemoteCommandFailed(command=_short(argv), host=self.target.host,
                                      returncode=result.returncode,
                                      stderr_tail=_tail(result.stderr))
        return RemoteResult(_short(argv), result.returncode, result.stdout, result.stderr)

    @contextmanager
    def stream(self, argv: Sequence[str], *, timeout: float | None = 300,
               root: bool = True, stdin: bytes | None = None) -> Iterator[IO[bytes]]:
        """Run argv and yield its stdout as a binary file (reads block up to `timeout`).
        stdin: sent before the yield (the command must read all of it before its output
        fills the channel's window, or both sides wait on each other).

        On leaving the block the command's exit status is checked: a non-zero exit raises
        RemoteCommandFailed with its stderr tail, unless the block itself raised.
        """
        mode = self._sudo_mode() if root else "none"
        if self.data_channel() != PARAMIKO and self._child is not None:
            feed = (password_input(self._password) if mode == "password" and self._password
                    else b"") + (stdin or b"")
            with self._child.stream(shlex.join(sudo_argv(argv, mode)), shown=_short(argv),
                                    stdin=feed, timeout=timeout) as out:
                yield out
            return
        channel = self._exec(shlex.join(sudo_argv(argv, mode)), timeout)
        try:
            if mode == "password" and self._password:
                channel.sendall(password_input(self._password))
            if stdin:
                try:
                    channel.sendall(stdin)
                except OSError:
                    pass    # the command ended first: its exit status says why
            channel.shutdown_write()
            stdout = channel.makefile("rb")
            try:
                yield stdout
            except P2VError:
                # The stream broke: if the command itself failed, its stderr says why.
                deadline = time.monotonic() + 2
                while not channel.exit_status_ready() and time.monotonic() < deadline:
                    time.sleep(0.02)
                # -1: no status was sent (the connection died), not the command's answer.
                if channel.exit_status_ready() and channel.recv_exit_status() > 0:
                    self._raise_failed(argv, channel)
                raise
            if channel.recv_exit_status() != 0:
                self._raise_failed(argv, channel)
        except TimeoutError:
            raise SshFailed(host=self.target.host,
                            detail=f"`{_short(argv)}` stalled for {timeout:.0f} s") from None
        finally:
            channel.close()

    def _raise_failed(self, argv: Sequence[str], channel: paramiko.Channel) -> None:
        err = b""
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(1 << 16)
        raise RemoteCommandFailed(command=_short(argv), host=self.target.host,
                                  returncode=channel.recv_exit_status(),
                                  stderr_tail=_tail(err.decode("utf-8", "replace")))


def _short(argv: Sequence[str], limit: int = 80) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sudo_argv(argv: Sequence[str], mode: str) -> list[str]:
    """argv wrapped for root: unchanged for a root login, else through sudo.

    With a password, -k makes sudo ignore any cached credential and so always read the
    password from stdin (-S, empty prompt): it then never reaches the command's stdin.
    """
    if mode == "none":
        return list(argv)
    if mode == "nopasswd":
        return ["sudo", "-n", "--", *argv]
    return ["sudo", "-k", "-S", "-p", "", "--", *argv]


# Whether sudo works without a password. C locale: its refusal is parsed (sudo_refusal).
SUDO_PROBE = ("env", "LC_ALL=C", "sudo", "-n", "true")


def sudo_refusal(returncode: int, stderr: str) -> str | None:
    """Why SUDO_PROBE failed if a password cannot help, or None when one is asked for.

    `sudo -n` says "a password is required" when only a password is missing; anything
    else (no sudo at all, `Defaults requiretty`, an expired account) is sudo's own reason,
    and asking for a password would send the admin the wrong way.
    """
    if returncode == 127:
        return "sudo is not installed on the source (or not on the login's PATH)"
    if "password" in stderr.lower() or not stderr.strip():
        return None
    return _tail(stderr)


def password_input(password: str) -> bytes:
    return (password + "\n").encode()


__all__ = [
    "RemoteResult", "SshOptions", "SshSource", "SshTarget", "fingerprint", "parse_source",
    "redact_source", "sudo_argv", "terminal_sudo_prompt",
]
