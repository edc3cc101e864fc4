"""Evaluation configs: what answers the routing requests (model + adapter + strategy + decoding).

Named configs live in a YAML file (`evaluation/configs.yaml` by default); a
config can also be given inline on the command line as
`NAME:key=value,key=value` (e.g. `mine:strategy=react,decoding=free`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_CONFIGS = Path(__file__).with_name("configs.yaml")


class EvalConfig(BaseModel):
    """One router setup; `kind: embedding` is the MiniLM cosine baseline (model/adapter/strategy unused)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["llm", "embedding"] = "llm"
    model: str = "embedded"  # "embedded" or a local model directory
    adapter: str | None = None
    adapters_dir: str | None = None  # default: <model>/adapters, else model_artifacts/adapters
    strategy: Literal["zero_shot", "few_shot_cot", "react", "adapter"] = "zero_shot"
    decoding: Literal["constrained", "free"] = "constrained"
    threshold: float | None = None  # embedding only: overrides evaluation/embedding_threshold.json

    def definition(self) -> dict:
        """The fields that decide the predictions (what a resumed run must not change)."""
        if self.kind == "embedding":
            return {"kind": self.kind, "threshold": self.threshold}
        return self.model_dump(exclude={"name", "threshold"})


def _validate(name: str, fields: dict, origin: str) -> EvalConfig:
    if not isinstance(fields, dict):
        raise ValueError(f"{origin}: config {name!r} must be a mapping of fields")
    try:
        return EvalConfig(name=name, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{origin}: config {name!r} field {field!r}: {err['msg']}") from None


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
