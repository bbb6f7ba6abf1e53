"""Boot checks: does an image reach userspace under qemu, and why not."""
