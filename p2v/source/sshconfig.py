"""ssh_config as OpenSSH reads it: one host alias resolved to the options p2v logs in with.

Where OpenSSH's client is installed, `ssh -G` reads the config (Host, Match, Include and
every keyword, exactly as `ssh` would). What the config *set* is told from ssh's built-in
defaults by a second `ssh -G` over no config at all. Without `ssh`, paramiko's parser reads
the files, with their Includes expanded by `p2v.source.sshinclude`. Either way every option
the config set is honoured, ignored (it changes neither where, how or as whom p2v logs in
nor what it trusts) or refused by name: never silently dropped.

paramiko is imported by `p2v.source.ssh` only, so the fallback parser comes in as `Lookup`.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import re
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2v import runner
from p2v.errors import CommandNotFound, CommandTimeout, SourceSpecError, SshConfigRefused
from p2v.source.sshinclude import expand_includes, host_matches

log = logging.getLogger(__name__)

DEFAULT_USER_CONFIG = Path("~/.ssh/config")
SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")
# p2v's own default login, applied only when no Host or Match block set User.
DEFAULT_USER = "root"
_SSH_G_TIMEOUT = 30.0         # a Match exec may take a while; ssh -G connects nowhere

# (config text, host alias) -> every option the config set for that host, keys lowercase.
Lookup = Callable[[str, str], Mapping[str, Sequence[str]]]
Options = Mapping[str, tuple[str, ...]]

# ---------------------------------------------------------------------------------------------
# What p2v does with each option (OpenSSH's spelling; `ssh -G` prints them lowercase)

HONOURED = (
    "HostName", "Port", "User", "IdentityFile", "IdentitiesOnly", "UserKnownHostsFile",
    "GlobalKnownHostsFile", "ProxyJump", "ProxyCommand", "ConnectTimeout",
    "StrictHostKeyChecking", "IdentityAgent",
)

# Options that change neither where, how or as whom p2v logs in, nor what it trusts.
IGNORED = (
    "AddKeysToAgent", "BatchMode", "ChallengeResponseAuthentication", "ChannelTimeout",
    "CheckHostIP", "ClearAllForwardings", "Compression", "ConnectionAttempts",
    "ControlMaster", "ControlPath", "ControlPersist", "EnableEscapeCommandline",
    "EnableSSHKeysign", "EscapeChar", "ExitOnForwardFailure", "FingerprintHash",
    "ForkAfterAuthentication", "ForwardAgent", "ForwardX11", "ForwardX11Timeout",
    "ForwardX11Trusted", "GatewayPorts", "GSSAPIAuthentication", "GSSAPIClientIdentity",
    "GSSAPIDelegateCredentials", "GSSAPIKeyExchange", "GSSAPIKexAlgorithms",
    "GSSAPIRenewalForcesRekey", "GSSAPIServerIdentity", "GSSAPITrustDns", "HashKnownHosts",
    "HostbasedAcceptedAlgorithms", "HostbasedAuthentication", "IgnoreUnknown", "IPQoS",
    "KbdInteractiveAuthentication", "KbdInteractiveDevices", "LogLevel", "LogVerbose",
    "NumberOfPasswordPrompts", "ObscureKeystrokeTiming", "PasswordAuthentication",
    "PermitLocalCommand", "PermitRemoteOpen", "RekeyLimit", "RequestTTY", "SendEnv",
    "ServerAliveCountMax", "ServerAliveInterval", "SessionType", "SetEnv", "StdinNull",
    "StreamLocalBindMask", "StreamLocalBindUnlink", "SyslogFacility", "Tag", "TCPKeepAlive",
    "TunnelDevice", "UpdateHostKeys", "VisualHostKey", "XAuthLocation",
    # Only meaningful with CanonicalizeHostname, which is refused unless off.
    "CanonicalDomains", "CanonicalizeFallbackLocal", "CanonicalizeMaxDots",
    "CanonicalizePermittedCNAMEs",
)

_ALGORITHMS = "p2v negotiates with paramiko's own algorithm lists"
_AUTH = "p2v logs in with plain keys (files or ssh-agent) only"
_SESSION = "p2v runs its own commands over one plain session"
# Refused when set, with why; any option named nowhere here is refused too.
REFUSED = {
    "Ciphers": _ALGORITHMS, "MACs": _ALGORITHMS, "KexAlgorithms": _ALGORITHMS,
    "HostKeyAlgorithms": _ALGORITHMS, "PubkeyAcceptedAlgorithms": _ALGORITHMS,
    "PubkeyAcceptedKeyTypes": _ALGORITHMS, "CASignatureAlgorithms": _ALGORITHMS,
    "RequiredRSASize": "p2v does not enforce a minimum RSA key size",
    "CertificateFile": _AUTH, "PKCS11Provider": _AUTH, "SecurityKeyProvider": _AUTH,
    "HostKeyAlias": "p2v looks host keys up by the host name and port it connects to",
    "KnownHostsCommand": "p2v reads known_hosts files only",
    "RevokedHostKeys": "p2v cannot check a revocation list",
    "LocalForward": _SESSION, "RemoteForward": _SESSION, "DynamicForward": _SESSION,
    "RemoteCommand": _SESSION, "LocalCommand": _SESSION, "Tunnel": _SESSION,
    "BindAddress": "p2v connects from the address the kernel picks",
    "BindInterface": "p2v connects from the address the kernel picks",
    "AddressFamily": "p2v connects to whatever address the host name resolves to",
    "CanonicalizeHostname": "p2v connects to HostName as written",
    "VerifyHostKeyDNS": "p2v trusts known_hosts only, never DNS",
    "NoHostAuthenticationForLocalhost": "p2v never skips host-key checking",
    "ProxyUseFdpass": "p2v speaks SSH over the ProxyCommand's stdin and stdout",
    "PubkeyAuthentication": _AUTH,
    "StrictHostKeyChecking": "p2v never skips host-key checking; use yes, ask or "
                             "accept-new (or --accept-new-host-key)",
    "IdentityAgent": "p2v uses the agent in SSH_AUTH_SOCK, or none",
}

# Values with which an otherwise refused (or honoured) option is harmless, as ssh -G or
# the config spells them.
_HARMLESS = {
    "canonicalizehostname": {"no", "false"},
    "verifyhostkeydns": {"no", "false"},
    "nohostauthenticationforlocalhost": {"no", "false"},
    "proxyusefdpass": {"no", "false"},
    "tunnel": {"no", "false"},
    "pubkeyauthentication": {"yes", "true", "unbound", "host-bound"},
    "stricthostkeychecking": {"yes", "true", "ask", "accept-new"},
    "identityagent": {"none", "ssh_auth_sock"},
}

_COMMANDS = ("RemoteCommand", "LocalCommand", "KnownHostsCommand")
_CANONICAL = {name.lower(): name for name in (*HONOURED, *IGNORED, *REFUSED)}


def option_name(key: str) -> str:
    """OpenSSH's spelling of a lowercase key (an unknown one as it came)."""
    return _CANONICAL.get(key.lower(), key)


