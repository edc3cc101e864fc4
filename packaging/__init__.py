"""taskrouter.packaging (folder `packaging/`)."""
