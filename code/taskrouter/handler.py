"""The four functions of the SageMaker Hugging Face inference toolkit contract.

`code/inference.py` re-exports them for the container; the local Flask mirror
calls exactly these, so SageMaker, on-prem and local serving share one path.
Configuration comes from the environment (as on SageMaker), read once through
`taskrouter.settings` (docs/settings.md lists every variable).

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

from . import settings
from .embedded import EMBEDDED_NAME
from .loading import DEFAULT_ADAPTERS_DIR, adapters_for, base_name_of, load_model
from .router import Router
from .schema import Limits, RequestError, RouteAnswer, RouteRequest, parse_request

log = logging.getLogger("taskrouter")
JSON = "application/json"


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
    config = settings.get()
    if context is None:
        threads = config.torch_threads
    else:  # the model server's workers share the cores
        threads = config.threads or max(1, (os.cpu_count() or 1) // _server_workers(context))
    torch.set_num_threads(threads)
    names = config.adapters or None
    model_dir = Path(model_dir) if model_dir else None
    if model_dir is not None and (model_dir / "config.json").exists():
        base, adapters_root, base_name = str(model_dir), model_dir / "adapters", base_name_of(model_dir)
    else:
        base, adapters_root = None, config.adapters_dir or DEFAULT_ADAPTERS_DIR
        base_name = EMBEDDED_NAME
    adapters = adapters_for(base_name, adapters_root, names)
    loaded = load_model(base, adapters, dtype=config.dtype, gpu=_server_gpu(context), merge_lora=config.merge_lora,
                        pack_weights=config.pack_weights)
    loaded.name = base_name
    return Router(
        loaded,
        cache_bytes=config.cache_mb * 2**20,
        max_prompt_tokens=config.max_prompt_tokens,
        default_adapter=config.default_adapter,
        # the model server hands a worker one request at a time: nothing to batch there
        max_batch=config.batch_max if context is None else 1,
        batch_window_ms=config.batch_window_ms,
        history_slack=config.history_slack,
        pad_rows=config.pad_rows,
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
        return parse_request(payload, Limits.from_settings(settings.get()))
    except RequestError as exc:
        return _failed(exc, context)


def predict_fn(data: RouteRequest | RequestError, model: Router, context=None) -> RouteAnswer | RequestError:
    """Route; the answer also names what of the request was not read (system/tool messages, images...)."""
    if isinstance(data, RequestError):
        return data
    try:
        answer = model.route(data)
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
    return answer.model_copy(update={"ignored": data.ignored}) if data.ignored else answer


def output_fn(prediction: RouteAnswer | RequestError, accept: str = JSON, context=None) -> str:
    """The JSON body: the answer, or the error's `{"error": ...}`; a client that accepts no JSON gets 406."""
    accept = (accept or JSON).split(";")[0].strip().lower()
    if not isinstance(prediction, RequestError) and accept not in (JSON, "*/*"):
        prediction = _failed(RequestError("not_acceptable", f"Accept {accept!r}: only {JSON} can be produced", 406),
                             context)
    if isinstance(prediction, RequestError):
        return json.dumps(prediction.to_json())
    return prediction.model_dump_json(exclude_none=False)
