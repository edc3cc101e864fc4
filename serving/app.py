"""Flask app with the SageMaker container's routes, calling the artifact's four handler functions.

The model loads in a background thread so the worker answers /ping (503) at
once and 200 only once the router is ready, as SageMaker health checks expect.
Model calls go through a bounded admission queue (503 + Retry-After when full,
504 past TASKROUTER_DEADLINE_MS from arrival). With TASKROUTER_API_KEY set, every
route but /ping and /openapi.json needs `Authorization: Bearer KEY` (or
`X-API-Key: KEY`): health checks carry no key and those two reveal no data.
Request logs are JSON lines with sizes, status and the chosen task, never
message text unless TASKROUTER_LOG_BODIES=1. GET /metrics is Prometheus text.
"""
from __future__ import annotations

import hmac
import importlib.util
import json
import logging
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType

from flask import Flask, Response, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from taskrouter import settings
from taskrouter.schema import RequestError

from .admission import Admission, Overloaded
from .metrics import CONTENT_TYPE, Metrics
from .openapi import openapi
from .worker import arrived_at

log = logging.getLogger("taskrouter.serving")
OPEN_ROUTES = ("/ping", "/openapi.json")
JSON = "application/json"


def load_handler(model_dir: str | None) -> ModuleType:
    """The artifact's code/inference.py when it has one (as SageMaker does), else the library's handler."""
    script = Path(model_dir, "code", "inference.py") if model_dir else None
    if script is not None and script.exists():
        import sys

        sys.path.insert(0, str(script.parent))
        spec = importlib.util.spec_from_file_location("inference", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from taskrouter import handler

    return handler


def _error(exc: RequestError) -> Response:
    response = Response(json.dumps(exc.to_json()), status=exc.status, mimetype=JSON)
    if exc.status == 503:
        response.headers["Retry-After"] = str(exc.retry_after if isinstance(exc, Overloaded) else 5)
    return response


def _presented_key() -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Key", "")


def _accepts_json() -> bool:
    """Whether the Accept header admits JSON (checked before the model runs, not after)."""
    accept = request.headers.get("Accept", "")
    return not accept.strip() or request.accept_mimetypes.quality(JSON) > 0


def _read_body(limit: int) -> bytes:
    """The body, at most `limit` bytes whether it came with Content-Length or chunked; 413 above, 400 if
    its framing is broken (gunicorn raises ParseException for a bad chunk size, mid-read)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError("too_large", f"request body exceeds {limit} bytes", 413)
    try:
        data = request.stream.read(limit + 1)
    except RequestEntityTooLarge:
        data = b"x" * (limit + 1)
    except (ParseException, OSError) as exc:
        raise RequestError("bad_framing", f"request body: malformed chunked framing ({type(exc).__name__})") from None
    if len(data) > limit:
        raise RequestError("too_large", f"request body exceeds {limit} bytes", 413)
    return data


def create_app(model_dir: str | None = None, load_async: bool = True, admission: Admission | None = None,
               config: settings.Settings | None = None) -> Flask:
    """Build the app; `model_dir` is an unpacked artifact, or None for the embedded default."""
    config = config or settings.get()
    app = Flask("taskrouter")
    handler = load_handler(model_dir)
    admission = admission or Admission.from_settings(config)
    api_key = config.api_key.get_secret_value() if config.api_key else ""
    state: dict = {"model": None, "error": None, "admission": admission}
    metrics = Metrics(admission, lambda: state["model"])
    contract = openapi(config)

    def load() -> None:
        started = time.perf_counter()
        try:
            state["model"] = handler.model_fn(model_dir)
        except Exception as exc:  # surfaced by /ping, never a crash of the worker
            log.exception("model failed to load")
            state["error"] = f"{type(exc).__name__}: {exc}"
            return
        router = state["model"]
        adapters = list(getattr(getattr(router, "loaded", None), "adapters", {}) or [])
        log.info("model loaded", extra={"fields": {"seconds": round(time.perf_counter() - started, 1),
                                                   "model": getattr(router, "model_name", None),
                                                   "adapters": adapters}})
        if not adapters:
            log.warning("no adapter loaded: requests are routed by the bare base model")

    if load_async:
        threading.Thread(target=load, name="model-loader", daemon=True).start()
    else:
        load()

    def log_invocation(status: int, arrived: float, body: bytes, data, answer, error: RequestError | None) -> None:
        """One JSON line per request: sizes, status, outcome; the body only with TASKROUTER_LOG_BODIES=1."""
        seconds = time.monotonic() - arrived
        metrics.latency.observe(seconds)
        fields = {"status": status, "ms": round(seconds * 1000, 1), "body_bytes": request.content_length}
        if data is not None:
            fields.update(messages=len(data.messages), tasks=len(data.tasks))
        if answer is not None:
            fields.update(task=answer.task, event=answer.event)
        if error is not None:
            fields["error"] = error.code
        if config.log_bodies:
            fields["body"] = body.decode("utf-8", "replace")
        log.info("invocation", extra={"fields": fields})

    @app.before_request
    def require_key():
        if api_key and request.path not in OPEN_ROUTES and \
                not hmac.compare_digest(_presented_key().encode(), api_key.encode()):
            return _error(RequestError("unauthorized", "missing or wrong API key: send Authorization: Bearer KEY", 401))
        return None

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.get("/openapi.json")
    def openapi_json():
        return contract

    @app.get("/metrics")
    def metrics_text():
        return Response(metrics.render(), mimetype=CONTENT_TYPE)

    @app.get("/ping")
    def ping():
        if state["model"] is not None:
            return {"status": "ok"}
        if state["error"]:
            return {"status": "failed", "error": state["error"]}, 500
        return {"status": "loading"}, 503

    @app.post("/invocations")
    def invocations():
        arrived = arrived_at() or time.monotonic()
        data = prediction = None
        body = b""
        try:
            if not _accepts_json():
                raise RequestError("not_acceptable", f"Accept {request.headers.get('Accept')!r}: only {JSON} "
                                                     "can be produced", 406)
            body = _read_body(config.max_body_bytes)
            if state["model"] is None:
                raise RequestError("not_ready", "the model is still loading", 503)
            data = handler.input_fn(body, request.content_type or JSON)
            with admission.slot(arrived):
                prediction = handler.predict_fn(data, state["model"])
            answer = handler.output_fn(prediction, JSON)
        except RequestError as exc:
            log_invocation(exc.status, arrived, body, data, prediction, exc)
            return _error(exc)
        log_invocation(200, arrived, body, data, prediction, None)
        return Response(answer, mimetype=JSON)

    @app.errorhandler(404)
    def not_found(_):
        return _error(RequestError("not_found", f"no route {request.path}; use /ping or /invocations", 404))

    @app.errorhandler(405)
    def bad_method(exc: MethodNotAllowed):
        response = _error(RequestError("method_not_allowed", f"{request.method} is not allowed on {request.path}", 405))
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
        return response

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        if isinstance(exc, HTTPException):  # other HTTP errors keep their status, with a JSON body
            return _error(RequestError(exc.name.lower().replace(" ", "_"), exc.description or exc.name, exc.code or 500))
        # type and frames only: an exception message may quote the request's text
        log.error("internal error on %s: %s\n%s", request.path, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        return _error(RequestError("internal_error", f"internal error ({type(exc).__name__}); see the server log", 500))

    app.extensions["taskrouter"] = state
    return app


def app_from_env() -> Flask:
    """Entry point for gunicorn: `taskrouter.serving.app:app_from_env()`."""
    return create_app(settings.get().model_dir)
