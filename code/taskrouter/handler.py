"""The four functions of the SageMaker Hugging Face inference toolkit contract.

`code/inference.py` re-exports them for the container; the local Flask mirror
calls exactly these, so SageMaker, on-prem and local serving share one path.
Configuration comes from the environment (as on SageMaker):
TASKROUTER_ADAPTERS (comma-separated names to load; default all that match the
base), TASKROUTER_DEFAULT_ADAPTER, TASKROUTER_DTYPE, TASKROUTER_CACHE_MB,
TASKROUTER_MAX_PROMPT_TOKENS, TASKROUTER_BATCH_MAX and TASKROUTER_BATCH_WINDOW_MS
(micro-batching of concurrent requests), and the TASKROUTER_MAX_* request limits.

Under the SageMaker model server the toolkit passes each function its `context` (the model server's):
model_fn then uses the GPU the server gave the worker, splits the cores between the workers and turns
micro-batching off (the server hands a worker one request at a time), and errors travel on as values
with their status set on the response, since the toolkit turns every raised exception into a 400.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
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


def _server_workers(context) -> int:
    """Workers of the SageMaker model server (one model copy each): SAGEMAKER_MODEL_SERVER_WORKERS, else its
    default (one per GPU, else one per core); 1 outside it."""
    if os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS"):
        return max(1, int(os.environ["SAGEMAKER_MODEL_SERVER_WORKERS"]))
    if context is None:
        return 1
    return torch.cuda.device_count() or os.cpu_count() or 1


def _server_gpu(context) -> int | None:
    """The GPU the model server assigned to this worker (None: CPU, or no model server)."""
    gpu = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    return int(gpu) if gpu is not None and torch.cuda.is_available() else None


def model_fn(model_dir: str | None, context=None) -> Router:
    """Load the router from an unpacked artifact (base weights at its top level) or the embedded default."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(int(os.environ.get("TASKROUTER_THREADS", max(1, cores // _server_workers(context)))))
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
    loaded = load_model(base, adapters, dtype=os.environ.get("TASKROUTER_DTYPE", "auto"), gpu=_server_gpu(context))
    loaded.name = base_name
    return Router(
        loaded,
        cache_bytes=int(os.environ.get("TASKROUTER_CACHE_MB", "512")) * 2**20,
        max_prompt_tokens=int(os.environ.get("TASKROUTER_MAX_PROMPT_TOKENS", "1024")),
        default_adapter=os.environ.get("TASKROUTER_DEFAULT_ADAPTER"),
        max_batch=int(os.environ.get("TASKROUTER_BATCH_MAX", DEFAULT_BATCH if context is None else 1)),
        batch_window_ms=float(os.environ.get("TASKROUTER_BATCH_WINDOW_MS", "2")),
    )


def _failed(exc: RequestError, context) -> RequestError:
    """Without a model server context, raise; with one, set the response status and pass the error on
    as the value (output_fn writes its body): a raised exception would reach the client as the toolkit's 400."""
    if context is None:
        raise exc
    context.set_response_status(exc.status, exc.code)
    return exc


def input_fn(input_data: str | bytes, content_type: str = JSON, context=None) -> RouteRequest | RequestError:
    """Decode and validate a request body; raises `RequestError` naming the bad field (returns it, with the
    status set, under the model server)."""
    try:
        if (content_type or JSON).split(";")[0].strip().lower() != JSON:
            raise RequestError("unsupported_media_type", f"content type {content_type!r}: only {JSON} is accepted", 415)
        try:
            payload = json.loads(input_data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
            raise RequestError("invalid_json", f"request body is not valid JSON: {exc}") from None
        return parse_request(payload, Limits.from_env())
    except RequestError as exc:
        return _failed(exc, context)


def predict_fn(data: RouteRequest | RequestError, model: Router, context=None) -> RouteAnswer | RequestError:
    if isinstance(data, RequestError):
        return data
    try:
        return model.route(data)
    except RequestError as exc:
        return _failed(exc, context)
    except Exception as exc:
        if context is None:
            raise
        # type and frames only: an exception message may quote the request's text
        log.error("internal error while routing: %s\n%s", type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        return _failed(RequestError("internal_error", f"internal error ({type(exc).__name__}); see the endpoint's "
                                                      f"log", 500), context)


def output_fn(prediction: RouteAnswer | RequestError, accept: str = JSON, context=None) -> str:
    accept = (accept or JSON).split(";")[0].strip().lower()
    if not isinstance(prediction, RequestError) and accept not in (JSON, "*/*"):
        prediction = _failed(RequestError("not_acceptable", f"accept {accept!r}: only {JSON} can be produced", 406),
                             context)
    if isinstance(prediction, RequestError):
        return json.dumps(prediction.to_json())
    return prediction.model_dump_json(exclude_none=False)
