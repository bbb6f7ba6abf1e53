"""Keep the guest's NIC names on the new virtual NICs: pin each name to the MAC the VM will have.

A static configuration (ifupdown, NetworkManager, netplan, ifcfg) is written for an interface
*name*. On the physical machine that name came from the NIC's PCI slot (enp0s25) or from a
70-persistent-net.rules line; on a virtio NIC the slot differs, so without a pin the name
changes and the configuration no longer applies. A systemd .link file matching the MAC sets
the name early (udev, also in the initramfs); an existing persistent-net rule that names the
interface is kept consistent with the new MAC, so the two never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINK_DIR = "/etc/systemd/network"
RULES_FILE = "/etc/udev/rules.d/70-persistent-net.rules"

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


@dataclass(frozen=True)
class NicPin:
    """The guest interface `name` shall be the VM's NIC with this MAC."""

    name: str
    mac: str


def valid_name(name: str) -> bool:
    """A Linux interface name (at most 15 characters, no slash or space)."""
    return bool(_NAME.fullmatch(name))


def link_path(name: str) -> str:
    """10-: before the distro's 99-default.link, so this file decides the name."""
    return f"{LINK_DIR}/10-p2v-{name}.link"


def link_text(pin: NicPin) -> str:
    return (
        "# Written by p2v fix: the VM's NIC with this MAC keeps the name it had on the\n"
        "# physical machine, so the interface's network configuration still applies.\n"
        "[Match]\n"
        f"MACAddress={pin.mac}\n"
        "\n"
        "[Link]\n"
        f"Name={pin.name}\n"
    )


def rules_line(pin: NicPin) -> str:
    """A persistent-net rule for guests whose udev predates .link files."""
    return (f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{pin.mac}", '
            f'ATTR{{type}}=="1", NAME="{pin.name}"')


_RULE_ADDR = re.compile(r'(ATTR\{address\}==")([0-9A-Fa-f:]{17})(")')
_RULE_NAME = re.compile(r'NAME="([^"]+)"')


def rules_names(text: str) -> dict[str, str]:
    """name -> MAC of each persistent-net rule (the pins the guest already has)."""
    found = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        name, addr = _RULE_NAME.search(line), _RULE_ADDR.search(line)
        if name and addr:
            found[name.group(1)] = addr.group(2).lower()
    return found


def update_rules(text: str, pins: list[NicPin]) -> tuple[str, list[str]]:
    """Make 70-persistent-net.rules agree with the pins.

    A rule naming a pinned interface gets the pin's MAC; a rule giving a pinned MAC another
    name is commented out (it would fight the pin). Other rules stay as they are.
    """
    by_name = {p.name: p.mac for p in pins}
    by_mac = {p.mac: p.name for p in pins}
    changes: list[str] = []
    out = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            out.append(line)
            continue
        name, addr = _RULE_NAME.search(line), _RULE_ADDR.search(line)
        if not (name and addr):
            out.append(line)
            continue
        mac = addr.group(2).lower()
        if name.group(1) in by_name and mac != by_name[name.group(1)]:
            new_mac = by_name[name.group(1)]
            line = _RULE_ADDR.sub(rf"\g<1>{new_mac}\g<3>", line)
            changes.append(f"{RULES_FILE}: {name.group(1)} now matches {new_mac} (was {mac})")
        elif mac in by_mac and by_mac[mac] != name.group(1):
            changes.append(f"{RULES_FILE}: rule naming {mac} {name.group(1)} disabled "
                           f"(pinned to {by_mac[mac]})")
            line = "# disabled by p2v fix: " + line
        out.append(line)
    return "".join(out), changes


# Where a guest's network configuration may key an interface by its MAC: networkd
# ([Match] MACAddress=, .link files), NetworkManager keyfiles (mac-address=), netplan
# (match: macaddress:), ifcfg (HWADDR=, MACADDR=), ifupdown (hwaddress), udev rules.
MAC_CONFIG_DIRS = ("/etc/systemd/network", "/etc/NetworkManager/system-connections",
                   "/etc/netplan", "/etc/sysconfig/network-scripts", "/etc/sysconfig/network",
                   "/etc/network/interfaces.d", "/etc/udev/rules.d")
MAC_CONFIG_FILES = ("/etc/network/interfaces",)
_MAC = re.compile(r"(?<![0-9A-Fa-f:-])([0-9A-Fa-f]{2}(?P<sep>[:-])(?:[0-9A-Fa-f]{2}(?P=sep)){4}"
                  r"[0-9A-Fa-f]{2})(?![0-9A-Fa-f:-])")


def follow_macs(text: str, mac_map: dict[str, str], where: str) -> tuple[str, list[str]]:
    """Every config keyed by a source NIC's MAC follows that NIC's new MAC in the VM.

    mac_map: old MAC -> new MAC (lower case, colons). A MAC written upper case or with
    dashes keeps its spelling; lines that are comments are left as they are.
    """
    changes: list[str] = []
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if line.lstrip().startswith(("#", ";")):
            out.append(line)
            continue

        def repl(match: re.Match[str], number: int = number) -> str:
            old = match.group(1)
            new = mac_map.get(old.lower().replace("-", ":"))
            if new is None:
                return old
            spelled = new.replace(":", match.group("sep"))
            spelled = spelled.upper() if old.isupper() else spelled
            changes.append(f"{where} line {number}: {old} -> {spelled}")
            return spelled

        out.append(_MAC.sub(repl, line))
    return "".join(out), changes


_IFUPDOWN = re.compile(r"^\s*(?:auto|allow-hotplug|iface)\s+([^\s:]+)", re.MULTILINE)
_IFCFG_DEVICE = re.compile(r"^\s*DEVICE=[\"']?([^\"'\s]+)", re.MULTILINE)


def configured_names(interfaces: str = "", ifcfg: tuple[str, ...] = (),
                     netplan: tuple[str, ...] = ()) -> list[str]:
    """Interface names the guest's own network configuration refers to (not lo)."""
    names: list[str] = []
    for match in _IFUPDOWN.finditer(interfaces):
        names.append(match.group(1))
    for text in ifcfg:
        names += _IFCFG_DEVICE.findall(text)
    for text in netplan:
        # Keys directly under "ethernets:" (a tiny YAML subset, enough for a report).
        block = re.search(r"^(\s*)ethernets:\s*\n((?:\1\s+.*\n?)*)", text, re.MULTILINE)
        if block:
            indent = None
            for line in block.group(2).splitlines():
                stripped = line.lstrip()
                depth = len(line) - len(stripped)
                if indent is None:
                    indent = depth
                if depth == indent and stripped.endswith(":"):
                    names.append(stripped[:-1].strip("\"'"))
    seen: list[str] = []
    for name in names:
        if name != "lo" and name not in seen:
            seen.append(name)
    return seen