# ---------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class HostOptions:
    """What one alias resolves to: where, as whom, with which keys, trusting what."""

    alias: str
    host: str
    port: int
    user: str
    identity_files: tuple[Path, ...] = ()          # () when the config named none
    identities_only: bool = False
    use_agent: bool = True
    known_hosts_files: tuple[Path, ...] = ()       # UserKnownHostsFile; () when not set
    global_known_hosts_files: tuple[Path, ...] | None = None   # None: the system default
    proxy_jump: tuple[str, ...] = ()
    proxy_command: str | None = None               # tokens expanded, for `sh -c "exec …"`
    connect_timeout: float | None = None
    accept_new_host_key: bool = False


def resolve(alias: str, *, user: str | None, port: int | None, config: Path | None,
            fallback: Lookup) -> HostOptions:
    """The options for `alias` from `config` (None: ~/.ssh/config and the system file, as
    `ssh` reads them); `user` and `port` (from SOURCE) win over the config, as `ssh -l -p`.

    Raises SourceSpecError for an unreadable config or an option p2v cannot honour.
    """
    if config is not None and not config.expanduser().exists():
        raise SourceSpecError(source=str(config), detail="ssh config file not found")
    ssh = ssh_binary()
    if ssh is not None:
        values, set_keys = _ssh_g(ssh, alias, user, port, config)
    else:
        values, set_keys = _fallback(alias, config, fallback)
    check_options(alias, values, set_keys)
    # ssh -G prints HostName and UserKnownHostsFile expanded, but IdentityFile,
    # ProxyCommand and GlobalKnownHostsFile as written (tokens are expanded on connect).
    return host_options(alias, values, set_keys, user=user, port=port,
                        expanded_known_hosts=ssh is not None)


