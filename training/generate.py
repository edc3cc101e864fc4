"""Synthetic router-bench conversations written by a teacher LLM from scripted situations.

Each conversation slot `i` has a deterministic id and a scripted plan drawn from
(seed, i): the user does one task, switches to another mid-way, closes the task,
or asks for something that matches no task. The teacher sees the task list, the
plan and two example conversations in the target JSON format (few-shot), and
answers one JSON object. Its answer is checked against BENCH_FORMAT and the plan;
anything malformed is rejected, counted by reason and never written. The output
is appended and fsynced line by line, so a rerun resumes where a crash stopped.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from taskrouter.events import event_for
from taskrouter.schema import NONE, Task

from .records import BenchRecord, check_generated, describe, parse_shares
from .teacher import Teacher, TeacherError

# share of each scripted situation; `task` = one task from start to the last turn
MIX = {"task": 0.35, "switch": 0.25, "end": 0.25, "none": 0.15}
STYLES = ("terse, with short messages", "polite and detailed", "informal, with a typo or two",
          "in a hurry, giving details piecemeal", "precise, quoting names, dates and figures")

EXAMPLE_TASKS = [
    {"name": "meeting_recap", "description": "Write a recap of a meeting with a client"},
    {"name": "follow_up_email", "description": "Write a follow-up email to a prospect"},
    {"name": "prepare_a_quote", "description": "Prepare a price quote for a client"},
]
# few-shot examples in the exact format the teacher must answer (a switch, then an end)
EXAMPLES = [
    {"messages": [
        {"role": "user", "content": "Can you write up my call with Dana from Northwind this morning?"},
        {"role": "assistant", "content": "Sure. What were the main points and next steps?"},
        {"role": "user", "content": "They want 40 seats, pilot in March, legal review pending."},
        {"role": "assistant", "content": "Recap: 40 seats, March pilot, legal review open. Anything to add?"},
        {"role": "user", "content": "Looks good. Now draft the quote for those 40 seats at the annual rate."},
    ], "labels": [
        {"turn": 0, "task": "meeting_recap", "event": "start"},
        {"turn": 2, "task": "meeting_recap", "event": "continue"},
        {"turn": 4, "task": "prepare_a_quote", "event": "switch"},
    ]},
    {"messages": [
        {"role": "user", "content": "I need to follow up with the Acme buyer we met at the trade show."},
        {"role": "assistant", "content": "Happy to draft it. Any points you want to mention?"},
        {"role": "user", "content": "Mention the case study and propose a demo next week."},
        {"role": "assistant", "content": "Draft: 'Hi Sam, great meeting you at the show...' Shall I send it?"},
        {"role": "user", "content": "Perfect, that's all for now, thanks!"},
    ], "labels": [
        {"turn": 0, "task": "follow_up_email", "event": "start"},
        {"turn": 2, "task": "follow_up_email", "event": "continue"},
        {"turn": 4, "task": None, "event": "end"},
    ]},
]

SYSTEM = """You write realistic training data for a task router used by a professional's AI assistant.
Write one conversation between a professional (role "user") and their assistant (role "assistant"),
following the plan you are given, then label every user message with the task the user is doing after it.

Answer with ONE JSON object and nothing else:
{"messages": [{"role": "user" | "assistant", "content": "..."}, ...],
 "labels": [{"turn": <index of a user message in messages>, "task": <a task name from the list, or null>,
             "event": "start" | "continue" | "switch" | "end" | "none"}, ...]}
