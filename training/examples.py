"""Turn router-bench conversations into training packs for the `adapter` prompt format.

A pack is one task list (the prompt head) and the examples that share it: the
labelled turns of one conversation, or single-turn requests (CLINC-style rows)
regrouped under one row's list. Each example is exactly the serving prompt
(`build_prompt("adapter", ...)` + `encode_prompt`, with the gold previous task as
the current task, or the router's own in a closed-loop replay) followed by the
answer `answer_text(name)`; the loss sees only the answer tokens. The trainer
runs a whole pack in one forward pass with tree attention (every example sees the
head and itself), which is why packs exist: the head (~170 tokens on SGD)
outweighs the conversation an adapter keeps after it (`--history-tokens`, 96 by
default), so sharing it makes training cheaper for the same gradients
(`taskrouter bench train` measures the gain: docs/performance.md).
Augmentation is per pack (task order shuffled, distractors dropped, one task
removed so its turns become none, names rewritten in one style; opt-in: a name's
leading verb swapped, every name restyled on its own - abbreviated, reordered, an
opaque code - and some descriptions left out) so the model learns to read the list
instead of memorising names, and, opt-in, per turn (a wrong current task, to recover
from its own mistakes in a live conversation);
events are balanced by thinning each pack's turns with per-event keep probabilities.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from taskrouter.evaluation.benchfile import open_text
from taskrouter.events import event_for
from taskrouter.prompts import answer_text, build_prompt, encode_prompt
from taskrouter.schema import NONE, Message, Task

from .closed_loop import CURRENTS, gold_currents, replay_records

IGNORE = -100
EVENTS = ("start", "continue", "switch", "end", "none")
DEFAULT_BALANCE = {"start": 0.2, "continue": 0.25, "switch": 0.2, "end": 0.15, "none": 0.2}
REGROUP_IN_LIST = 6  # single-turn requests whose task is on the pack's list
REGROUP_OTHER = 2  # random single-turn requests: mostly none for that list
REGROUP_EXTEND = (0.5, 8)  # chance of adding up to 8 tasks from other rows: longer lists to read


@dataclass(frozen=True)
class Query:
    """One labelled user turn to train on: the messages up to it, the gold previous task and its gold task."""

    messages: tuple[dict, ...] = field(repr=False)
    current: str | None
    gold: str | None
    source: str

    @property
    def event(self) -> str:
        return event_for(self.current, self.gold)


@dataclass(frozen=True)
class Plan:
    """A task list and the queries routed against it (before tokenisation)."""

    tasks: tuple[dict, ...]
    queries: tuple[Query, ...]


@dataclass
class Example:
    """Token ids after the shared head (kept messages + tail + answer); labels only on the answer."""

    ids: list[int]
    labels: list[int]
    event: str
    source: str


@dataclass
class Pack:
    """Examples sharing one head (instruction + task list): one forward pass trains them all."""

    head: list[int]
    examples: list[Example]


@dataclass(frozen=True)
class Augment:
    """Probabilities of each per-pack augmentation (task order is always shuffled)."""

    drop_distractors: float = 0.3
    drop_gold: float = 0.08  # one task the pack asks for leaves the list: its turns become none
    rename: float = 0.2
    # Off by default: an adapter warm-started with swap_verbs=0.3,wrong_current=0.1 gained on the
    # held-out assistant domains but not on SGD dev or sales (README, "Measured, not shipped").
    swap_verbs: float = 0.0  # some names' leading verb replaced (see VERBS)
    # A later turn's current task replaced by another listed task or none, the gold unchanged. In a
    # live conversation the current task is the router's own last answer, sometimes wrong, and must
    # not be kept just because it is current.
    wrong_current: float = 0.0
    # Each task of the list rewritten in a style of its own (see NAME_STYLES), as clients mix styles:
    # a name the model has seen comes back abbreviated, reordered or as an opaque code whose
    # description carries the meaning, so recognising names stops paying and reading the list does.
    mix_names: float = 0.0
    drop_descriptions: float = 0.0  # per task whose name keeps its words: the description left out


# Leading words of task names. Most SGD names start with their description's verb (find_events:
# "Find events..."), so without a swap the adapter learns to echo the description's first word:
# on SGD dev it answered get_alarms to "check my balance" because check_balance reads "Get the
# balance of an account" (145 of its 561 wrong-task turns showed that echo).
VERBS = ("get", "find", "search", "check", "book", "reserve", "make", "add", "set", "lookup", "show",
         "buy", "request", "schedule", "send", "create", "update", "plan", "write", "prepare")


def file_source(path: str | Path) -> str:
    """The source a training file's records are tagged with: `dir/stem` (sgd/train, sgd_x/train_v2)."""
    return Path(path).parent.name + "/" + Path(path).name.removesuffix(".gz").removesuffix(".jsonl")


