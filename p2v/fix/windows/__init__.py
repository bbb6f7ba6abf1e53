"""Windows guests: virtio-win drivers injected offline (p2v.fix.windows.fixer)."""