Rules: messages alternate user / assistant, start AND end with a user message; one label per user message;
a task name is copied exactly from the task list; null means the user is doing no listed task.
event from the previous user message's task P (null before the first) and this one's T:
P null, T null: none; P null, T set: start; T == P: continue; T != P (both set): switch; P set, T null: end.
Users rarely name the task: they describe what they need in their own words."""


@dataclass(frozen=True)
class Plan:
    """The scripted situation of one conversation: the tasks in order (None = no task) and the length."""

    kind: str
    phases: tuple[str | None, ...]
    user_turns: int
    style: str


@dataclass
class Summary:
    """What a run did: lines already there, lines written, rejects by reason, HTTP retries."""

    target: int
    existing: int = 0
    written: int = 0
    dropped: int = 0
    retries: int = 0
    rejected: Counter = field(default_factory=Counter)
    stopped: str | None = None

    def lines(self) -> list[str]:
        out = [f"written: {self.written} (file now holds {self.existing + self.written} of {self.target}; "
               f"{self.existing} were already there)",
               f"rejected: {sum(self.rejected.values())}"]
        out += [f"  {reason}: {count}" for reason, count in sorted(self.rejected.items())]
        out.append(f"retries: {self.retries}")
        if self.dropped:
            out.append(f"dropped from the existing file (invalid or cut-off lines): {self.dropped}")
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        return out


def read_tasks(path: str | Path) -> list[dict]:
    """The task list of a JSON file (a list, or an object with "tasks"), each checked with the core Task model."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tasks {path}: {exc}") from None
    items = data.get("tasks") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError(f"--tasks {path}: expected a non-empty list of {{name, description}}")
    tasks = []
    for i, item in enumerate(items):
        try:
            tasks.append(Task.model_validate(item).model_dump())
        except ValidationError as exc:
            raise ValueError(f"--tasks {path}: [{i}].{describe(exc)}") from None
    names = [t["name"] for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"--tasks {path}: task names must be unique")
    return tasks


def parse_mix(text: str) -> dict[str, float]:
    """`task=0.35,switch=0.25,...` -> shares of the scripted situations (missing kinds get 0)."""
    return {**dict.fromkeys(MIX, 0.0), **parse_shares(text, MIX, "--mix", "situation")}


def plan_for(index: int, seed: int, tasks: list[dict], mix: dict[str, float] | None = None) -> Plan:
    """The deterministic plan of slot `index`: the same seed, index and mix always give the same plan."""
    rng = random.Random(f"{seed}:{index}")
    mix = mix or MIX
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    names = [t["name"] for t in tasks]
    first = rng.choice(names)
    if kind == "switch" and len(names) < 2:
        kind = "task"
    phases: tuple[str | None, ...] = {
        "task": (first,),
        "switch": (first, rng.choice([n for n in names if n != first]) if len(names) > 1 else first),
        "end": (first, None),
        "none": (None,),
    }[kind]
    turns = {"task": rng.randint(1, 4), "switch": rng.randint(2, 5), "end": rng.randint(2, 5),
             "none": rng.randint(1, 2)}[kind]
    return Plan(kind, phases, turns, rng.choice(STYLES))


def chat_messages(plan: Plan, tasks: list[dict], examples: list[dict]) -> list[dict]:
    """The teacher's chat: instructions, few-shot examples in the target format, then this plan."""
    shots = "\n\n".join(f"Example {k + 1} (task list: {json.dumps(ex.get('tasks', EXAMPLE_TASKS))}):\n"
                        f"{json.dumps({'messages': ex['messages'], 'labels': ex['labels']}, ensure_ascii=False)}"
                        for k, ex in enumerate(examples))
    task_list = "\n".join(f"- {t['name']}: {t['description']}" for t in tasks)
    a, b = plan.phases[0], plan.phases[-1]
    story = {
        "task": f"The user works on task {a} from the first to the last user message.",
        "switch": f"The user starts with task {a}, then in a later user message (not the first) moves on to task {b} "
                  f"and stays on it until the end.",
        "end": f"The user works on task {a}; the LAST user message closes it (thanks, that's all, never mind...) "
               f"and asks for nothing else: label it null.",
        "none": "Every user message asks for something that matches NO task of the list (small talk, or a "
                "request outside the list); label them all null.",
    }[plan.kind]
    user = (f"Task list:\n{task_list}\n\n{shots}\n\n"
            f"Now write a new conversation with exactly {plan.user_turns} user messages. The user is {plan.style}.\n"
            f"{story}\nPLAN: {json.dumps({'tasks_in_order': list(plan.phases)})}\n"
            "Answer with the JSON object only.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _json_object(text: str) -> object:
    """The JSON object of a reply, allowing a code fence or words around it."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object")
    return json.loads(body[start:end + 1])


def to_record(reply: str, plan: Plan, tasks: list[dict], record_id: str, source: str) -> tuple[dict | None, str]:
    """The checked router-bench record of a teacher reply, or (None, reason) for a reply to reject."""
    try:
        data = _json_object(reply)
    except ValueError:
        return None, "bad_json"
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list) \
            or not isinstance(data.get("labels"), list):
        return None, "bad_shape"
    labels, previous = [], None
    for label in data["labels"]:
        if not isinstance(label, dict):
            return None, "bad_shape"
        task = None if label.get("task") in (None, NONE) else label.get("task")
        # events are derived; an event the teacher wrote must agree with them
        event = label.get("event", event_for(previous, task if isinstance(task, str) else None))
        labels.append({"turn": label.get("turn"), "task": task, "event": event})
        previous = task if isinstance(task, str) else None
    record = {"id": record_id, "source": source, "tasks": tasks, "messages": data["messages"], "labels": labels}
    checked, reason = check_generated(record)
    if checked is None:
        return None, reason
    sequence = [label["task"] for label in checked["labels"]]
    collapsed = tuple(t for k, t in enumerate(sequence) if k == 0 or t != sequence[k - 1])
    if collapsed != plan.phases:
        return None, "off_script"
    return checked, ""


def fingerprint(messages: list[dict]) -> str:
    """A key of a conversation's text, to reject a teacher repeating itself."""
    return hashlib.sha1(json.dumps([(m["role"], m["content"].strip().lower()) for m in messages]).encode()).hexdigest()


def read_existing(out: Path) -> tuple[set[str], set[str], int]:
    """Ids and fingerprints of the valid lines of `out`; invalid or cut-off lines (a crash mid-write) are removed."""
    if not out.exists():
        return set(), set(), 0
    keep, ids, prints, dropped = [], set(), set(), 0
    for line in out.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if not line.endswith("\n"):
                raise ValueError("cut-off line")
            record = BenchRecord.model_validate_json(line)
            if record.id in ids:
                raise ValueError("duplicate id")
        except (ValueError, ValidationError):
            dropped += 1
            continue
        ids.add(record.id)
        prints.add(fingerprint(record.model_dump()["messages"]))
        keep.append(line)
    if dropped:
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, out)
    return ids, prints, dropped


