"""Which task names an adapter trained on, so accuracy can be split into familiar and never-seen names.

A router that reads the list routes a task it never saw as well as a familiar one; one that memorised
names does not. The training files are every `--data` file named in the adapter's router.json: its
own run, its warm-start chain and, for an averaged adapter, every run in the mean. A name counts as
seen when it occurs in any task list of those files.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from .benchfile import open_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def _commands_and_files(node: object) -> Iterator[str]:
    """Every training data file a manifest names, in `training_data.files` or a `train_command`'s --data."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "train_command" and isinstance(value, str):
                words = shlex.split(value)
                yield from (words[i + 1] for i, w in enumerate(words[:-1]) if w == "--data")
            elif key == "training_data" and isinstance(value, dict):
                yield from value.get("files") or []
            else:
                yield from _commands_and_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _commands_and_files(item)


def training_files_of(manifests: list[dict]) -> list[str]:
    """The distinct training files of adapter manifests, in the order first named."""
    return list(dict.fromkeys(p for m in manifests for p in _commands_and_files(m)))


def resolve(path: str) -> Path | None:
    """A training file as recorded (relative to where `train` ran: the project root), or None if it is gone."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=64)
def _names_in(path: Path) -> frozenset[str]:
    names: set[str] = set()
    with open_text(path) as f:
        for line in f:
            if line.strip():
                names.update(t["name"] for t in json.loads(line)["tasks"])
    return frozenset(names)


def seen_names(manifests: list[dict]) -> tuple[frozenset[str], list[str]]:
    """(task names in the adapters' training files, training files that could not be found)."""
    names: set[str] = set()
    missing = []
    for path in training_files_of(manifests):
        found = resolve(path)
        if found is None:
            missing.append(path)
        else:
            names |= _names_in(found)
    return frozenset(names), missing
