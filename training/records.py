"""A router-bench conversation (BENCH_FORMAT.md) as a pydantic model, built on the core Task and Message.

Each consistency rule raises an error whose type is a short reason code
(`bad_turns`, `unknown_task`, `inconsistent_events`, ...), so generation can count
rejects by reason and review/export can refuse a broken record. A benchmark
conversation may end with the assistant; generated ones must end with the user.
"""
from __future__ import annotations

from collections.abc import Collection

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from taskrouter.events import event_for
from taskrouter.schema import Message, Task

Event = Literal["start", "continue", "switch", "end", "none"]


class Label(BaseModel):
    """The task the user is doing after user message `turn` (None = no task) and the event it makes."""

    model_config = ConfigDict(extra="forbid", strict=True)
    turn: int = Field(ge=0)
    task: str | None
    event: Event


class BenchRecord(BaseModel):
    """One conversation with one label per user message; events follow event_for."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1)
    source: str = ""
    tasks: list[Task] = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    labels: list[Label]

    @model_validator(mode="after")
    def _consistent(self) -> "BenchRecord":
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise PydanticCustomError("duplicate_task", "tasks: task names must be unique")
        user_turns = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if [label.turn for label in self.labels] != user_turns:
            raise PydanticCustomError("bad_turns", "labels: one label per user message, turns {turns}",
                                      {"turns": user_turns})
        previous = None
        for label in self.labels:
            if label.task is not None and label.task not in names:
                raise PydanticCustomError("unknown_task", "labels: turn {turn} names unknown task '{task}'",
                                          {"turn": label.turn, "task": label.task})
            expected = event_for(previous, label.task)
            if label.event != expected:
                raise PydanticCustomError("inconsistent_events",
                                          "labels: turn {turn} event '{event}', expected '{expected}'",
                                          {"turn": label.turn, "event": label.event, "expected": expected})
            previous = label.task
        return self


def labels_for(messages: list[dict], tasks: list[str | None]) -> list[dict]:
    """Labels for the user messages of `messages`, one task per user message, events re-derived."""
    user_turns = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if len(tasks) != len(user_turns):
        raise ValueError(f"tasks: {len(tasks)} given for {len(user_turns)} user messages")
    labels, previous = [], None
    for turn, task in zip(user_turns, tasks):
        labels.append({"turn": turn, "task": task, "event": event_for(previous, task)})
        previous = task
    return labels


def check_generated(record: dict) -> tuple[dict | None, str]:
    """(the validated record, "") or (None, reason code) under the rules for written training data: a valid
    BenchRecord that ends on a user turn to route, with no empty message and roles that alternate."""
    try:
        checked = BenchRecord.model_validate(record).model_dump()
    except ValidationError as exc:
        return None, reason_of(exc)
    if checked["messages"][-1]["role"] != "user":
        return None, "last_not_user"  # a generated conversation ends on the turn to route
    if any(not m["content"].strip() for m in checked["messages"]):
        return None, "empty_message"
    if any(a["role"] == b["role"] for a, b in zip(checked["messages"], checked["messages"][1:])):
        return None, "bad_roles"
    return checked, ""


def reason_of(exc: ValidationError) -> str:
    """The reason code of the first error: a custom type, `bad_roles` for a wrong role, else `bad_shape`."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    if err["type"] in ("duplicate_task", "bad_turns", "unknown_task", "inconsistent_events"):
        return err["type"]
    if loc[:1] == ("messages",) and loc[-1:] == ("role",):
        return "bad_roles"
    return "bad_shape"


def describe(exc: ValidationError) -> str:
    """The first error as `field.path: message`, for error messages that name the field at fault."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"])
    return f"{path}: {err['msg']}" if path else err["msg"]


def parse_shares(text: str, allowed: Collection[str], option: str, what: str,
                 need_positive: bool = True) -> dict[str, float]:
    """`a=0.3,b=0.7` -> {a: 0.3, b: 0.7}; a name outside `allowed` or a bad share is an error naming `option`."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in allowed:
            raise ValueError(f"{option}: unknown {what} {name!r} (use {', '.join(allowed)})")
        try:
            shares[name] = float(value)
        except ValueError:
            raise ValueError(f"{option}: {part!r} is not {what.upper()}=SHARE") from None
        if shares[name] < 0:
            raise ValueError(f"{option}: {name} share must not be negative")
    if need_positive and sum(shares.values()) <= 0:
        raise ValueError(f"{option}: at least one share must be positive")
    return shares