def read_records(path: str | Path) -> list[dict]:
    """The conversations of a router-bench JSONL file (gzipped or not), each tagged with its `file_source`."""
    source = file_source(path)
    records = []
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    record["tasks"], record["messages"], record["labels"]  # noqa: B018 (shape check)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: not a router-bench conversation ({exc})") from None
                records.append({**record, "source": source})
    return records


def conversation_plan(record: dict) -> Plan:
    """Every labelled turn of one conversation, each with its gold previous task as the current task,
    or, for a closed-loop replay, the one the router sent."""
    labels = sorted(record["labels"], key=lambda lab: lab["turn"])
    currents = record.get(CURRENTS) or gold_currents(labels)
    return Plan(tuple(record["tasks"]), tuple(Query(tuple(record["messages"][: label["turn"] + 1]), current,
                                                    label["task"], record["source"])
                                              for label, current in zip(labels, currents)))


def is_single_turn(record: dict) -> bool:
    return len(record["messages"]) == 1 and len(record["labels"]) == 1


class Regrouper:
    """Single-turn requests of one source, regrouped under one row's task list.

    A request whose task is on the list keeps it; any other becomes none, which is
    what the router must answer when the list does not offer what the user asks.
    Lists are sometimes lengthened with other rows' tasks, so the model also learns
    to read lists longer than the source's own.
    """

    def __init__(self, records: list[dict]):
        self.records = records
        self.by_task: dict[str, list[dict]] = {}
        for r in records:
            if r["labels"][0]["task"] is not None:
                self.by_task.setdefault(r["labels"][0]["task"], []).append(r)

    def plan(self, record: dict, rng: random.Random) -> Plan:
        tasks = list(record["tasks"])
        names = {t["name"] for t in tasks}
        chance, most = REGROUP_EXTEND
        if rng.random() < chance:
            for _ in range(rng.randint(1, most)):
                pool = rng.choice(self.records)["tasks"]
                extra = rng.choice(pool) if pool else None
                if extra and extra["name"] not in names:
                    names.add(extra["name"])
                    tasks.append(extra)
        offered = sorted(names & self.by_task.keys())
        picks = [record] + [rng.choice(self.by_task[n]) for n in rng.sample(offered, min(REGROUP_IN_LIST, len(offered)))]
        picks += [rng.choice(self.records) for _ in range(REGROUP_OTHER)]
        seen, queries = set(), []
        for r in picks:
            if r["id"] not in seen:
                seen.add(r["id"])
                task = r["labels"][0]["task"]
                queries.append(Query(tuple(r["messages"][:1]), None, task if task in names else None, r["source"]))
        return Plan(tuple(tasks), tuple(queries))


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


NAME_STYLES = ("keep", "camel", "kebab", "upper", "title", "spaced", "abbrev", "reorder", "opaque")
OPAQUE_FORMS = ("t{n}", "T-{n}", "task_{n}", "op{n}", "wf-{n}{n2}", "{a}{n}", "{a}{a2}_{n}")


def name_words(name: str) -> list[str]:
    """The words of a task name in any style: snake, kebab, spaced or camelCase."""
    return [w for w in re.split(r"[_\s\-]+|(?<=[a-z0-9])(?=[A-Z])", name) if w]


def _mixed_styles(rng: random.Random, opaque: set[str]):
    """A rewrite of each name in a style drawn for that name alone (a third keep theirs); names made
    opaque are recorded in `opaque` so their description is never dropped."""
    numbers = rng.sample(range(1, 100), 99)
    letters = "ABCDEFGHKMNPRSTVWXZ"

    def rename(name: str, index: int) -> str:
        words = name_words(name)
        style = "keep" if rng.random() < 1 / 3 or not words else rng.choice(NAME_STYLES[1:])
        if style == "camel":
            return words[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in words[1:])
        if style == "kebab":
            return "-".join(w.lower() for w in words)
        if style == "upper":
            return "_".join(w.upper() for w in words)
        if style == "title":
            return " ".join(w[:1].upper() + w[1:].lower() for w in words)
        if style == "spaced":
            return " ".join(w.lower() for w in words)
        if style == "abbrev":
            return "_".join(w[:3].lower() if len(w) > 4 else w.lower() for w in words)
        if style == "reorder" and len(words) > 1:
            return "_".join(w.lower() for w in words[1:] + words[:1])
        if style == "opaque":
            opaque.add(name)
            return rng.choice(OPAQUE_FORMS).format(n=numbers[index % 99], n2=rng.randint(0, 9),
                                                   a=rng.choice(letters), a2=rng.choice(letters))
        return name

    return rename


