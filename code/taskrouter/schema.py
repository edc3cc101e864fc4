"""The request/answer contract of DESIGN.md, validated with pydantic.

Every violation becomes a `RequestError` that names the field at fault, so the
server can answer 4xx with `{"error": {"code", "message"}}` and never crash.
"""
from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

if TYPE_CHECKING:
    from .settings import Settings

NONE = "none"
STRATEGIES = ("zero_shot", "few_shot_cot", "react", "adapter")
DECODINGS = ("constrained", "free")


class Limits(BaseModel):
    """Request size limits (TASKROUTER_MAX_* in taskrouter.settings)."""

    max_messages: int = 200
    max_tasks: int = 256
    max_text_bytes: int = 64 * 1024
    max_top_k: int = 256
    max_name_bytes: int = 128  # a task name is an identifier; its tokens become trie nodes

    @classmethod
    def from_settings(cls, config: "Settings") -> "Limits":
        return cls(**{name: getattr(config, name) for name in cls.model_fields})


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


def _integral(value: object) -> object:
    """JSON Schema's integer includes 3.0; strict mode alone would refuse it (booleans stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def name_key(name: str) -> str:
    """What a task name means once invisible differences are gone: NFKC, format characters (zero-width
    space, joiners, BOM, soft hyphen, bidi marks) removed, outer whitespace stripped. Names are compared,
    and `none` is recognised, by this key; the router keeps the client's own spelling."""
    folded = unicodedata.normalize("NFKC", name)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").strip()


class ContentPart(BaseModel):
    """An OpenAI content part: `text` parts are read, other types (images, audio, files) are ignored."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: Text | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> "ContentPart":
        if self.type == "text" and self.text is None:
            raise ValueError("text: a text part needs its text")
        return self


class Message(BaseModel):
    """A conversation message as the router and the router-bench format read it: user or assistant text."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant"]
    content: Text


class ChatMessage(BaseModel):
    """A message as clients send it: today's shape (`user` / `assistant`, string content) or OpenAI's (also
    `system`, `developer`, `tool`, content parts, tool calls). Only user and assistant text is read."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant", "system", "developer", "tool"]
    content: Text | list[ContentPart] | None  # null (OpenAI's for tool calls) reads as no text
    name: Text | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: Text | None = None
    refusal: Text | None = None


def _task_name(name: str) -> str:
    if any(ch in name for ch in "\n\r\u2028\u2029\x85"):
        raise ValueError("task name must be a single line")
    key = name_key(name)
    if not key:
        raise ValueError("task name must not be blank (once invisible characters are removed)")
    if key.casefold() == NONE:
        raise ValueError(f"'{NONE}' is reserved and cannot be a task name")
    return name


TaskName = Annotated[Text, Field(min_length=1), AfterValidator(_task_name)]


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: TaskName
    description: Text = ""


class Function(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: TaskName
    description: Text = ""
    parameters: dict | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """An OpenAI tool definition; its function's name and description are a task."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: Function


def _readable(messages: list[ChatMessage], ignored: list[str]) -> list[Message]:
    """The user and assistant text of `messages`; what is skipped is noted in `ignored`."""
    read = []
    for i, message in enumerate(messages):
        if message.role not in ("user", "assistant"):
            ignored.append(f"messages[{i}] ({message.role})")
            continue
        if isinstance(message.content, list):
            texts = []
            for j, part in enumerate(message.content):
                if part.type == "text":
                    texts.append(part.text)
                else:
                    ignored.append(f"messages[{i}].content[{j}] ({part.type})")
            content = "\n".join(texts)
        else:
            content = message.content or ""
        if message.tool_calls and not content:
            ignored.append(f"messages[{i}] (assistant tool call)")
            continue
        if message.tool_calls:
            ignored.append(f"messages[{i}].tool_calls")
        read.append(Message(role=message.role, content=content))
    return read


