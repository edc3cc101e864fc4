"""taskrouter.training (folder `training/`)."""
