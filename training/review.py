"""The team review web app: one HTML page plus a small JSON API over the SQLite review store.

Reviewers identify by name (kept in the browser); each POST is one store
transaction, so the page holds no state the server has not saved.
"""
from __future__ import annotations

from importlib.resources import files

from flask import Flask, jsonify, request

from .review_store import Conflict, ReviewStore

PAGE = files(__package__).joinpath("review_page.html").read_text(encoding="utf-8")


def create_app(store: ReviewStore) -> Flask:
    """A Flask app serving the page and /api/{claim,back,decide,heartbeat,progress} on `store`."""
    app = Flask(__name__)

    def fail(code: str, message: str, status: int):
        return jsonify({"error": {"code": code, "message": message}}), status

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ValueError("body: expected a JSON object")
        reviewer = data.get("reviewer")
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError("reviewer: enter your name")
        data["reviewer"] = reviewer.strip()[:80]
        return data

    @app.errorhandler(ValueError)
    def bad_request(exc: ValueError):
        return fail("invalid_field", str(exc), 400)

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict):
        return fail("conflict", str(exc), 409)

    @app.errorhandler(KeyError)
    def not_found(exc: KeyError):
        return fail("not_found", str(exc.args[0]), 404)

    @app.get("/")
    def page():
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}

    @app.get("/api/progress")
    def progress():
        return jsonify(store.progress())

    @app.post("/api/claim")
    def claim():
        data = body()
        pool = data.get("pool", "new")
        if pool not in ("new", "later"):
            raise ValueError("pool: must be 'new' or 'later'")
        return jsonify({"item": store.claim(data["reviewer"], pool), "progress": store.progress()})

    @app.post("/api/back")
    def back():
        data = body()
        return jsonify({"item": store.back(data["reviewer"], data.get("id")), "progress": store.progress()})

    @app.post("/api/decide")
    def decide():
        data = body()
        if not isinstance(data.get("id"), str):
            raise ValueError("id: the conversation id is required")
        status = store.decide(data["reviewer"], data["id"], data.get("action", ""), data.get("tasks"))
        return jsonify({"status": status, "progress": store.progress()})

    @app.post("/api/heartbeat")
    def heartbeat():
        data = body()
        return jsonify({"held": store.renew(data["reviewer"], str(data.get("id"))), "progress": store.progress()})

    return app
