"""Turn router-bench conversations into training examples for the `adapter` prompt format.

One example per labelled user turn: the prompt is exactly what the router sends
at serving time (`build_prompt("adapter", ...)` + `encode_prompt`, with the gold
previous task as the current task), followed by the answer `answer_text(name)`;
the loss sees only the answer tokens. Turns are sampled balanced over events
(start / continue / switch / end / none) and augmented (task order shuffled,
distractors dropped, names rewritten, the gold task sometimes removed so the
answer becomes none) so the model reads the list instead of memorising names.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from taskrouter.events import event_for
from taskrouter.prompts import answer_text, build_prompt, encode_prompt
from taskrouter.schema import NONE, Message, Task

IGNORE = -100
EVENTS = ("start", "continue", "switch", "end", "none")
DEFAULT_BALANCE = {"start": 0.2, "continue": 0.25, "switch": 0.2, "end": 0.15, "none": 0.2}


@dataclass(frozen=True)
class Turn:
    """One labelled user turn: the conversation it belongs to, its gold task and the previous one."""

    record: dict = field(repr=False)  # the router-bench conversation (tasks, messages, labels)
    turn: int  # index of the user message in record["messages"]
    task: str | None
    previous: str | None
    source: str  # the file it came from (or "synthetic-switch")

    @property
    def event(self) -> str:
        return event_for(self.previous, self.task)


@dataclass
class Example:
    """Token ids of prompt + answer; `labels` is IGNORE on the prompt and the ids on the answer."""

    input_ids: list[int]
    labels: list[int]
    event: str
    source: str


@dataclass(frozen=True)
class Augment:
    """Probabilities of each augmentation (task order is always shuffled)."""

    drop_distractors: float = 0.3
    drop_gold: float = 0.08  # only where the gold task is not the current one: the answer becomes none
    rename: float = 0.2


def turns_of(record: dict, source: str) -> list[Turn]:
    """The labelled user turns of one conversation, each with its gold previous task."""
    turns, previous = [], None
    for label in sorted(record["labels"], key=lambda lab: lab["turn"]):
        turns.append(Turn(record, label["turn"], label["task"], previous, source))
        previous = label["task"]
    return turns


def read_turns(path: str | Path) -> list[Turn]:
    """All labelled turns of a router-bench JSONL file."""
    source = Path(path).parent.name + "/" + Path(path).stem
    turns: list[Turn] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    turns += turns_of(json.loads(line), source)
                except (ValueError, KeyError) as exc:
                    raise ValueError(f"{path}:{n}: not a router-bench conversation ({exc})") from None
    return turns


def splice_switch(a: Turn, b: Turn) -> Turn | None:
    """A synthetic switch: conversation `a` up to its turn (plus the assistant reply), then `b`'s first turn.

    `a` must be a turn with a task, `b` a start of another task; the list is `b`'s plus `a`'s task.
    """
    if a.task is None or b.task is None or b.previous is not None or a.task == b.task:
        return None
    messages = a.record["messages"][: a.turn + 2]
    if messages[-1]["role"] != "assistant":
        return None
    names = {t["name"] for t in b.record["tasks"]}
    carried = [t for t in a.record["tasks"] if t["name"] == a.task and t["name"] not in names]
    tasks = carried + b.record["tasks"]  # short: about one list's length
    record = {"id": f"{a.record['id']}+{b.record['id']}", "tasks": tasks,
              "messages": messages + [b.record["messages"][b.turn]], "labels": []}
    return Turn(record, len(messages), b.task, a.task, "synthetic-switch")


def sample_turns(turns: list[Turn], n: int, balance: dict[str, float], rng: random.Random,
                 synthetic_switch: float = 0.2) -> list[Turn]:
    """`n` turns drawn by event weight; within an event, evenly over source files.

    A `synthetic_switch` share of the switches are spliced from two conversations
    (cross-domain changes of mind that the corpora rarely contain).
    """
    buckets: dict[str, dict[str, list[Turn]]] = {}
    for t in turns:
        buckets.setdefault(t.event, {}).setdefault(t.source, []).append(t)
    can_splice = bool(_spliced(turns, 1, random.Random(0)))
    weights = {e: w for e, w in balance.items() if w > 0 and (buckets.get(e) or (e == "switch" and can_splice))}
    chosen: list[Turn] = []
    for event, want in _quotas(n, weights).items():
        if event == "switch":
            synthetic = want if not buckets.get("switch") else round(want * synthetic_switch)
            chosen += _spliced(turns, synthetic, rng)
            want -= synthetic
        sources = buckets.get(event, {})
        for i, (source, pool) in enumerate(sorted(sources.items())):
            k = want // len(sources) + (1 if i < want % len(sources) else 0)
            chosen += rng.sample(pool, k) if k <= len(pool) else rng.choices(pool, k=k)
    rng.shuffle(chosen)
    return chosen


def _quotas(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `n` in proportion to `weights`, exactly (largest remainders)."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    quotas = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: quotas[k] - exact[k])[: n - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


def _spliced(turns: list[Turn], k: int, rng: random.Random) -> list[Turn]:
    heads = [t for t in turns if t.task is not None and t.turn + 1 < len(t.record["messages"])]
    starts = [t for t in turns if t.event == "start"]
    out: list[Turn] = []
    for _ in range(k * 20 if heads and starts else 0):
        if len(out) == k:
            break
        spliced = splice_switch(rng.choice(heads), rng.choice(starts))
        if spliced is not None:
            out.append(spliced)
    return out


def _rename_style(rng: random.Random):
    """A consistent rewrite of every task name: camelCase, kebab-case, upper case, or opaque ids."""
    style = rng.choice(["camel", "kebab", "upper", "opaque"])
    numbers = rng.sample(range(10, 100), 90)

    def rename(name: str, index: int) -> str:
        words = [w for w in re.split(r"[_\s\-]+", name) if w]
        if style == "camel":
            return "".join(w[:1].upper() + w[1:] for w in words)
        if style == "kebab":
            return "-".join(w.lower() for w in words)
        if style == "upper":
            return "_".join(w.upper() for w in words)
        return f"task_{numbers[index % 90]}"

    return rename


def augment(turn: Turn, rng: random.Random, aug: Augment) -> tuple[list[dict], str | None, str | None]:
    """(tasks, current task, gold task) after shuffling, dropping and renaming, with the gold kept consistent."""
    tasks = list(turn.record["tasks"])
    gold, current = turn.task, turn.previous
    keep = {n for n in (gold, current) if n is not None}
    if rng.random() < aug.drop_distractors:
        distractors = [t for t in tasks if t["name"] not in keep]
        dropped = {t["name"] for t in rng.sample(distractors, rng.randint(0, len(distractors)))}
        if len(tasks) - len(dropped) < 2:  # keep a choice to make
            dropped = set(list(dropped)[: max(0, len(tasks) - 2)])
        tasks = [t for t in tasks if t["name"] not in dropped]
    if gold is not None and gold != current and rng.random() < aug.drop_gold and len(tasks) > 1:
        tasks = [t for t in tasks if t["name"] != gold]
        gold = None  # what the user asks for is no longer on the list
    rng.shuffle(tasks)
    if rng.random() < aug.rename:
        rename = _rename_style(rng)
        mapping = {t["name"]: rename(t["name"], i) for i, t in enumerate(tasks)}
        if len(set(mapping.values())) == len(mapping) and NONE not in {v.lower() for v in mapping.values()}:
            tasks = [{**t, "name": mapping[t["name"]]} for t in tasks]
            gold, current = mapping.get(gold, gold), mapping.get(current, current)
    return tasks, current, gold


def encode_example(tokenizer, tasks: list[dict], messages: list[dict], current: str | None, gold: str | None,
                   max_tokens: int, source: str = "") -> Example:
    """Prompt ids (the serving code path) + answer ids; labels only on the answer."""
    prompt = build_prompt("adapter", [Task(**t) for t in tasks], [Message(**m) for m in messages], current)
    prompt_ids = encode_prompt(tokenizer, prompt, max_tokens).ids
    answer_ids = tokenizer.encode(answer_text(gold or NONE), add_special_tokens=False)
    return Example(input_ids=prompt_ids + answer_ids, labels=[IGNORE] * len(prompt_ids) + answer_ids,
                   event=event_for(current, gold), source=source)


def build_examples(tokenizer, turns: list[Turn], max_tokens: int, rng: random.Random,
                   aug: Augment | None = Augment()) -> list[Example]:
    """One example per turn, augmented unless `aug` is None."""
    examples = []
    for turn in turns:
        if aug is None:
            tasks, current, gold = turn.record["tasks"], turn.previous, turn.task
        else:
            tasks, current, gold = augment(turn, rng, aug)
        messages = turn.record["messages"][: turn.turn + 1]
        examples.append(encode_example(tokenizer, tasks, messages, current, gold, max_tokens, turn.source))
    return examples


def summarize(examples: list[Example]) -> dict:
    """Counts by event and by source, for the manifest."""
    return {"total": len(examples),
            "by_event": dict(sorted(Counter(e.event for e in examples).items())),
            "by_source": dict(sorted(Counter(e.source for e in examples).items()))}
