"""Where the files that ship with taskrouter live, in a source checkout and in an installed wheel alike.

pyproject maps `model_artifacts/`, `loadtest/`, `evaluation/` and `code/` into the `taskrouter`
namespace and ships their data files, so the shipped adapters, the eval configs and sample bench,
the locustfile and the artifact's `inference.py` are found through the import system, never by
counting folders up from a source file.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _package_folder(package: str) -> Path:
    """The folder of `package`; where it is not installed (a SageMaker artifact's code/ carries the core
    library only), where it would be, which holds nothing."""
    try:
        return Path(str(files(package)))
    except ModuleNotFoundError:
        return PACKAGE / package.removeprefix("taskrouter.")


def adapters_dir() -> Path:
    """The shipped adapters (`model_artifacts/adapters/` in a checkout)."""
    return _package_folder("taskrouter.model_artifacts") / "adapters"


def locustfile() -> Path:
    """The Locust scenario `taskrouter loadtest` runs (`loadtest/locustfile.py`)."""
    return _package_folder("taskrouter.loadtest") / "locustfile.py"


def sample_bench() -> Path:
    """The small router-bench file `taskrouter eval` and `taskrouter loadtest` use by default."""
    return _package_folder("taskrouter.evaluation") / "benchmarks" / "sample.jsonl"


def artifact_code_dir() -> Path:
    """The folder holding the artifact's `inference.py` and `requirements.txt`.

    A wheel keeps them in `taskrouter/artifact_code/`; a checkout in `code/`, the folder that holds
    this package (code/ has no `__init__.py`: a package named `code` would shadow the standard library's).
    """
    for folder in (PACKAGE / "artifact_code", PACKAGE.parent):
        if (folder / "inference.py").is_file() and (folder / "requirements.txt").is_file():
            return folder
    raise FileNotFoundError(f"no inference.py + requirements.txt in {PACKAGE / 'artifact_code'} or {PACKAGE.parent}: "
                            "reinstall taskrouter")
