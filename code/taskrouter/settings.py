"""Every TASKROUTER_* environment variable in one typed object, read once at start.

The handler (also inside SageMaker, where the environment is the only way in),
the Flask app, admission, the gunicorn config and evaluation read their
configuration here instead of `os.environ`. A bad value is a `SettingsError`
whose one-line message names the variable. `python -m taskrouter.settings`
prints the table in docs/settings.md.
"""
from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .batching import DEFAULT_BATCH

PREFIX = "TASKROUTER_"


class SettingsError(ValueError):
    """A TASKROUTER_* variable has a value the server cannot use; the message names it."""


class Settings(BaseSettings):
    """The router's configuration; each field is the variable TASKROUTER_<FIELD NAME>."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # model
    model_dir: str | None = Field(None, description="unpacked artifact to serve (`serve --model-dir` sets it); "
                                                    "unset: the embedded Gemma 3 270M")
    adapters: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated adapter names to load; empty: every adapter trained "
                                          "for the base")
    default_adapter: str | None = Field(None, description="adapter used when a request names none; unset: the "
                                                          "first loaded")
    adapters_dir: Path | None = Field(None, description="folder of adapters for the embedded model; unset: the "
                                                        "shipped model_artifacts/adapters")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto: bfloat16 (+NF4) on CUDA and on CPUs that multiply bf16 natively "
                            "(AMX, AVX512-BF16), float32 on other CPUs")
    merge_lora: bool = Field(True, description="fold a single adapter into the base weights (0: keep it unmerged)")
    pack_weights: bool = Field(True, description="float32, or bfloat16 where native, on CPU: linear layers through "
                                                 "oneDNN on weights packed once (0: torch's default matmul)")
    pad_rows: bool = Field(True, description="pad each forward pass to one of a few row counts, so a long-running "
                                             "server compiles a bounded set of oneDNN kernels (0: exact rows)")
    threads: int | None = Field(None, ge=1, description="torch threads per worker; unset: CPU cores / workers")
    cache: Path | None = Field(None, description="where the embedded model's converted copy is kept; unset: "
                                                 "~/.cache/taskrouter")
    # router
    cache_mb: int = Field(512, ge=0, description="prefix KV cache per worker, MiB (0: off)")
    max_prompt_tokens: int = Field(1024, ge=16, description="longest prompt; older messages are dropped first")
    batch_max: int = Field(DEFAULT_BATCH, ge=1, description="requests per forward pass (micro-batching)")
    batch_window_ms: float = Field(2.0, ge=0, description="how long a lone request waits for company, ms")
    history_slack: int = Field(0, ge=0, description="tokens an adapter's history window may grow past its "
                                                    "history_tokens before it moves, so next turns reuse the "
                                                    "cached conversation (0: the training window)")
    # request limits
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body, chunked or not "
                                                                  "(413 above)")
    max_messages: int = Field(200, ge=1, description="most messages in a request (413 above)")
    max_tasks: int = Field(256, ge=1, description="most tasks in a request (413 above)")
    max_text_bytes: int = Field(64 * 1024, ge=1, description="most UTF-8 bytes of message text, and of task "
                                                             "names + descriptions (413 above)")
    max_top_k: int = Field(256, ge=1, description="largest `top_k`")
    max_name_bytes: int = Field(128, ge=1, description="longest task name in UTF-8 bytes")
    # admission
    concurrency: int | None = Field(None, ge=1, description="requests computed at once per worker; unset: "
                                                           "TASKROUTER_BATCH_MAX")
    max_queue: int = Field(32, ge=0, description="requests waiting beyond those; the next gets 503 + Retry-After")
    deadline_ms: float = Field(10_000, gt=0, description="a request not started this long after it arrived "
                                                         "gets 504, never computed")
    # HTTP server
    host: str = Field("127.0.0.1", description="address `serve` binds (0.0.0.0: every interface)")
    port: int = Field(8080, ge=1, le=65535, description="port `serve` binds")
    workers: int = Field(1, ge=1, description="gunicorn workers, each with its own model copy")
    gunicorn_threads: int | None = Field(None, ge=1, description="threads per worker; unset: concurrency + "
                                                                 "max_queue + 16, so admission sees every request")
    read_timeout_s: float = Field(10.0, gt=0, description="a request must arrive whole (headers and body) "
                                                          "within this, or the connection is closed")
    worker_timeout: int = Field(120, ge=1, description="a worker silent this long is killed and replaced, s")
    graceful_timeout: int = Field(30, ge=1, description="SIGTERM lets in-flight requests finish this long, s")
    control_socket: str | None = Field(None, description="path of gunicorn's control socket; unset: off")
    api_key: SecretStr | None = Field(None, description="when set, every route but /ping and /openapi.json "
                                                        "needs it (Authorization: Bearer KEY or X-API-Key: KEY)")
    log_bodies: bool = Field(False, description="write request bodies (message text) into the request log")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="server log level")

    @field_validator("adapters", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def admitted_at_once(self) -> int:
        return self.concurrency or self.batch_max

    @property
    def server_threads(self) -> int:
        return self.gunicorn_threads or self.admitted_at_once + self.max_queue + 16


def load(**overrides) -> Settings:
    """Read the environment now; a bad value raises `SettingsError` naming its variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = PREFIX + str(err["loc"][0]).upper() if err["loc"] else PREFIX + "*"
        raw = os.environ.get(name)
        shown = "" if raw is None or "API_KEY" in name else f"={raw!r}"
        raise SettingsError(f"{name}{shown}: {err['msg'].removeprefix('Value error, ')}") from None


@cache
def get() -> Settings:
    """The process's settings, read from the environment on first use."""
    return load()


def _kind(annotation: object) -> str:
    """A field's type as a reader of the docs says it: `int`, `auto, float32, ...`, `path`, `names`."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return ", ".join(f"`{a}`" for a in args)
    if get_origin(annotation) is Annotated or (args and get_origin(annotation) is not list):
        return _kind(args[0])
    if get_origin(annotation) is list:
        return "comma-separated names"
    return {Path: "path", SecretStr: "secret", bool: "bool (0/1, true/false)"}.get(annotation, annotation.__name__)


def markdown() -> str:
    """The settings table of docs/settings.md, generated from the fields above."""
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, []) else f"`{default}`"
        lines.append(f"| `{PREFIX}{name.upper()}` | {_kind(field.annotation)} | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
