"""Guest fixing with libguestfs: make a copied disk boot on virtio."""
