"""Flask app with the SageMaker container's routes, calling the artifact's four handler functions.

The model loads in a background thread so the worker answers /ping (503) at
once and 200 only once the router is ready, as SageMaker health checks expect.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType

from flask import Flask, Response, request

from taskrouter.schema import RequestError

log = logging.getLogger("taskrouter.serving")


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
    import json

    return Response(json.dumps(exc.to_json()), status=exc.status, mimetype="application/json")


def create_app(model_dir: str | None = None, load_async: bool = True) -> Flask:
    """Build the app; `model_dir` is an unpacked artifact, or None for the embedded default."""
    app = Flask("taskrouter")
    app.config["MAX_CONTENT_LENGTH"] = int(os.environ.get("TASKROUTER_MAX_BODY_BYTES", 1024 * 1024))
    handler = load_handler(model_dir)
    state: dict = {"model": None, "error": None}

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

    @app.get("/ping")
    def ping():
        if state["model"] is not None:
            return {"status": "ok"}
        if state["error"]:
            return {"status": "failed", "error": state["error"]}, 500
        return {"status": "loading"}, 503

    @app.post("/invocations")
    def invocations():
        if state["model"] is None:
            return _error(RequestError("not_ready", "the model is still loading", 503))
        try:
            data = handler.input_fn(request.get_data(), request.content_type or "application/json")
            prediction = handler.predict_fn(data, state["model"])
            body = handler.output_fn(prediction, request.headers.get("Accept", "application/json"))
        except RequestError as exc:
            return _error(exc)
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

    app.extensions["taskrouter"] = state
    return app


def app_from_env() -> Flask:
    """Entry point for gunicorn: `taskrouter.serving.app:app_from_env()`."""
    return create_app(os.environ.get("TASKROUTER_MODEL_DIR") or None)
