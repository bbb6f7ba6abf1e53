"""ssh_config resolution: what is honoured, ignored or refused; tokens; Include expansion.

Most cases run twice, once through OpenSSH's `ssh -G` and once through the fallback
(paramiko's parser with p2v's own Include expansion), and must agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2v.errors import ExitCode, SourceSpecError, SshConfigRefused
from p2v.source import sshconfig
from p2v.source.ssh import parse_source
from p2v.source.sshconfig import (
    changed_keys,
    check_options,
    expand_path,
    expand_tokens,
    parse_dump,
    proxy_command,
)
from p2v.source.sshinclude import expand_includes, host_matches


@pytest.fixture(params=["ssh", "paramiko"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Resolve through `ssh -G`, or through the fallback as on a host without ssh."""
    if request.param == "paramiko":
        monkeypatch.setattr(sshconfig, "ssh_binary", lambda: None)
    elif sshconfig.ssh_binary() is None:
        pytest.skip("OpenSSH's ssh client is not installed")
    yield request.param


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Through parse_source, both readers


def test_an_alias_in_an_included_glob_resolves(reader: str, tmp_path: Path) -> None:
    write(tmp_path / "conf.d/10-web.conf",
          "Host web01\n  HostName 10.0.0.5\n  Port 2200\n  User ops\n"
          "  IdentityFile ~/keys/%h-%r\n  IdentitiesOnly yes\n")
    write(tmp_path / "conf.d/20-other.conf", "Host other\n  Port 9\n")
    write(tmp_path / "conf.d/ignored.txt", "Host web01\n  Port 1\n")
    config = write(tmp_path / "config", f"Include {tmp_path}/conf.d/*.conf\n")
    target = parse_source("web01", ssh_config=config)
    assert (target.host, target.port, target.user) == ("10.0.0.5", 2200, "ops")
    assert target.identity_files == (Path("~/keys/10.0.0.5-ops").expanduser(),)
    assert target.identities_only and target.proxy_command is None
    other = parse_source("other", ssh_config=config)
    assert (other.host, other.port, other.user, other.identity_files) == ("other", 9, "root", ())


def test_a_match_host_block_applies_after_hostname(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config",
                   "Host db\n  HostName 192.0.2.7\n"
                   "Match host 192.0.2.7\n  Port 2222\n  User dba\n"
                   "Match host 198.51.100.1\n  Port 1\n")
    target = parse_source("db", ssh_config=config)
    assert (target.host, target.port, target.user) == ("192.0.2.7", 2222, "dba")


def test_source_values_win_and_root_is_the_default_user(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config", "Host a\n  HostName 192.0.2.1\n  Port 2200\n"
                                        "  User ops\nHost b\n  HostName 192.0.2.2\n")
    given = parse_source("ssh://admin@a:22", ssh_config=config)
    assert (given.user, given.port) == ("admin", 22)
    assert parse_source("b", ssh_config=config).user == "root"


def test_proxycommand_tokens_are_expanded(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config", "Host gw\n  HostName 192.0.2.9\n  Port 2201\n"
                                        "  User ops\n  ProxyCommand nc %h %p # %r %n 100%%\n")
    target = parse_source("gw", ssh_config=config)
    assert target.proxy_command == "nc 192.0.2.9 2201 # ops gw 100%"
    assert target.jump == ()


def test_trust_options_are_honoured(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config",
                   "Host a\n  StrictHostKeyChecking accept-new\n  IdentityAgent none\n"
                   f"  UserKnownHostsFile {tmp_path}/kh\n  GlobalKnownHostsFile {tmp_path}/g\n"
                   "  ConnectTimeout 7\n  ServerAliveInterval 30\n  ForwardAgent yes\n")
    target = parse_source("a", ssh_config=config)
    assert target.accept_new_host_key and not target.use_agent
    assert target.known_hosts_files == (tmp_path / "kh",)
    assert target.global_known_hosts_files == (tmp_path / "g",)
    assert target.connect_timeout == 7.0
    plain = parse_source("b", ssh_config=config)
    assert not plain.accept_new_host_key and plain.use_agent
    assert plain.global_known_hosts_files is None and plain.known_hosts_files == ()


