"""Reading the source server: SSH connection, inventory, extents."""
