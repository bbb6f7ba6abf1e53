"""libvirt's order for the URI without --connect: flag, $LIBVIRT_DEFAULT_URI, uri_default
in the client config of this user, then libvirt's own fallback."""

from __future__ import annotations

from pathlib import Path

from p2v.libvirt_uri import client_config, read_uri_default, resolve_uri


def test_the_flag_wins_over_everything(tmp_path: Path) -> None:
    conf = tmp_path / "libvirt.conf"
    conf.write_text('uri_default = "qemu+ssh://conf/system"\n')
    got = resolve_uri("qemu:///session", env={"LIBVIRT_DEFAULT_URI": "test:///default"},
                      config=conf, root=True)
    assert (got.uri, got.origin) == ("qemu:///session", "--connect")
    assert not got.chosen_by_config


def test_the_environment_wins_over_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "libvirt.conf"
    conf.write_text('uri_default = "qemu+ssh://conf/system"\n')
    got = resolve_uri(None, env={"LIBVIRT_DEFAULT_URI": "test:///default"}, config=conf)
    assert (got.uri, got.origin) == ("test:///default", "$LIBVIRT_DEFAULT_URI")
    assert got.chosen_by_config


def test_uri_default_in_the_config_then_libvirts_fallback(tmp_path: Path) -> None:
    conf = tmp_path / "libvirt.conf"
    conf.write_text('# uri_default = "qemu:///nope"\n#comment\n'
                    '  uri_default = "qemu+ssh://root@kvm1/system"   # the lab host\n')
    got = resolve_uri(None, env={"LIBVIRT_DEFAULT_URI": ""}, config=conf)
    assert got.uri == "qemu+ssh://root@kvm1/system" and str(conf) in got.origin
    none = tmp_path / "missing.conf"
    assert resolve_uri(None, env={}, config=none, root=True).uri == "qemu:///system"
    assert resolve_uri(None, env={}, config=none, root=False).uri == "qemu:///session"


def test_the_config_file_is_the_one_libvirt_reads_for_this_user() -> None:
    assert client_config({}, root=True) == Path("/etc/libvirt/libvirt.conf")
    assert client_config({"XDG_CONFIG_HOME": "/x"}, root=False) == Path("/x/libvirt/libvirt.conf")
    assert client_config({"HOME": "/home/a"}, root=False) == Path(
        "/home/a/.config/libvirt/libvirt.conf")


def test_an_unreadable_or_empty_setting_is_no_setting(tmp_path: Path) -> None:
    assert read_uri_default(tmp_path) is None                  # a directory: unreadable
    empty = tmp_path / "e.conf"
    empty.write_text('uri_default = ""\n')
    assert read_uri_default(empty) is None


def test_virshs_own_variable_first_then_the_first_uri_default(tmp_path: Path) -> None:
    got = resolve_uri(None, env={"VIRSH_DEFAULT_CONNECT_URI": "qemu:///session",
                                 "LIBVIRT_DEFAULT_URI": "test:///default"})
    assert (got.uri, got.origin) == ("qemu:///session", "$VIRSH_DEFAULT_CONNECT_URI")
    conf = tmp_path / "libvirt.conf"
    conf.write_text("uri_default = 'qemu+ssh://first/system' ; the one libvirt reads\n"
                    'uri_default = "qemu+ssh://second/system"\n')
    assert read_uri_default(conf) == "qemu+ssh://first/system"
