"""The request/answer contract of DESIGN.md, validated with pydantic.

Every violation becomes a `RequestError` that names the field at fault, so the
server can answer 4xx with `{"error": {"code", "message"}}` and never crash.
"""
from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NONE = "none"
STRATEGIES = ("zero_shot", "few_shot_cot", "react", "adapter")
DECODINGS = ("constrained", "free")


class Limits(BaseModel):
    """Request size limits; override with TASKROUTER_MAX_* environment variables."""

    max_messages: int = 200
    max_tasks: int = 256
    max_text_bytes: int = 64 * 1024
    max_top_k: int = 256
    max_name_bytes: int = 128  # a task name is an identifier; its tokens become trie nodes

    @classmethod
    def from_env(cls) -> "Limits":
        values = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"TASKROUTER_{name.upper()}")
            if raw is not None:
                values[name] = int(raw)
        return cls(**values)


class RequestError(Exception):
    """A client error: `code` is machine-readable, `message` names the field."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def _unicode(value: str) -> str:
    """JSON can carry lone surrogates (\\ud800); they are not text and would crash the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it contains a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant"]
    content: Text


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Text = Field(min_length=1)
    description: Text = ""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("task name must not be blank")
        if name.strip().lower() == NONE:
            raise ValueError(f"'{NONE}' is reserved and cannot be a task name")
        if any(ch in name for ch in "\n\r"):
            raise ValueError("task name must be a single line")
        return name


class RouteRequest(BaseModel):
    """One routing request: the conversation so far and the task list in force."""

    model_config = ConfigDict(extra="forbid", strict=True)
    messages: list[Message] = Field(min_length=1)
    tasks: list[Task]
    current_task: Text | None = None
    strategy: Literal["zero_shot", "few_shot_cot", "react", "adapter"] | None = None
    adapter: Text | None = None
    decoding: Literal["constrained", "free"] = "constrained"
    top_k: int = Field(default=3, ge=1)

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, messages: list[Message]) -> list[Message]:
        if messages and messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        return messages

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[Task]) -> list[Task]:
        seen: set[str] = set()
        for i, task in enumerate(tasks):
            if task.name in seen:
                raise ValueError(f"task name {task.name!r} at index {i} is a duplicate")
            seen.add(task.name)
        return tasks

    @model_validator(mode="after")
    def _current_in_list(self) -> "RouteRequest":
        if self.current_task is not None and self.current_task not in self.task_names:
            raise ValueError(f"current_task: {self.current_task!r} is not in the task list")
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


class Candidate(BaseModel):
    task: str
    p: float


class RouteAnswer(BaseModel):
    """The router's decision; `task` is always a listed name or `none`."""

    task: str
    event: Literal["start", "continue", "switch", "end", "none"]
    confidence: float
    candidates: list[Candidate]
    model: str
    adapter: str | None
    strategy: str
    decoding: str = "constrained"
    valid: bool = True
    latency_ms: float = 0.0
    raw: str | None = None


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_request(payload: object, limits: Limits | None = None) -> RouteRequest:
    """Validate a decoded JSON payload into a `RouteRequest` or raise `RequestError`."""
    limits = limits or Limits()
    if not isinstance(payload, dict):
        raise RequestError("invalid_request", "request body must be a JSON object")
    _check_limits(payload, limits)
    try:
        request = RouteRequest.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        if err["loc"]:  # model-level checks already start with the field they judge
            message = f"{_field_path(tuple(err['loc']))}: {message}"
        raise RequestError("invalid_field", message) from None
    if request.top_k > limits.max_top_k:
        raise RequestError("invalid_field", f"top_k: must be at most {limits.max_top_k}")
    return request


def _check_limits(payload: dict, limits: Limits) -> None:
    """Size limits are checked before pydantic so a huge request costs little."""
    messages, tasks = payload.get("messages"), payload.get("tasks")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise RequestError("too_large", f"messages: at most {limits.max_messages} messages", 413)
    if isinstance(tasks, list) and len(tasks) > limits.max_tasks:
        raise RequestError("too_large", f"tasks: at most {limits.max_tasks} tasks", 413)
    for i, task in enumerate(tasks if isinstance(tasks, list) else ()):
        name = task.get("name") if isinstance(task, dict) else None
        if isinstance(name, str) and len(name.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
            raise RequestError("invalid_field", f"tasks[{i}].name: at most {limits.max_name_bytes} bytes")
    size = 0
    for key, items, fields in (("messages", messages, ("content",)), ("tasks", tasks, ("name", "description"))):
        for item in items if isinstance(items, list) else ():
            for f in fields:
                value = item.get(f) if isinstance(item, dict) else None
                if isinstance(value, str):
                    size += len(value.encode("utf-8", "surrogatepass"))
        if size > limits.max_text_bytes:
            raise RequestError("too_large", f"{key}: text exceeds {limits.max_text_bytes} bytes", 413)
