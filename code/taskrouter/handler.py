"""The four functions of the SageMaker Hugging Face inference toolkit contract.

`code/inference.py` re-exports them for the container; the local Flask mirror
calls exactly these, so SageMaker, on-prem and local serving share one path.
Configuration comes from the environment (as on SageMaker):
TASKROUTER_ADAPTERS (comma-separated names to load; default all that match the
base), TASKROUTER_DEFAULT_ADAPTER, TASKROUTER_DTYPE, TASKROUTER_CACHE_MB,
TASKROUTER_MAX_PROMPT_TOKENS, TASKROUTER_BATCH_MAX and TASKROUTER_BATCH_WINDOW_MS
(micro-batching of concurrent requests), TASKROUTER_MERGE_LORA (0: keep a single adapter
unmerged), TASKROUTER_HISTORY_SLACK (tokens an adapter's history window may grow past its
history_tokens before it moves, so next turns reuse the cached conversation) and the
TASKROUTER_MAX_* request limits.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .batching import DEFAULT_BATCH
from .embedded import EMBEDDED_NAME
from .loading import DEFAULT_ADAPTERS_DIR, find_adapters, load_model, read_manifest
from .router import Router
from .schema import Limits, RequestError, RouteAnswer, RouteRequest, parse_request

log = logging.getLogger("taskrouter")
JSON = "application/json"


def _adapters_for(base_name: str, root: Path, names: list[str] | None) -> dict[str, Path]:
    """Adapters under `root` trained for `base_name`; an explicitly named mismatch is an error."""
    chosen = {}
    for name, path in find_adapters(root, names).items():
        base = read_manifest(path).get("base_model")
        if base == base_name:
            chosen[name] = path
        elif names:
            raise ValueError(f"adapter {name} was trained for {base!r}, not for the base {base_name!r}")
        else:
            log.info("skipping adapter %s: trained for %s, not %s", name, base, base_name)
    return chosen


def model_fn(model_dir: str | None, context=None) -> Router:
    """Load the router from an unpacked artifact (base weights at its top level) or the embedded default."""
    torch.set_num_threads(int(os.environ.get("TASKROUTER_THREADS", os.cpu_count() or 1)))
    names = [n for n in os.environ.get("TASKROUTER_ADAPTERS", "").split(",") if n] or None
    model_dir = Path(model_dir) if model_dir else None
    if model_dir is not None and (model_dir / "config.json").exists():
        base, adapters_root = str(model_dir), model_dir / "adapters"
        base_name = json.loads((model_dir / "taskrouter.json").read_text())["base_model"] \
            if (model_dir / "taskrouter.json").exists() else model_dir.name
    else:
        base, adapters_root = None, Path(os.environ.get("TASKROUTER_ADAPTERS_DIR", DEFAULT_ADAPTERS_DIR))
        base_name = EMBEDDED_NAME
    adapters = _adapters_for(base_name, adapters_root, names)
    loaded = load_model(base, adapters, dtype=os.environ.get("TASKROUTER_DTYPE", "auto"),
                        merge_lora=os.environ.get("TASKROUTER_MERGE_LORA", "1") != "0")
    loaded.name = base_name
    return Router(
        loaded,
        cache_bytes=int(os.environ.get("TASKROUTER_CACHE_MB", "512")) * 2**20,
        max_prompt_tokens=int(os.environ.get("TASKROUTER_MAX_PROMPT_TOKENS", "1024")),
        default_adapter=os.environ.get("TASKROUTER_DEFAULT_ADAPTER"),
        max_batch=int(os.environ.get("TASKROUTER_BATCH_MAX", DEFAULT_BATCH)),
        batch_window_ms=float(os.environ.get("TASKROUTER_BATCH_WINDOW_MS", "2")),
        history_slack=int(os.environ.get("TASKROUTER_HISTORY_SLACK", "0")),
    )


def input_fn(input_data: str | bytes, content_type: str = JSON) -> RouteRequest:
    """Decode and validate a request body; raises `RequestError` naming the bad field."""
    if (content_type or JSON).split(";")[0].strip().lower() != JSON:
        raise RequestError("unsupported_media_type", f"content type {content_type!r}: only {JSON} is accepted", 415)
    try:
        payload = json.loads(input_data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise RequestError("invalid_json", f"request body is not valid JSON: {exc}") from None
    return parse_request(payload, Limits.from_env())


def predict_fn(data: RouteRequest, model: Router) -> RouteAnswer:
    return model.route(data)


def output_fn(prediction: RouteAnswer, accept: str = JSON) -> str:
    accept = (accept or JSON).split(";")[0].strip().lower()
    if accept not in (JSON, "*/*"):
        raise RequestError("not_acceptable", f"accept {accept!r}: only {JSON} can be produced", 406)
    return prediction.model_dump_json(exclude_none=False)
