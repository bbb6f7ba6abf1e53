"""Other platforms' agents: detection from package names, the removal command."""

from __future__ import annotations

from p2v.fix.linux import agents


def test_find_agents() -> None:
    found = agents.find_agents(["bash", "open-vm-tools", "srvadmin-base", "hp-health",
                                "virtualbox-guest-utils", "hyperv-daemons", "openssh-server",
                                "open-vm-tools"])
    assert [a.package for a in found] == ["hp-health", "hyperv-daemons", "open-vm-tools",
                                          "srvadmin-base", "virtualbox-guest-utils"]
    assert found[2].what == "VMware guest agent"
    assert agents.find_agents(["linux-image-amd64", "qemu-guest-agent"]) == []


def test_remove_argv() -> None:
    assert agents.remove_argv("deb", ["open-vm-tools"]) == [
        "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", "remove", "--purge",
        "open-vm-tools"]
    assert agents.remove_argv("rpm", ["a", "b"]) == ["rpm", "-e", "a", "b"]
    assert agents.remove_argv("pacman", ["a"]) is None
    assert agents.remove_argv("deb", []) is None

