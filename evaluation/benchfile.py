"""Read, check and sample router-bench files (BENCH_FORMAT.md).

A benchmark is named after its file (`sales`, or `sgd-dev` for a generic split
name such as dev.jsonl); `--limit N` keeps the first N conversations of a
seeded shuffle, so a larger limit with the same seed extends a smaller one and
a resumed run samples exactly the same conversations.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from taskrouter.events import event_for

SPLIT_NAMES = {"train", "dev", "val", "valid", "validation", "test"}


@dataclass(frozen=True)
class Bench:
    """A benchmark file, its display name and the sampled conversations."""

    name: str
    path: Path
    total: int  # conversations in the file
    conversations: list[dict]
    limit: int | None
    seed: int


def bench_name(path: Path) -> str:
    """`sales` for sales.jsonl; `sgd-dev` for sgd/dev.jsonl, whose stem alone says little."""
    stem = path.name.removesuffix(".jsonl")
    return f"{path.parent.name}-{stem}" if stem in SPLIT_NAMES and path.parent.name else stem


def check_conversation(conv: dict) -> None:
    """Raise ValueError naming the first violation of BENCH_FORMAT in one conversation."""
    where = f"conversation {conv.get('id')!r}"
    for key in ("id", "tasks", "messages", "labels"):
        if key not in conv:
            raise ValueError(f"{where}: missing field {key!r}")
    names = [t["name"] for t in conv["tasks"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate task names")
    if "none" in (n.lower() for n in names):
        raise ValueError(f"{where}: 'none' is not a task name")
    messages = conv["messages"]
    user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
    turns = [label["turn"] for label in conv["labels"]]
    if turns != user_turns:
        raise ValueError(f"{where}: label turns {turns} are not the user message indices {user_turns}")
    previous = None
    for label in conv["labels"]:
        if label["task"] is not None and label["task"] not in names:
            raise ValueError(f"{where} turn {label['turn']}: task {label['task']!r} is not in its task list")
        expected = event_for(previous, label["task"])
        if label["event"] != expected:
            raise ValueError(f"{where} turn {label['turn']}: event {label['event']!r}, expected {expected!r}")
        previous = label["task"]


def read_conversations(path: Path) -> list[dict]:
    """All conversations of a JSONL file, each checked; errors name the file and line."""
    conversations = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                conv = json.loads(line)
                check_conversation(conv)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from None
            conversations.append(conv)
    return conversations


def sample(conversations: list[dict], limit: int | None, seed: int) -> list[dict]:
    """The first `limit` conversations of a seeded shuffle, in file order (all when no limit)."""
    if not limit or limit >= len(conversations):
        return list(conversations)
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    return [conversations[i] for i in sorted(order[:limit])]


def load_bench(spec: str, limit: int | None = None, seed: int = 0) -> Bench:
    """Load `PATH` or `PATH@N` (N overrides `limit` for this file) and sample it."""
    path_text, _, own_limit = spec.rpartition("@") if "@" in Path(spec).name else (spec, "", "")
    if own_limit:
        if not own_limit.isdigit():
            raise ValueError(f"--bench {spec}: the limit after @ must be a number")
        limit = int(own_limit)
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"--bench {path}: no such file")
    conversations = read_conversations(path)
    ids = [c["id"] for c in conversations]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--bench {path}: conversation ids are not unique")
    return Bench(bench_name(path), path, len(conversations), sample(conversations, limit, seed), limit, seed)
