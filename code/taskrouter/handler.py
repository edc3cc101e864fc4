"""The four functions of the SageMaker Hugging Face inference toolkit contract.

`code/inference.py` re-exports them for the container; the local Flask mirror
calls exactly these, so SageMaker, on-prem and local serving share one path.
Configuration comes from the environment (as on SageMaker), read once through
`taskrouter.settings` (docs/settings.md lists every variable).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from . import settings
from .embedded import EMBEDDED_NAME
from .loading import DEFAULT_ADAPTERS_DIR, adapters_for, base_name_of, load_model
from .router import Router
from .schema import Limits, RequestError, RouteAnswer, RouteRequest, parse_request

log = logging.getLogger("taskrouter")
JSON = "application/json"


def model_fn(model_dir: str | None, context=None) -> Router:
    """Load the router from an unpacked artifact (base weights at its top level) or the embedded default."""
    config = settings.get()
    torch.set_num_threads(config.torch_threads)
    names = config.adapters or None
    model_dir = Path(model_dir) if model_dir else None
    if model_dir is not None and (model_dir / "config.json").exists():
        base, adapters_root, base_name = str(model_dir), model_dir / "adapters", base_name_of(model_dir)
    else:
        base, adapters_root = None, config.adapters_dir or DEFAULT_ADAPTERS_DIR
        base_name = EMBEDDED_NAME
    adapters = adapters_for(base_name, adapters_root, names)
    loaded = load_model(base, adapters, dtype=config.dtype)
    loaded.name = base_name
    return Router(
        loaded,
        cache_bytes=config.cache_mb * 2**20,
        max_prompt_tokens=config.max_prompt_tokens,
        default_adapter=config.default_adapter,
        max_batch=config.batch_max,
        batch_window_ms=config.batch_window_ms,
    )


def input_fn(input_data: str | bytes, content_type: str = JSON) -> RouteRequest:
    """Decode and validate a request body; raises `RequestError` naming the bad field."""
    if (content_type or JSON).split(";")[0].strip().lower() != JSON:
        raise RequestError("unsupported_media_type", f"content type {content_type!r}: only {JSON} is accepted", 415)
    try:
        payload = json.loads(input_data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise RequestError("invalid_json", f"request body is not valid JSON: {exc}") from None
    return parse_request(payload, Limits.from_settings(settings.get()))


def predict_fn(data: RouteRequest, model: Router) -> RouteAnswer:
    """Route; the answer also names what of the request was not read (system/tool messages, images...)."""
    answer = model.route(data)
    return answer.model_copy(update={"ignored": data.ignored}) if data.ignored else answer


def output_fn(prediction: RouteAnswer, accept: str = JSON) -> str:
    accept = (accept or JSON).split(";")[0].strip().lower()
    if accept not in (JSON, "*/*"):
        raise RequestError("not_acceptable", f"accept {accept!r}: only {JSON} can be produced", 406)
    return prediction.model_dump_json(exclude_none=False)
