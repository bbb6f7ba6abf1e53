"""Writing disk images: qcow2 through qemu-storage-daemon over NBD."""