# ---------------------------------------------------------------------------------------------
# ssh -G


@functools.cache
def ssh_binary() -> str | None:
    """OpenSSH's client if it has -G (6.8 and later), else None: then paramiko's parser
    reads the config. Asked once per process."""
    try:
        ssh = runner.which("ssh")
        probe = runner.run([ssh, "-G", "-F", "/dev/null", "--", "localhost"],
                           timeout=_SSH_G_TIMEOUT, check=False)
    except (CommandNotFound, CommandTimeout):
        return None
    if probe.returncode != 0 or "hostname localhost" not in probe.stdout.splitlines():
        log.info("%s cannot print its config (ssh -G); reading ssh_config with paramiko", ssh)
        return None
    return ssh


def _wrapper_text(config: Path | None) -> str:
    """The config ssh -G reads: the user's file (or ~/.ssh/config and the system file),
    then p2v's own default User, which OpenSSH's first-value-wins rule applies only when
    nothing before set one."""
    if config is None:
        body = f"Include {DEFAULT_USER_CONFIG}\nHost *\nInclude {SYSTEM_CONFIG}\n"
    else:
        try:
            # Copied, not Included: `ssh -F FILE` reads FILE itself, with no system file.
            body = config.expanduser().read_text()
        except (OSError, UnicodeError) as exc:
            raise SourceSpecError(source=str(config),
                                  detail=f"unreadable ssh config: {exc}") from None
    return f"{body}\nHost *\n  User {DEFAULT_USER}\n"


def _ssh_g(ssh: str, alias: str, user: str | None, port: int | None,
           config: Path | None) -> tuple[Options, frozenset[str]]:
    """ssh -G over the config and over nothing: the effective options, and which of them
    the config set (those that differ from ssh's defaults)."""
    flags = [*(["-l", user] if user else []), *(["-p", str(port)] if port else [])]
    shown = str(config or DEFAULT_USER_CONFIG)
    with tempfile.TemporaryDirectory(prefix="p2v-ssh-") as tmp:
        full, base = Path(tmp, "config"), Path(tmp, "defaults")
        full.write_text(_wrapper_text(config))
        base.write_text(f"Host *\n  User {DEFAULT_USER}\n")
        values = _dump(ssh, full, flags, alias, shown)
        defaults = _dump(ssh, base, flags, alias, shown)
    return values, changed_keys(values, defaults)


def _dump(ssh: str, config: Path, flags: list[str], alias: str, shown: str) -> Options:
    try:
        result = runner.run([ssh, "-G", "-F", config, *flags, "--", alias],
                            timeout=_SSH_G_TIMEOUT, check=False)
    except CommandTimeout:
        raise SourceSpecError(source=alias, detail=f"`ssh -G` over {shown} did not finish "
                              f"within {_SSH_G_TIMEOUT:.0f} s (a slow Match exec?)") from None
    if result.returncode != 0:
        lines = [line.replace(str(config), shown) for line in result.stderr.splitlines()
                 if line.strip() and "Pseudo-terminal" not in line]
        said = " | ".join(lines[-2:]) or f"it exited with status {result.returncode}"
        raise SourceSpecError(source=alias, detail=f"`ssh -G` refused it: {said}")
    return parse_dump(result.stdout)


