"""Read, check and sample router-bench files (BENCH_FORMAT.md).

A benchmark is named after its file (`sales`, or `sgd-dev` for a generic split
name such as dev.jsonl, `sgd_x-dev_v4` for dev_v4.jsonl.gz); files may be gzipped.
`--limit N` keeps the N conversations whose ids come first in a seeded hash order,
so a larger limit with the same seed extends a smaller one, a resumed run samples
exactly the same conversations, and two files of the same dialogues (SGD dev and its
SGD-X rewordings share ids) sample the same ones.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
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


def open_text(path: Path | str):
    """A JSONL file opened for reading text, gunzipped when its name ends in .gz."""
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def bench_name(path: Path) -> str:
    """`sales` for sales.jsonl; `sgd-dev` for sgd/dev.jsonl, `sgd_x-dev_v4` for sgd_x/dev_v4.jsonl.gz and
    `assistant-dev-reworded` for assistant/dev-reworded.jsonl, whose stems alone say little."""
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    generic = re.split(r"[_-]", stem)[0] in SPLIT_NAMES  # dev, dev_v4, dev-reworded
    return f"{path.parent.name}-{stem}" if generic and path.parent.name else stem


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
    with open_text(path) as f:
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
    """The `limit` conversations whose ids rank first in a seeded hash order, in file order (all when no limit)."""
    if not limit or limit >= len(conversations):
        return list(conversations)

    def rank(conv: dict) -> bytes:
        return hashlib.blake2b(f"{seed}:{conv['id']}".encode(), digest_size=8).digest()

    chosen = {id(c) for c in sorted(conversations, key=rank)[:limit]}
    return [c for c in conversations if id(c) in chosen]


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
