"""taskrouter.evaluation (folder `evaluation/`)."""
