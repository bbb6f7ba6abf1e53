"""libvirt as a target: the only package of p2v that imports the libvirt binding.

`conn` opens connections and turns libvirt's errors into p2v's; `host` registers a guest
(LibvirtTarget, a p2v.target.register.Target); `volumes` uploads into storage pools;
`bootcheck` runs the boot check's transient guest and sweeps what a killed run left.
"""

from p2v.target.libvirt.bootcheck import (
    VERIFY_PREFIX,
    TransientGuest,
    sweep_transient,
    sweep_transient_at,
)
from p2v.target.libvirt.conn import connect, is_local
from p2v.target.libvirt.host import DomainFacts, LibvirtTarget, keep_dir

__all__ = ["DomainFacts", "LibvirtTarget", "TransientGuest", "VERIFY_PREFIX", "connect",
           "is_local", "keep_dir", "sweep_transient", "sweep_transient_at"]