def generate(tasks: list[dict], teacher: Teacher, out: Path, n: int, *, seed: int = 0,
             examples: list[dict] | None = None, mix: dict[str, float] | None = None, id_prefix: str = "synth",
             max_attempts: int = 3,
             max_rejects: int | None = None, workers: int = 1, progress: bool = True) -> Summary:
    """Append conversations to `out` until it holds `n` valid ones; resumable, never writes a rejected reply."""
    examples = examples or EXAMPLES
    done, seen, dropped = read_existing(out)
    summary = Summary(target=n, existing=len(done), dropped=dropped)
    budget = max_rejects if max_rejects is not None else max(10, n)
    source = f"synthetic/{teacher.name}"
    out.parent.mkdir(parents=True, exist_ok=True)

    def attempt_slot(index: int) -> tuple[dict | None, list[str]]:
        record_id, plan = f"{id_prefix}-{index:05d}", plan_for(index, seed, tasks, mix)
        reasons = []
        for attempt in range(max_attempts):
            try:
                reply = teacher.complete(chat_messages(plan, tasks, examples),
                                         seed=seed * 1000003 + index * 31 + attempt)
            except TeacherError:
                reasons.append("teacher_error")
                continue
            record, reason = to_record(reply, plan, tasks, record_id, source)
            if record is not None:
                return record, reasons
            reasons.append(reason)
        return None, reasons

    slots = (i for i in itertools.count() if f"{id_prefix}-{i:05d}" not in done)
    retries_before = teacher.retries
    bar = tqdm(total=n, initial=min(len(done), n), desc="conversations", unit="conv", disable=not progress)
    with open(out, "a", encoding="utf-8") as f, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while len(done) + summary.written < n:
            batch = [next(slots) for _ in range(min(max(1, workers), n - len(done) - summary.written))]
            for record, reasons in pool.map(attempt_slot, batch):
                summary.rejected.update(reasons)
                if record is not None and fingerprint(record["messages"]) in seen:
                    summary.rejected["duplicate"] += 1
                    continue
                if record is not None:
                    seen.add(fingerprint(record["messages"]))
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    summary.written += 1
                    bar.update(1)
            summary.retries = teacher.retries - retries_before
            bar.set_postfix(rejected=sum(summary.rejected.values()), retries=summary.retries)
            if sum(summary.rejected.values()) > budget:
                summary.stopped = f"more than {budget} rejected replies (--max-rejects); rerun to resume"
                break
    bar.close()
    return summary