def parse_dump(text: str) -> dict[str, tuple[str, ...]]:
    """`ssh -G` output as {key: values}; a key printed on several lines (IdentityFile,
    LocalForward, SendEnv) keeps every value in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            found.setdefault(key.lower(), []).append(value.strip())
    return {key: tuple(values) for key, values in found.items()}


def changed_keys(values: Options, defaults: Options) -> frozenset[str]:
    """The keys whose values differ from ssh's defaults: what the config set."""
    return frozenset(k for k in {*values, *defaults} if values.get(k) != defaults.get(k))


# ---------------------------------------------------------------------------------------------
# Without ssh: paramiko's parser over the files with their Includes expanded


def _fallback(alias: str, config: Path | None,
              lookup: Lookup) -> tuple[Options, frozenset[str]]:
    if config is not None:
        text = expand_includes(config.expanduser(), alias, relative_to=Path.home() / ".ssh")
    else:
        parts = []
        user_config = DEFAULT_USER_CONFIG.expanduser()
        if user_config.is_file():
            parts.append(expand_includes(user_config, alias, relative_to=user_config.parent))
        if SYSTEM_CONFIG.is_file():
            parts.append(expand_includes(SYSTEM_CONFIG, alias, relative_to=SYSTEM_CONFIG.parent))
        text = "Host *\n".join(parts)
    found = {k.lower(): tuple(v) for k, v in lookup(text, alias).items()}
    values = dict(found)
    hostname = values.get("hostname", (alias,))[0]
    values["hostname"] = (expand_tokens(hostname, {"h": alias}, option="HostName",
                                        alias=alias),)
    if "proxyjump" in found and "proxycommand" in found:
        raise SshConfigRefused(source=alias, option="ProxyJump", detail=(
            "both ProxyJump and ProxyCommand are set, and only OpenSSH's own reader can "
            "tell which comes first; set one of them (or install OpenSSH's ssh client)"))
    return values, frozenset(found)


# ---------------------------------------------------------------------------------------------
# Honour, ignore or refuse


def _shown(values: Sequence[str]) -> str:
    text = " ".join(values)
    return text if len(text) <= 60 else text[:59] + "…"


def check_options(alias: str, values: Options, set_keys: frozenset[str]) -> None:
    """Refuse (SshConfigRefused, naming it) the first option the config set that p2v
    cannot honour; log the ignored ones."""
    unknown_ok = ",".join(values.get("ignoreunknown", ())).replace(",", " ")
    for key in sorted(set_keys):
        name = option_name(key)
        value = values.get(key, ())
        if key.lower() not in _CANONICAL and unknown_ok and host_matches(unknown_ok, key):
            continue    # IgnoreUnknown (ssh -G never shows these; paramiko does)
        if key in _HARMLESS and all(v.lower() in _HARMLESS[key] for v in value):
            continue
        if name in HONOURED and name not in REFUSED:
            continue
        if name in IGNORED:
            # Without its value: SetEnv and the like may carry secrets.
            log.debug("ssh_config for %s: %s ignored (it does not change how p2v logs in)",
                      alias, name)
            continue
        why = REFUSED.get(name, "p2v does not know this option")
        # A command line (or an unknown option's value) may carry a secret: named only.
        shown = "" if name in _COMMANDS or name not in REFUSED else f" {_shown(value)}"
        raise SshConfigRefused(source=alias, option=name, detail=(
            f"{name}{shown} cannot be honoured ({why}); remove it from the Host "
            f"or Match block that applies to {alias!r}, or give p2v an alias without it"))


def _local_tokens() -> dict[str, str]:
    hostname = socket.gethostname()
    return {"d": str(Path.home()), "u": _local_user(), "l": hostname,
            "L": hostname.split(".")[0], "i": str(os.getuid())}


