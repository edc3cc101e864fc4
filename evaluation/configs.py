"""Evaluation configs: what answers the routing requests (model + adapter + strategy + decoding).

Named configs live in a YAML file (`evaluation/configs.yaml` by default); a
config can also be given inline on the command line as
`NAME:key=value,key=value` (e.g. `mine:strategy=react,decoding=free`).
`kind: openai` configs are answered by an OpenAI-compatible chat endpoint (evaluation/hosted.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CONFIGS = Path(__file__).with_name("configs.yaml")


HOSTED_FIELDS = ("base_url", "api_key_env", "extra_body", "constraint", "max_tokens", "price_input", "price_output")


class EvalConfig(BaseModel):
    """One router setup; `kind: embedding` is the MiniLM cosine baseline (model/adapter/strategy unused);
    `kind: openai` an OpenAI-compatible chat endpoint, on the same prompts (the HOSTED_FIELDS are its own)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["llm", "embedding", "openai"] = "llm"
    model: str = "embedded"  # "embedded" or a local model directory; for openai the endpoint's model name
    adapter: str | None = None
    adapters_dir: str | None = None  # default: <model>/adapters, else model_artifacts/adapters
    strategy: Literal["zero_shot", "few_shot_cot", "react", "adapter"] = "zero_shot"
    decoding: Literal["constrained", "free"] = "constrained"
    threshold: float | None = None  # embedding only: overrides evaluation/embedding_threshold.json
    base_url: str | None = None  # openai: e.g. https://api.openai.com/v1, http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: the environment variable holding the API key (unset: no key sent)
    extra_body: dict = Field(default_factory=dict)  # openai: merged into every request body; a null value drops a key
    constraint: Literal["auto", "grammar", "json_schema"] = "auto"  # openai + constrained: how the server constrains
    max_tokens: int | None = Field(default=None, ge=1)  # openai: reply length cap (default: by strategy)
    price_input: float | None = Field(default=None, ge=0)  # openai: price per million prompt tokens
    price_output: float | None = Field(default=None, ge=0)  # openai: price per million completion tokens

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "EvalConfig":
        if self.kind == "openai":
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise ValueError("base_url: an openai config needs the endpoint's http(s) URL, "
                                 "e.g. http://127.0.0.1:8000/v1")
            if "model" not in self.model_fields_set:
                raise ValueError("model: an openai config needs the model name the endpoint serves")
            if (self.price_input is None) != (self.price_output is None):
                raise ValueError("price_output: give price_input and price_output together (per million tokens)")
            wrong = [f for f in ("adapter", "adapters_dir", "threshold") if f in self.model_fields_set]
        else:
            wrong = [f for f in HOSTED_FIELDS if f in self.model_fields_set]
        if wrong:
            raise ValueError(f"{wrong[0]}: not a field of a kind {self.kind} config")
        return self

    def definition(self) -> dict:
        """The fields that decide the predictions (what a resumed run must not change)."""
        if self.kind == "embedding":
            return {"kind": self.kind, "threshold": self.threshold}
        if self.kind == "openai":  # the key and the prices change no prediction
            return self.model_dump(include={"kind", "base_url", "model", "strategy", "decoding", "constraint",
                                            "extra_body", "max_tokens"})
        return self.model_dump(exclude={"name", "threshold", *HOSTED_FIELDS})


def _validate(name: str, fields: dict, origin: str) -> EvalConfig:
    if not isinstance(fields, dict):
        raise ValueError(f"{origin}: config {name!r} must be a mapping of fields")
    try:
        return EvalConfig(name=name, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field, message = ".".join(str(p) for p in err["loc"]), err["msg"]
        if not field:  # a check across fields: its message starts with the field at fault
            field, _, message = message.removeprefix("Value error, ").partition(": ")
        raise ValueError(f"{origin}: config {name!r} field {field!r}: {message}") from None


def read_configs(path: Path | str = DEFAULT_CONFIGS) -> dict[str, EvalConfig]:
    """All named configs of a YAML file `{configs: {name: {field: value}}}`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--configs {path}: {exc}") from None
    entries = data.get("configs") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"--configs {path}: expected a top-level 'configs:' mapping")
    return {name: _validate(name, fields or {}, f"--configs {path}") for name, fields in entries.items()}


def parse_inline(spec: str) -> EvalConfig:
    """`NAME:key=value,...` into a config; values `null`/`none` mean unset."""
    name, _, body = spec.partition(":")
    fields: dict = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config {spec}: {item!r} is not key=value")
        fields[key.strip()] = None if value.strip().lower() in ("null", "none") else value.strip()
    if "threshold" in fields and fields["threshold"] is not None:
        fields["threshold"] = float(fields["threshold"])
    return _validate(name, fields, "--config")


def resolve_configs(specs: list[str], available: dict[str, EvalConfig]) -> list[EvalConfig]:
    """The configs asked for on the command line, by name or inline, in order and without duplicates."""
    chosen: dict[str, EvalConfig] = {}
    for spec in specs:
        if ":" in spec:
            config = parse_inline(spec)
        elif spec in available:
            config = available[spec]
        else:
            raise ValueError(f"--config {spec}: unknown config (known: {', '.join(available) or 'none'}); "
                             "define it in --configs FILE or inline as NAME:key=value,...")
        if config.name in chosen:
            raise ValueError(f"--config {config.name}: given twice")
        chosen[config.name] = config
    return list(chosen.values())
