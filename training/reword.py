"""The same conversations under another task list: every task renamed and re-described by a map, or the
list shuffled. Ids are kept, so `taskrouter eval` pairs a twin with its original: the accuracy gap says
whether the router reads the list or recognises names, and a shuffle how much the order sways it."""
from __future__ import annotations

import json
import random
from pathlib import Path

from taskrouter.evaluation.benchfile import check_conversation, read_conversations


def read_map(path: str | Path) -> dict[str, dict]:
    """A rewording map `{old name: {"name": new, "description": new}}`, each entry checked."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--map {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--map {path}: expected an object of old name -> {{name, description}}")
    for old, new in data.items():
        if not isinstance(new, dict) or not isinstance(new.get("name"), str) or not new["name"].strip():
            raise ValueError(f"--map {path}: entry {old!r} needs a non-empty \"name\"")
    return data


def reword(conv: dict, mapping: dict[str, dict] | None, rng: random.Random | None) -> dict:
    """One conversation with its tasks (and labels) renamed by `mapping` and/or its list shuffled by `rng`."""
    tasks = [dict(t) for t in conv["tasks"]]
    names = {t["name"]: t["name"] for t in tasks}
    if mapping is not None:
        missing = [t["name"] for t in tasks if t["name"] not in mapping]
        if missing:
            raise ValueError(f"conversation {conv['id']!r}: task {missing[0]!r} is not in the map")
        names = {t["name"]: mapping[t["name"]]["name"] for t in tasks}
        tasks = [{"name": mapping[t["name"]]["name"],
                  "description": mapping[t["name"]].get("description", t.get("description", ""))} for t in tasks]
    if rng is not None:
        rng.shuffle(tasks)
    labels = [{**lab, "task": names[lab["task"]] if lab["task"] else None} for lab in conv["labels"]]
    out = {**conv, "tasks": tasks, "labels": labels}
    check_conversation(out)  # e.g. a map that gives two tasks of one list the same name
    return out


def reword_file(src: str | Path, dst: str | Path, mapping: dict[str, dict] | None, shuffle_seed: int | None) -> int:
    """Write the twin of every conversation of `src` to `dst`; returns how many were written."""
    rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
    twins = [reword(conv, mapping, rng) for conv in read_conversations(Path(src))]
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in twins), encoding="utf-8")
    return len(twins)

