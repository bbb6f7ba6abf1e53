"""The libvirt fixtures of the register tests (see tests/libvirt_env.py)."""

from libvirt_env import (  # noqa: F401 - pytest finds fixtures by name
    guest_dir,
    guest_names,
    host_bridge,
    isolated_network,
    libvirtd,
    ssh_uri,
    storage_pool,
)