@pytest.mark.parametrize(("line", "option"), [
    ("Ciphers aes128-ctr", "Ciphers"),
    ("KexAlgorithms curve25519-sha256", "KexAlgorithms"),
    ("HostKeyAlgorithms ssh-ed25519", "HostKeyAlgorithms"),
    ("LocalForward 8080 localhost:80", "LocalForward"),
    ("RemoteCommand ls", "RemoteCommand"),
    ("CertificateFile ~/.ssh/id_cert", "CertificateFile"),
    ("HostKeyAlias other", "HostKeyAlias"),
    ("StrictHostKeyChecking no", "StrictHostKeyChecking"),
    ("StrictHostKeyChecking off", "StrictHostKeyChecking"),
    ("IdentityAgent /run/other.sock", "IdentityAgent"),
    ("PubkeyAuthentication no", "PubkeyAuthentication"),
])
def test_an_option_p2v_cannot_honour_is_refused_by_name(reader: str, tmp_path: Path,
                                                        line: str, option: str) -> None:
    config = write(tmp_path / "config", f"Host web01\n  HostName 192.0.2.1\n  {line}\n")
    with pytest.raises(SshConfigRefused) as info:
        parse_source("web01", ssh_config=config)
    message = info.value.message
    assert option in message and "'web01'" in message and "\n" not in message
    assert info.value.exit_code == ExitCode.USAGE
    # The same option for another host is no obstacle.
    assert parse_source("db", ssh_config=config).host == "db"


