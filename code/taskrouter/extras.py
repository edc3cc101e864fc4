"""Optional dependencies (pip extras): import one, or say in one line which extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(RuntimeError):
    """An optional dependency a command needs is not installed; the message names the pip extra."""


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import `module`, or raise `MissingExtra`: "`needed_by` needs X: pip install 'taskrouter[extra]'"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the module is there but one of its own imports is broken: not a missing extra
        raise MissingExtra(f"{needed_by} needs {exc.name}: pip install 'taskrouter[{extra}]'") from None
