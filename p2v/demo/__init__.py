"""The test bed: legacy-server fixture images and the SSH sources that serve them."""