def test_a_refused_option_on_a_jump_host_names_the_hop(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config", "Host a\n  ProxyJump hop\nHost hop\n  Ciphers aes128-ctr\n")
    with pytest.raises(SshConfigRefused, match="'hop'.*Ciphers|Ciphers.*'hop'"):
        parse_source("a", ssh_config=config)


def test_the_first_hop_keeps_its_own_chain(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config",
                   "Host a\n  ProxyJump b,c\nHost b\n  ProxyCommand nc %h %p\n"
                   "Host c\n  ProxyCommand never-run %h\n")
    target = parse_source("a", ssh_config=config)
    assert [hop.name for hop in target.jump] == ["b", "c"]
    assert target.jump[0].proxy_command == "nc b 22"
    assert target.jump[1].proxy_command is None and target.proxy_command is None


def test_a_missing_config_is_refused(reader: str, tmp_path: Path) -> None:
    with pytest.raises(SourceSpecError, match="not found"):
        parse_source("web01", ssh_config=tmp_path / "nope")


def test_ssh_g_reports_a_bad_line_with_the_users_file(tmp_path: Path) -> None:
    if sshconfig.ssh_binary() is None:
        pytest.skip("OpenSSH's ssh client is not installed")
    config = write(tmp_path / "config", "Host a\n  NoSuchOption 1\n")
    with pytest.raises(SourceSpecError) as info:
        parse_source("a", ssh_config=config)
    assert f"{config}: line 2" in info.value.message
    assert "/p2v-ssh-" not in info.value.message


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_dump_and_what_the_config_set() -> None:
    full = parse_dump("host a\nuser ops\nport 22\nidentityfile ~/a\nidentityfile ~/b\n")
    base = parse_dump("host a\nuser root\nport 22\nidentityfile ~/.ssh/id_rsa\n")
    assert full["identityfile"] == ("~/a", "~/b")
    assert changed_keys(full, base) == {"user", "identityfile"}


def test_ignored_options_pass_and_unknown_ones_are_refused() -> None:
    values = {"serveraliveinterval": ("30",), "controlmaster": ("auto",),
              "stricthostkeychecking": ("accept-new",), "identityagent": ("none",)}
    check_options("a", values, frozenset(values))
    with pytest.raises(SshConfigRefused, match="FancyNewThing.*does not know"):
        check_options("a", {"FancyNewThing": ("1",)}, frozenset({"FancyNewThing"}))


def test_ignore_unknown_covers_options_ssh_does_not_know(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config", "IgnoreUnknown UseKeychain,AddKeys*\n"
                                        "Host a\n  UseKeychain yes\n  HostName 192.0.2.3\n")
    assert parse_source("a", ssh_config=config).host == "192.0.2.3"


def test_tokens() -> None:
    tokens = {"h": "10.0.0.5", "p": "22", "r": "ops"}
    assert expand_tokens("%r@%h:%p 100%%", tokens, option="X", alias="a") == "ops@10.0.0.5:22 100%"
    with pytest.raises(SshConfigRefused, match="%C"):
        expand_tokens("/tmp/%C", tokens, option="IdentityFile", alias="a")


def test_paths_expand_environment_home_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYS", "/srv/keys")
    monkeypatch.delenv("P2V_UNSET_VAR", raising=False)
    assert expand_path("${KEYS}/%h", {"h": "web"}, option="IdentityFile", alias="a") == Path(
        "/srv/keys/web")
    assert expand_path("~/k", {}, option="IdentityFile", alias="a") == Path.home() / "k"
    with pytest.raises(SshConfigRefused, match="P2V_UNSET_VAR"):
        expand_path("${P2V_UNSET_VAR}/k", {}, option="IdentityFile", alias="a")


def test_a_proxycommand_never_gets_shell_characters() -> None:
    tokens = {"h": "web;rm -rf ~", "p": "22", "r": "root", "n": "a"}
    with pytest.raises(SshConfigRefused, match="shell"):
        proxy_command("nc %h %p", tokens, "a")
    # Not used: no harm.
    assert proxy_command("nc gw %p", tokens, "a") == "nc gw 22"


def test_host_patterns() -> None:
    assert host_matches("web* !web9", "web1")
    assert not host_matches("web* !web9", "web9")
    assert host_matches("db?.example", "DB1.example")
    assert not host_matches("db[1]", "db1")     # no character classes in ssh_config


def test_include_expansion_keeps_blocks_apart(tmp_path: Path) -> None:
    write(tmp_path / "ssh/inc/a.conf", "Port 2200\nHost other\n  User nobody\n")
    write(tmp_path / "ssh/top.conf", "Host zzz\n  Port 1\n")
    main = write(tmp_path / "ssh/config",
                 "Include top.conf /nonexistent/*.conf\nUser all\n"
                 "Host web\n  Include inc/*.conf\n  User ops\n"
                 "Host db\n  Include inc/a.conf\n")
    text = expand_includes(main, "web", relative_to=tmp_path / "ssh")
    # A top-level Include is fenced off by Host *; the included file's lines sit in the
    # Host web block, its Host other block closed by repeating Host web before User ops;
    # the db block's Include adds nothing.
    assert text.splitlines() == ["Host zzz", "  Port 1", "", "Host *", "User all",
                                 "Host web", "Port 2200", "Host other", "  User nobody", "",
                                 "Host web", "  User ops", "Host db"]


def test_include_inside_match_and_include_loops_are_refused(tmp_path: Path) -> None:
    match = write(tmp_path / "m", "Match host x\n  Include other\n")
    with pytest.raises(SshConfigRefused, match="Match"):
        expand_includes(match, "x", relative_to=tmp_path)
    loop = write(tmp_path / "loop", f"Include {tmp_path}/loop\n")
    with pytest.raises(SourceSpecError, match="too deep"):
        expand_includes(loop, "x", relative_to=tmp_path)


def test_a_refused_command_is_named_without_its_text(reader: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config", "Host a\n  RemoteCommand deploy --token=s3cret\n")
    with pytest.raises(SshConfigRefused) as info:
        parse_source("a", ssh_config=config)
    assert "RemoteCommand" in info.value.message and "s3cret" not in info.value.message
