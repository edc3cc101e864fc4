"""The team review web app: one HTML page plus a small JSON API over the SQLite review store.

Each reviewer logs in with the token `taskrouter data review --reviewer NAME` issued them; the
page sends it as `Authorization: Bearer TOKEN` and the server knows the reviewer from it alone,
so nobody can act under another name on a shared server. Each POST is one store transaction,
so the page holds no state the server has not saved. Every error is a JSON body.
"""
from __future__ import annotations

from importlib.resources import files

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .review_store import Conflict, ReviewStore

PAGE = files(__package__).joinpath("review_page.html").read_text(encoding="utf-8")


class Unauthorized(Exception):
    """No token, or one no reviewer holds."""


def create_app(store: ReviewStore) -> Flask:
    """A Flask app serving the page and /api/{whoami,claim,back,decide,heartbeat,progress} on `store`."""
    app = Flask(__name__)

    def fail(code: str, message: str, status: int):
        return jsonify({"error": {"code": code, "message": message}}), status

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ValueError("body: expected a JSON object")
        return data

    def conversation_id(data: dict) -> str:
        if not isinstance(data.get("id"), str):
            raise ValueError("id: the conversation id (a string) is required")
        return data["id"]

    @app.before_request
    def identify():
        if request.path.startswith("/api/"):
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            g.reviewer = store.reviewer_for(token) if token else None
            if g.reviewer is None:
                raise Unauthorized("token: log in with the link `taskrouter data review --reviewer NAME` printed")

    @app.errorhandler(Unauthorized)
    def unauthorized(exc: Unauthorized):
        return fail("unauthorized", str(exc), 401)

    @app.errorhandler(ValueError)
    def bad_request(exc: ValueError):
        return fail("invalid_field", str(exc), 400)

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict):
        return fail("conflict", str(exc), 409)

    @app.errorhandler(KeyError)
    def not_found(exc: KeyError):
        return fail("not_found", str(exc.args[0]), 404)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return fail(exc.name.lower().replace(" ", "_"), exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        app.logger.exception("review API error")
        return fail("internal_error", f"the server failed ({type(exc).__name__}); your saved decisions are safe", 500)

    @app.get("/")
    def page():
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}

    @app.get("/api/whoami")
    def whoami():
        return jsonify({"reviewer": g.reviewer, "progress": store.progress()})

    @app.get("/api/progress")
    def progress():
        return jsonify(store.progress())

    @app.post("/api/claim")
    def claim():
        pool = body().get("pool", "new")
        if pool not in ("new", "later"):
            raise ValueError("pool: must be 'new' or 'later'")
        return jsonify({"item": store.claim(g.reviewer, pool), "progress": store.progress()})

    @app.post("/api/back")
    def back():
        current = body().get("id")
        return jsonify({"item": store.back(g.reviewer, current if isinstance(current, str) else None),
                        "progress": store.progress()})

    @app.post("/api/decide")
    def decide():
        data = body()
        conv_id = conversation_id(data)
        if not isinstance(data.get("action"), str):
            raise ValueError("action: one of confirm, relabel, later, wrong is required")
        status = store.decide(g.reviewer, conv_id, data["action"], data.get("tasks"))
        return jsonify({"status": status, "progress": store.progress()})

    @app.post("/api/heartbeat")
    def heartbeat():
        return jsonify({"held": store.renew(g.reviewer, conversation_id(body())), "progress": store.progress()})

    return app