class RouteRequest(BaseModel):
    """One routing request: the conversation so far and the task list in force (as `tasks`, or as
    OpenAI `tools`). After validation `messages` holds the user/assistant text as `Message`s and `tasks`
    the list."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"anyOf": [{"required": ["tasks"]}, {"required": ["tools"]}]})
    messages: list[ChatMessage] = Field(min_length=1)
    tasks: list[Task] = None  # one of tasks and tools is required (checked below); null is not a list
    tools: list[Tool] = None
    current_task: Text | None = None
    strategy: Literal["zero_shot", "few_shot_cot", "react", "adapter"] | None = None
    adapter: Text | None = None
    decoding: Literal["constrained", "free"] = "constrained"
    top_k: Annotated[int, BeforeValidator(_integral)] = Field(default=3, ge=1)
    _ignored: list[str] = PrivateAttr(default_factory=list)

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages and messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        return messages

    @model_validator(mode="after")
    def _normalise(self) -> "RouteRequest":
        field = "tasks"
        if self.tools is not None:
            if self.tasks is not None:
                raise ValueError("tools: give the task list as tasks or as tools, not both")
            field = "tools"
            self.tasks = [Task(name=t.function.name, description=t.function.description) for t in self.tools]
            self._ignored += [f"tools[{i}].function.{key}" for i, t in enumerate(self.tools)
                              for key in ("parameters", "strict") if getattr(t.function, key) is not None]
            self.tools = None
        if self.tasks is None:
            raise ValueError("tasks: field required (or tools)")
        names: dict[str, str] = {}
        for i, task in enumerate(self.tasks):
            key = name_key(task.name)
            if key in names:
                raise ValueError(f"{field}: task name {task.name!r} at index {i} is a duplicate of {names[key]!r}")
            names[key] = task.name
        self.messages = _readable(self.messages, self._ignored)
        if self.current_task is not None:
            key = name_key(self.current_task)
            if key.casefold() == NONE:
                self.current_task = None
            elif key in names:
                self.current_task = names[key]
            else:
                raise ValueError(f"current_task: {self.current_task!r} is not in the task list")
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def ignored(self) -> list[str]:
        """What of the request the router does not read (system and tool messages, images, tool schemas)."""
        return list(self._ignored)


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
    ignored: list[str] = Field(default_factory=list, description="parts of the request the router did not read")


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, str) and ("[" in part or "(" in part):
            continue  # a union member's tag (e.g. "list[ContentPart]"), not a field
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
        # of a union's failed members, the one that got furthest into the value says what is wrong
        err = max(exc.errors(), key=lambda e: len(_field_path(tuple(e["loc"]))))
        message = err["msg"].removeprefix("Value error, ")
        if err["loc"]:  # model-level checks already start with the field they judge
            message = f"{_field_path(tuple(err['loc']))}: {message}"
        raise RequestError("invalid_field", message) from None
    if request.top_k > limits.max_top_k:
        raise RequestError("invalid_field", f"top_k: must be at most {limits.max_top_k}")
    return request


def _utf8(value: object) -> int:
    return len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else 0


def _check_limits(payload: dict, limits: Limits) -> None:
    """Size limits are checked before pydantic so a huge request costs little."""
    messages = payload.get("messages")
    field, tasks = ("tools", payload.get("tools")) if "tools" in payload else ("tasks", payload.get("tasks"))
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise RequestError("too_large", f"messages: at most {limits.max_messages} messages", 413)
    if isinstance(tasks, list) and len(tasks) > limits.max_tasks:
        raise RequestError("too_large", f"{field}: at most {limits.max_tasks} tasks", 413)
    specs = [t.get("function") if field == "tools" and isinstance(t, dict) else t
             for t in (tasks if isinstance(tasks, list) else [])]
    specs = [spec if isinstance(spec, dict) else {} for spec in specs]
    for i, spec in enumerate(specs):
        if _utf8(spec.get("name")) > limits.max_name_bytes:
            where = f"{field}[{i}].function.name" if field == "tools" else f"{field}[{i}].name"
            raise RequestError("invalid_field", f"{where}: at most {limits.max_name_bytes} bytes")
    size = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [{"text": content}]
        size += sum(_utf8(part.get("text")) for part in parts if isinstance(part, dict))
    if size > limits.max_text_bytes:
        raise RequestError("too_large", f"messages: text exceeds {limits.max_text_bytes} bytes", 413)
    if sum(_utf8(spec.get("name")) + _utf8(spec.get("description")) for spec in specs) > limits.max_text_bytes:
        raise RequestError("too_large", f"{field}: text exceeds {limits.max_text_bytes} bytes", 413)
