"""p2v: turn a running physical server into a bootable, verified KVM guest."""

__version__ = "0.1.0"