def _local_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def expand_tokens(text: str, tokens: Mapping[str, str], *, option: str, alias: str) -> str:
    """`text` with OpenSSH's %-tokens replaced (%% is %); an unknown token is refused."""
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        token = next(chars, "")
        if token == "%":
            out.append("%")
        elif token in tokens:
            out.append(tokens[token])
        else:
            raise SshConfigRefused(source=alias, option=option, detail=(
                f"{option} {text!r} uses %{token}, a token p2v does not expand; "
                f"p2v knows {', '.join('%' + t for t in sorted(tokens))} and %%"))
    return "".join(out)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_path(text: str, tokens: Mapping[str, str], *, option: str, alias: str) -> Path:
    """A path option as OpenSSH expands it: ${VAR}, then ~, then %-tokens."""
    def env(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            raise SshConfigRefused(source=alias, option=option, detail=(
                f"{option} {text!r} names ${{{match.group(1)}}}, which is not set"))
        return value

    return Path(expand_tokens(os.path.expanduser(_ENV.sub(env, text)), tokens,
                              option=option, alias=alias))


# Characters a %h, %n or %r may bring into a ProxyCommand without a shell reading them.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9._:@\[\]-]+")


def proxy_command(command: str, tokens: Mapping[str, str], alias: str) -> str:
    """ProxyCommand with %h %p %r %n %% expanded; a value a shell would read is refused."""
    wanted = {t: tokens[t] for t in "hpnr"}
    for token, value in wanted.items():
        if f"%{token}" in command.replace("%%", "") and not _SHELL_SAFE.fullmatch(value):
            raise SshConfigRefused(source=alias, option="ProxyCommand", detail=(
                f"%{token} would put {value!r} into a shell command line; use a plainer "
                "host or user name"))
    return expand_tokens(command, wanted, option="ProxyCommand", alias=alias)


def _first(values: Options, key: str) -> str | None:
    found = values.get(key)
    return found[0] if found else None


def _timeout(values: Options, alias: str) -> float | None:
    text = _first(values, "connecttimeout")
    if text is None or text == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise SourceSpecError(source=alias,
                              detail=f"ConnectTimeout {text!r} is not a number") from None
    return seconds if seconds > 0 else None


def _port(values: Options, alias: str) -> int:
    text = _first(values, "port") or "22"
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SourceSpecError(source=alias, detail=f"its ssh_config Port {text!r} is not a port")
    return int(text)


def host_options(alias: str, values: Options, set_keys: frozenset[str], *,
                 user: str | None, port: int | None,
                 expanded_known_hosts: bool) -> HostOptions:
    """HostOptions from checked options (see check_options): only what the config set is
    taken, so p2v's own defaults (root, its known_hosts) hold everywhere else."""
    def given(key: str) -> tuple[str, ...]:
        return values.get(key, ()) if key in set_keys else ()

    host = _first(values, "hostname") or alias
    login = user or _first(values, "user") or DEFAULT_USER
    number = port or _port(values, alias)
    jump = next((v for v in given("proxyjump") if v.lower() != "none"), "")
    tokens = {**_local_tokens(), "h": host, "p": str(number), "r": login, "n": alias,
              "k": alias, "j": jump}

    def paths(key: str, name: str, expand: bool) -> tuple[Path, ...]:
        words = [w for v in given(key) for w in v.split() if w.lower() != "none"]
        if not expand:
            return tuple(Path(os.path.expanduser(w)) for w in words)
        return tuple(expand_path(w, tokens, option=name, alias=alias) for w in words)

    command = next((v for v in given("proxycommand") if v.lower() != "none"), None)
    checking = (_first(values, "stricthostkeychecking") or "").lower()
    global_files = (paths("globalknownhostsfile", "GlobalKnownHostsFile", False)
                    if "globalknownhostsfile" in set_keys else None)
    return HostOptions(
        alias=alias, host=host, port=number, user=login,
        identity_files=paths("identityfile", "IdentityFile", True),
        identities_only=(_first(values, "identitiesonly") or "no").lower() in ("yes", "true"),
        use_agent=(_first(values, "identityagent") or "").lower() != "none",
        known_hosts_files=paths("userknownhostsfile", "UserKnownHostsFile",
                                not expanded_known_hosts),
        global_known_hosts_files=global_files,
        proxy_jump=tuple(h.strip() for h in jump.split(",") if h.strip()),
        proxy_command=proxy_command(command, tokens, alias) if command else None,
        connect_timeout=_timeout(values, alias),
        accept_new_host_key=checking == "accept-new",
    )