def _reworded(tasks: list[dict], queries: list[Query], rng: random.Random, aug: Augment) -> tuple[list[dict], list[Query]]:
    """Every task restyled on its own (when `mix_names` draws it), then some descriptions dropped where
    the name still says what the task is."""
    opaque: set[str] = set()
    if aug.mix_names and rng.random() < aug.mix_names:
        before = [t["name"] for t in tasks]
        tasks, queries = _renamed(tasks, queries, _mixed_styles(rng, opaque))
        opaque = {new["name"] for old, new in zip(before, tasks) if old in opaque}
    if aug.drop_descriptions:
        tasks = [{**t, "description": ""} if t["name"] not in opaque and t.get("description") and
                 len(name_words(t["name"])) > 1 and rng.random() < aug.drop_descriptions else t for t in tasks]
    return tasks, queries


def _swap_verbs(rng: random.Random):
    """A rewrite of some multi-word names' first word to another verb, the description untouched."""
    def swap(name: str, index: int) -> str:
        first, sep, rest = name.partition("_")
        if not rest or rng.random() < 0.5:
            return name
        return rng.choice([v for v in VERBS if v != first.lower()]) + sep + rest

    return swap


def _renamed(tasks: list[dict], queries: list[Query], rename) -> tuple[list[dict], list[Query]]:
    """Tasks and queries under `rename(name, index)`, unchanged if it would merge names or make one none."""
    mapping = {t["name"]: rename(t["name"], i) for i, t in enumerate(tasks)}
    if len(set(mapping.values())) < len(mapping) or NONE in {v.lower() for v in mapping.values()}:
        return tasks, queries
    return ([{**t, "name": mapping[t["name"]]} for t in tasks],
            [replace(q, gold=mapping.get(q.gold, q.gold), current=mapping.get(q.current, q.current)) for q in queries])


def augment(plan: Plan, rng: random.Random, aug: Augment) -> Plan:
    """The plan after shuffling, dropping and renaming tasks (gold and current tasks follow their task),
    then with some later turns given a wrong current task."""
    tasks = list(plan.tasks)
    queries = list(plan.queries)
    used = {n for q in queries for n in (q.gold, q.current) if n is not None}
    if rng.random() < aug.drop_distractors:
        distractors = [t["name"] for t in tasks if t["name"] not in used]
        room = max(0, len(tasks) - 2)  # keep a choice to make
        dropped = set(rng.sample(distractors, min(room, rng.randint(0, len(distractors)))))
        tasks = [t for t in tasks if t["name"] not in dropped]
    if used and len(tasks) > 2 and rng.random() < aug.drop_gold:
        gone = rng.choice(sorted(used))
        tasks = [t for t in tasks if t["name"] != gone]
        queries = [replace(q, gold=None if q.gold == gone else q.gold,
                           current=None if q.current == gone else q.current) for q in queries]
    rng.shuffle(tasks)
    # The newer augmentations draw no random number when off, so an older train_command samples as it did.
    if aug.swap_verbs and rng.random() < aug.swap_verbs:
        tasks, queries = _renamed(tasks, queries, _swap_verbs(rng))
    if rng.random() < aug.rename:
        tasks, queries = _renamed(tasks, queries, _rename_style(rng))
    tasks, queries = _reworded(tasks, queries, rng, aug)
    if aug.wrong_current:
        names = [t["name"] for t in tasks] + [None]
        queries = [replace(q, current=rng.choice([n for n in names if n != q.current]))
                   if len(q.messages) > 1 and rng.random() < aug.wrong_current else q for q in queries]
    return Plan(tuple(tasks), tuple(queries))


def keep_probabilities(counts: Counter, balance: dict[str, float]) -> dict[str, float]:
    """Per-event keep probability that turns event counts `counts` into the shares of `balance`.

    The event most under-represented relative to its target is always kept.
    """
    ratio = {e: balance.get(e, 0) / counts[e] for e in counts if counts[e]}
    top = max(ratio.values(), default=0)
    return {e: r / top for e, r in ratio.items()} if top else {}


