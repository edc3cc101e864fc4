"""OpenAPI 3.1 description of the served API: the pydantic models plus every rule and status the server enforces.

Served at GET /openapi.json so clients and fuzzers (schemathesis runs against it in
the tests) can read the contract. Limits come from the server's settings, so the
document states the ones in force. Rules JSON Schema cannot say (the last message
is the user's, names unique after normalisation) are in the descriptions.
"""
from __future__ import annotations

from pydantic.json_schema import models_json_schema

from taskrouter.schema import RouteAnswer, RouteRequest
from taskrouter.settings import Settings

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {"error": {
    "type": "object", "required": ["code", "message"], "additionalProperties": False,
    "properties": {"code": {"type": "string", "description": "machine-readable, e.g. invalid_field"},
                   "message": {"type": "string", "description": "names the field at fault"}}}}}
SINGLE_LINE = "^[^\\n\\r\\u0085\\u2028\\u2029]*$"
RETRY_AFTER = {"Retry-After": {"description": "seconds until the queue should have drained",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _error_response(text: str, headers: dict | None = None) -> dict:
    response = {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return response | ({"headers": headers} if headers else {})


def _rules(schemas: dict, config: Settings) -> None:
    """Write the server's limits and cross-field rules into the generated schemas."""
    request = schemas["RouteRequest"]["properties"]
    names = (f"Names are single lines of at most {config.max_name_bytes} UTF-8 bytes, unique once NFKC-normalised "
             "with invisible characters (zero-width, BOM, soft hyphen, bidi marks) removed, and never `none` "
             f"(reserved). Names and descriptions together hold at most {config.max_text_bytes} UTF-8 bytes.")
    request["messages"].update(maxItems=config.max_messages, description=(
        "The conversation so far; the last message is the user's. Only user and assistant text is read: system, "
        "developer and tool messages, non-text content parts and tool calls are skipped and named in the answer's "
        f"`ignored`. Message text holds at most {config.max_text_bytes} UTF-8 bytes in all."))
    for field in ("tasks", "tools"):
        request[field].pop("default")
        request[field]["maxItems"] = config.max_tasks
        request[field]["description"] = (f"The task list in force ({'as OpenAI tools' if field == 'tools' else 'give this or tools'}"
                                          f", not both). {names}")
    request["current_task"]["description"] = ("The task the client considers active: a listed name (compared after "
                                              "the same normalisation) or `none`, the router's answer for no task.")
    request["top_k"]["maximum"] = config.max_top_k
    request["adapter"]["description"] = "a loaded adapter (404 otherwise), or `none` for the bare base model"
    for model in ("Task", "Function"):
        schemas[model]["properties"]["name"].update(maxLength=config.max_name_bytes, pattern=SINGLE_LINE)


def openapi(config: Settings) -> dict:
    """The OpenAPI document for a server running with `config`."""
    refs, defs = models_json_schema([(RouteRequest, "validation"), (RouteAnswer, "serialization")],
                                    ref_template="#/components/schemas/{model}")
    schemas = {**defs["$defs"], "Error": ERROR}
    _rules(schemas, config)
    request_ref = refs[(RouteRequest, "validation")]
    answer_ref = refs[(RouteAnswer, "serialization")]
    keyed = config.api_key is not None
    security = [{"bearer": []}, {"apiKey": []}] if keyed else [{}]
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskrouter", "version": "1",
                 "description": "Route a conversation turn to one task of a dynamic list, or none."},
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the server's TASKROUTER_API_KEY"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "the server's TASKROUTER_API_KEY"}}},
        "paths": {
            "/ping": {"get": {"summary": "health check: 200 once the model is loaded (never needs the API key)",
                              "security": [{}],
                              "responses": {"200": {"description": "ready"}, "503": {"description": "loading"},
                                            "500": {"description": "the model failed to load"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics of this worker", "security": security,
                                 "responses": {"200": {"description": "Prometheus text format", "content": text},
                                               "401": _error_response("missing or wrong API key")}}},
            "/invocations": {"post": {
                "summary": "route the conversation's latest user turn",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": request_ref}}},
                "responses": {
                    "200": {"description": "the decision", "content": {"application/json": {"schema": answer_ref}}},
                    "400": _error_response("invalid JSON, an invalid field (the message names it) or broken "
                                           "chunked framing"),
                    "401": _error_response("missing or wrong API key"),
                    "404": _error_response("unknown adapter"),
                    "405": _error_response("only POST", {"Allow": {"schema": {"type": "string"}}}),
                    "406": _error_response("the Accept header admits no application/json"),
                    "413": _error_response(f"body over {config.max_body_bytes} bytes (chunked or not), over "
                                           f"{config.max_messages} messages or {config.max_tasks} tasks, text over "
                                           f"{config.max_text_bytes} bytes, or a prompt over "
                                           f"{config.max_prompt_tokens} tokens"),
                    "415": _error_response("not application/json"),
                    "500": _error_response("a server fault (the log has its type and frames, never request text)"),
                    "503": _error_response("queue full or model still loading", RETRY_AFTER),
                    "504": _error_response(f"not started within {config.deadline_ms:.0f} ms of arrival; not computed"),
                }}},
        },
    }
