"""taskrouter.model_artifacts (folder `model_artifacts/`): the adapters that ship with the package."""