def source_of(record: dict) -> str:
    """The sampling source of a record: its file's `dir/stem`, rewordings of one corpus (`_v1`, `_v2`...) together."""
    return re.sub(r"_v\d+$", "", record["source"])


def weighted_rounds(sources: list[str], weights: dict[str, float]):
    """An endless, deterministic order of sources in proportion to `weights` (smooth weighted round robin:
    equal weights give plain round robin)."""
    current = dict.fromkeys(sources, 0.0)
    total = sum(weights[s] for s in sources)
    while True:
        for s in sources:
            current[s] += weights[s]
        best = max(sources, key=current.__getitem__)  # the first of equals
        current[best] -= total
        yield best


def sample_plans(records: list[dict], n: int, balance: dict[str, float], rng: random.Random,
                 aug: Augment | None = Augment(), pilot: int = 300, mix: dict[str, float] | None = None) -> list[Plan]:
    """Plans holding `n` queries in all, drawn over sources in proportion to `mix` (a source not named
    weighs 1), events thinned toward `balance`."""
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(source_of(r), []).append(r)
    unknown = sorted(set(mix or {}) - set(by_source))
    if unknown:
        raise ValueError(f"--mix: no --data file is source {unknown[0]!r} (sources: {', '.join(sorted(by_source))})")
    regroupers = {s: Regrouper([r for r in rs if is_single_turn(r)]) for s, rs in by_source.items()}
    sources = sorted(by_source)
    weights = {s: (mix or {}).get(s, 1.0) for s in sources}

    def draw(rounds) -> Plan:
        source = next(rounds)
        record = rng.choice(by_source[source])
        plan = regroupers[source].plan(record, rng) if is_single_turn(record) else conversation_plan(record)
        return augment(plan, rng, aug) if aug else plan

    pilot_rounds = weighted_rounds(sources, weights)
    counts = Counter(q.event for _ in range(pilot) for q in draw(pilot_rounds).queries)
    keep = keep_probabilities(counts, balance)
    plans, total, rounds = [], 0, weighted_rounds(sources, weights)  # the sampling starts the order afresh
    while total < n and keep:
        plan = draw(rounds)
        queries = [q for q in plan.queries if rng.random() < keep.get(q.event, 0)][: n - total]
        if queries:
            plans.append(Plan(plan.tasks, tuple(queries)))
            total += len(queries)
    return plans


def sample_packs(tokenizer, paths: list[str], n: int, balance: dict[str, float], seed: int,
                 history_tokens: int, aug: Augment = Augment(), closed_loop: Sequence[str] = (),
                 mix: dict[str, float] | None = None, prompt_format: str = "adapter") -> list[Pack]:
    """`n` examples from router-bench files (and their closed-loop replays, each file a source of its
    own), sampled, augmented and tokenised into packs."""
    from tqdm import tqdm

    records = [r for path in paths for r in read_records(path)]
    if not any(r["labels"] for r in records):
        raise ValueError("--data: the files hold no labelled turns")
    records += [r for path in closed_loop for r in replay_records(records, path)]
    plans = sample_plans(records, n, balance, random.Random(seed), aug, mix=mix)
    return [encode_pack(tokenizer, plan, history_tokens, prompt_format)
            for plan in tqdm(plans, desc="tokenise", unit="pack")]


def encode_pack(tokenizer, plan: Plan, history_tokens: int, prompt_format: str = "adapter") -> Pack:
    """Token ids of the plan's head and of each query's serving prompt beyond it plus the answer."""
    tasks = [Task(**t) for t in plan.tasks]
    head: list[int] = []
    examples = []
    for q in plan.queries:
        prompt = build_prompt("adapter", tasks, [Message(**m) for m in q.messages], q.current, prompt_format)
        encoded = encode_prompt(tokenizer, prompt, history_tokens=history_tokens)
        head = encoded.segments[0]  # the same for every query: it depends on the task list only
        body = [i for segment in encoded.segments[1:] for i in segment]
        answer = tokenizer.encode(answer_text(q.gold or NONE), add_special_tokens=False)
        examples.append(Example(body + answer, [IGNORE] * len(body) + answer, q.event, q.source))
    return Pack(head, examples)


def summarize(packs: list[Pack]) -> dict:
    """Counts by event and by source, for the manifest."""
    examples = [e for p in packs for e in p.examples]
    return {"total": len(examples), "packs": len(packs),
            "by_event": dict(sorted(Counter(e.event for e in examples).items())),
            "by_source": dict(sorted(Counter(e.source for e in examples).items()))}
