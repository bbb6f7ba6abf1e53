"""Other hypervisors' guest agents and hardware vendors' management agents: find, and remove.

On KVM they are dead weight at best (VMware Tools, Hyper-V daemons, VirtualBox additions
looking for their hypervisor) and at worst harmful (HPE/Dell agents polling hardware that is
gone, logging errors or stalling boot). `p2v fix` always reports them; `--remove-agents`
removes them with the guest's own package tool.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

# (package name pattern, what it is). Patterns match the installed package names.
AGENT_PACKAGES: tuple[tuple[str, str], ...] = (
    ("open-vm-tools*", "VMware guest agent"),
    ("vmware-tools*", "VMware guest agent"),
    ("VMwareTools*", "VMware guest agent"),
    ("virtualbox-guest-*", "VirtualBox guest additions"),
    ("VBoxGuestAdditions*", "VirtualBox guest additions"),
    ("hyperv-daemons*", "Hyper-V guest daemons"),
    ("hypervkvpd", "Hyper-V guest daemons"),
    ("hypervvssd", "Hyper-V guest daemons"),
    ("hypervfcopyd", "Hyper-V guest daemons"),
    ("xe-guest-utilities*", "Xen/XenServer guest agent"),
    ("parallels-tools*", "Parallels guest tools"),
    ("hp-health", "HPE hardware agent"),
    ("hp-snmp-agents", "HPE hardware agent"),
    ("hpsmh", "HPE System Management Homepage"),
    ("amsd", "HPE Agentless Management Service"),
    ("hp-ams", "HPE Agentless Management Service"),
    ("srvadmin-*", "Dell OpenManage Server Administrator"),
    ("dcism*", "Dell iDRAC Service Module"),
)


@dataclass(frozen=True)
class Agent:
    package: str
    what: str


def find_agents(packages: list[str]) -> list[Agent]:
    """The installed packages that are another platform's or a hardware vendor's agents."""
    found = []
    for package in sorted(set(packages)):
        for pattern, what in AGENT_PACKAGES:
            if fnmatch.fnmatchcase(package, pattern):
                found.append(Agent(package, what))
                break
    return found


def remove_argv(package_format: str, packages: list[str]) -> list[str] | None:
    """The command that removes packages offline inside the guest, or None if unknown.

    apt-get removes without the network (nothing to download); rpm -e needs no repositories
    (dnf/yum/zypper would try to reach theirs).
    """
    if not packages:
        return None
    if package_format == "deb":
        return ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q",
                "remove", "--purge", *packages]
    if package_format == "rpm":
        return ["rpm", "-e", *packages]
    return None
