"""Linux guests: device names, initramfs drivers, boot loader, NIC names (p2v.fix.linux.fixer)."""
