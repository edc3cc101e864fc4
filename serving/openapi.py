"""OpenAPI 3.1 description of the served API, generated from the pydantic request/answer models.

Served at GET /openapi.json so clients and fuzzers (e.g. schemathesis) can read the contract.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic.json_schema import models_json_schema

from taskrouter.schema import RouteAnswer, RouteRequest

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}


def _error_response(text: str) -> dict:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


@lru_cache(maxsize=1)
def openapi() -> dict:
    """The OpenAPI document (built once)."""
    refs, defs = models_json_schema([(RouteRequest, "validation"), (RouteAnswer, "serialization")],
                                    ref_template="#/components/schemas/{model}")
    schemas = {**defs["$defs"], "Error": ERROR}
    request_ref = refs[(RouteRequest, "validation")]
    answer_ref = refs[(RouteAnswer, "serialization")]
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskrouter", "version": "1", "description": "Route a conversation turn to one task of a dynamic list, or none."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                                      "description": "only when the server sets TASKROUTER_API_KEY"}}},
        "paths": {
            "/ping": {"get": {"summary": "health check: 200 once the model is loaded (never needs the API key)",
                              "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}}}},
            "/invocations": {"post": {
                "summary": "route the conversation's latest user turn",
                "security": [{}, {"apiKey": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": request_ref}}},
                "responses": {
                    "200": {"description": "the decision", "content": {"application/json": {"schema": answer_ref}}},
                    "400": _error_response("invalid JSON or an invalid field (the message names it)"),
                    "401": _error_response("missing or wrong API key"),
                    "404": _error_response("unknown adapter"),
                    "413": _error_response("request too large"),
                    "415": _error_response("not application/json"),
                    "503": _error_response("queue full (see Retry-After) or model still loading"),
                    "504": _error_response("deadline passed while queued; not computed"),
                }}},
        },
    }
