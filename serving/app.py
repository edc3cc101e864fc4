"""Flask app with the SageMaker container's routes, calling the artifact's four handler functions.

The model loads in a background thread so the worker answers /ping (503) at
once and 200 only once the router is ready, as SageMaker health checks expect.
Model calls go through a bounded admission queue (503 + Retry-After when full,
504 past TASKROUTER_DEADLINE_MS). With TASKROUTER_API_KEY set, every route but
/ping and /openapi.json needs `Authorization: Bearer KEY` (or `X-API-Key: KEY`):
health checks carry no key and those two reveal no data. Request logs hold
sizes, status and the chosen task, never message text unless TASKROUTER_LOG_BODIES=1.
"""
from __future__ import annotations

import hmac
import importlib.util
import json
import logging
import os
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType

from flask import Flask, Response, request

from taskrouter.schema import RequestError

from .admission import Admission, Overloaded
from .openapi import openapi

log = logging.getLogger("taskrouter.serving")
OPEN_ROUTES = ("/ping", "/openapi.json")


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
    response = Response(json.dumps(exc.to_json()), status=exc.status, mimetype="application/json")
    if exc.status == 503:
        response.headers["Retry-After"] = str(exc.retry_after if isinstance(exc, Overloaded) else 5)
    return response


def _presented_key() -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Key", "")


def _log_request(status: int, started: float, data, answer, error: RequestError | None) -> None:
    """One line per request: sizes, status, outcome; the body only with TASKROUTER_LOG_BODIES=1."""
    fields = {"status": status, "ms": round((time.perf_counter() - started) * 1000, 1)}
    if data is not None:
        fields.update(messages=len(data.messages), tasks=len(data.tasks))
    if answer is not None:
        fields.update(task=answer.task, event=answer.event)
    if error is not None:
        fields["error"] = error.code
    if os.environ.get("TASKROUTER_LOG_BODIES") == "1":
        fields["body"] = request.get_data(as_text=True)
    log.info("invocation %s", json.dumps(fields, ensure_ascii=False))


def create_app(model_dir: str | None = None, load_async: bool = True, admission: Admission | None = None) -> Flask:
    """Build the app; `model_dir` is an unpacked artifact, or None for the embedded default."""
    app = Flask("taskrouter")
    app.config["MAX_CONTENT_LENGTH"] = int(os.environ.get("TASKROUTER_MAX_BODY_BYTES", 1024 * 1024))
    handler = load_handler(model_dir)
    admission = admission or Admission.from_env()
    api_key = os.environ.get("TASKROUTER_API_KEY", "")
    state: dict = {"model": None, "error": None, "admission": admission}

    def load() -> None:
        started = time.perf_counter()
        try:
            state["model"] = handler.model_fn(model_dir)
            log.info("model loaded in %.1f s", time.perf_counter() - started)
        except Exception as exc:  # surfaced by /ping, never a crash of the worker
            log.exception("model failed to load")
            state["error"] = f"{type(exc).__name__}: {exc}"

    if load_async:
        threading.Thread(target=load, name="model-loader", daemon=True).start()
    else:
        load()

    @app.before_request
    def require_key():
        if api_key and request.path not in OPEN_ROUTES and \
                not hmac.compare_digest(_presented_key().encode(), api_key.encode()):
            return _error(RequestError("unauthorized", "missing or wrong API key: send Authorization: Bearer KEY", 401))
        return None

    @app.get("/openapi.json")
    def openapi_json():
        return openapi()

    @app.get("/ping")
    def ping():
        if state["model"] is not None:
            return {"status": "ok"}
        if state["error"]:
            return {"status": "failed", "error": state["error"]}, 500
        return {"status": "loading"}, 503

    @app.post("/invocations")
    def invocations():
        started, arrived = time.perf_counter(), time.monotonic()
        data = prediction = None
        try:
            if state["model"] is None:
                raise RequestError("not_ready", "the model is still loading", 503)
            data = handler.input_fn(request.get_data(), request.content_type or "application/json")
            with admission.slot(arrived):
                prediction = handler.predict_fn(data, state["model"])
            body = handler.output_fn(prediction, request.headers.get("Accept", "application/json"))
        except RequestError as exc:
            _log_request(exc.status, started, data, prediction, exc)
            return _error(exc)
        _log_request(200, started, data, prediction, None)
        return Response(body, mimetype="application/json")

    @app.errorhandler(413)
    def too_large(_):
        return _error(RequestError("too_large", f"request body exceeds {app.config['MAX_CONTENT_LENGTH']} bytes", 413))

    @app.errorhandler(404)
    def not_found(_):
        return _error(RequestError("not_found", f"no route {request.path}; use /ping or /invocations", 404))

    @app.errorhandler(405)
    def bad_method(_):
        return _error(RequestError("method_not_allowed", f"{request.method} is not allowed on {request.path}", 405))

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        from werkzeug.exceptions import HTTPException

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
    return create_app(os.environ.get("TASKROUTER_MODEL_DIR") or None)
