"""`GET /openapi.json`: an OpenAPI 3.1 description of the switch's own routes, and of the model
routes it forwards, by dialect, each with the error shape its clients read (http/errors.py).
tests/test_openapi.py fails when a route the app registers is missing here."""

from __future__ import annotations

from aiohttp import web

from .. import __version__

_REF = "#/components/schemas/"
# the error shape each dialect's clients read (http/errors.py)
OPENAI, ANTHROPIC, OLLAMA = "OpenAIError", "AnthropicError", "OllamaError"


def _json(schema: str | dict) -> dict:
    return {"application/json": {"schema": {"$ref": _REF + schema} if isinstance(schema, str) else schema}}


def _op(summary: str, tag: str, answer: dict, error: str = OPENAI, params: tuple[str, ...] = (),
        body: bool = False, public: bool = False) -> dict:
    """One operation: its 200 answer (content by media type) and, for any error, `error`'s shape."""
    op: dict = {"summary": summary, "tags": [tag],
                "responses": {"200": {"description": "OK", "content": answer},
                              "default": {"description": "an error, in the shape this route's clients read",
                                          "content": _json(error)}}}
    if params:
        op["parameters"] = [_PARAMS[p] for p in params]
    if body:
        op["requestBody"] = {"required": True, "content": _json({"type": "object", "description":
                                                                 "the dialect's own request; `model` names the model"})}
    if public:
        op["security"] = []
    return op


_PARAMS = {
    "model": {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "a configured model's name or alias"},
    "tail": {"name": "tail", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "the rest of the path, forwarded as is"},
    "lines": {"name": "lines", "in": "query", "schema": {"type": "integer", "default": 100},
              "description": "how many past journal lines"},
    "follow": {"name": "follow", "in": "query", "schema": {"type": "string", "enum": ["1"]},
               "description": "keep the answer open and send new lines as they are written"},
}
def _typed(media_type: str) -> dict:
    return {media_type: {"schema": {"type": "string"}}}


_TEXT = _typed("text/plain")
_ANY_JSON = _json({"type": "object"})
_STREAM = {"application/json": {"schema": {"type": "object"}},
           "text/event-stream": {"schema": {"type": "string", "description": "with `stream: true`"}}}
_NDJSON = {"application/json": {"schema": {"type": "object"}},
           "application/x-ndjson": {"schema": {"type": "string",
                                               "description": "one JSON object a line while streaming"}}}


def _own() -> dict:
    """The switch's own routes (admin.py, logs.py, reload.py, ui.py, this module)."""
    return {
        "/health": {"get": _op("liveness: 200 while the switch runs", "switch",
                               _json({"type": "object", "properties": {"status": {"const": "ok"}}}), public=True)},
        "/status": {"get": _op("every model's state, memory and queue, the config in use, the last switches",
                               "switch", _json("Status"))},
        "/running": {"get": _op("the models that run, start or stop", "switch", _json(
            {"type": "object", "properties": {"running": {"type": "array", "items": {"$ref": _REF + "Model"}}}}))},
        "/load/{model}": {"post": _op("start a model through the queue and wait until it is ready", "switch",
                                      _json({"type": "object", "properties": {"loaded": {"type": "string"},
                                                                              "model": {"$ref": _REF + "Model"}}}),
                                      params=("model",))},
        "/unload": {"post": _op("stop every running model after its requests finish", "switch", _json("Unloaded"))},
        "/unload/{model}": {"post": _op("stop one model after its requests finish", "switch", _json("Unloaded"),
                                        params=("model",))},
        "/logs/{model}": {"get": _op("a model's unit's journal lines, as `journalctl -o short-iso` prints them",
                                     "switch", _TEXT, params=("model", "lines", "follow"))},
        "/metrics": {"get": _op("Prometheus metrics (open without a key when metrics_public is set)", "switch",
                                {"text/plain; version=0.0.4": {"schema": {"type": "string"}}})},
        "/reload": {"post": _op("read the config file anew, as SIGHUP does; a refused file is a 409 with the reason",
                                "switch", _json("Reload")),
                    "get": _op("the last reload's outcome", "switch", _json(
                        {"type": "object", "properties": {"last": {"oneOf": [{"$ref": _REF + "Reload"},
                                                                              {"type": "null"}]}}}))},
        "/ui": {"get": _op("the status page", "page", _typed("text/html"), public=True)},
        "/ui/ui.js": {"get": _op("the status page's script", "page", _typed("text/javascript"), public=True)},
        "/ui/ui.css": {"get": _op("the status page's style", "page", _typed("text/css"), public=True)},
        "/ui/events": {"get": _op("the page's live events: model states, switches, requests (server-sent events)",
                                  "page", {"text/event-stream": {"schema": {"type": "string"}}})},
        "/openapi.json": {"get": _op("this description", "switch", _json({"type": "object"}))},
    }


def _forwarded() -> dict:
    """The model routes, by dialect: each picks its model from the request and forwards it."""
    paths: dict = {
        "/v1/{tail}": {"post": {**_openai_post("any other OpenAI route: chat/completions, embeddings, …"),
                                "parameters": [_PARAMS["tail"]]}},
        "/v1/models": {"get": _op("the configured models and aliases", "OpenAI", _ANY_JSON)},
        "/v1/models/{model}": {"get": _op("one model", "OpenAI", _ANY_JSON, params=("model",))},
        "/v1/responses": {"post": _openai_post("OpenAI Responses")},
        "/v1/audio/transcriptions": {"post": _multipart("speech to text")},
        "/v1/audio/translations": {"post": _multipart("speech to English text")},
        "/v1/messages": {"post": _op("Anthropic Messages", "Anthropic", _STREAM, ANTHROPIC, body=True)},
        "/v1/messages/count_tokens": {"post": _op("Anthropic token count", "Anthropic", _ANY_JSON, ANTHROPIC,
                                                  body=True)},
        "/api/version": {"get": _op("Ollama's version route", "Ollama", _ANY_JSON, OLLAMA)},
        "/api/tags": {"get": _op("the models, as Ollama lists them", "Ollama", _ANY_JSON, OLLAMA)},
        "/api/ps": {"get": _op("the running models, as Ollama lists them", "Ollama", _ANY_JSON, OLLAMA)},
        "/api/show": _ollama_post("one model, as Ollama shows it", _ANY_JSON),
        "/api/chat": _ollama_post("Ollama chat"),
        "/api/generate": _ollama_post("Ollama generate"),
        "/api/embed": _ollama_post("Ollama embeddings", _ANY_JSON),
        "/api/embeddings": _ollama_post("Ollama embeddings (the older route)", _ANY_JSON),
        "/upstream/{model}": {"get": _op("the model's own llama-server root, started if need be", "upstream",
                                         {"*/*": {}}, params=("model",))},
        "/upstream/{model}/{tail}": {m: _op("any route of the model's own llama-server, forwarded as is",
                                            "upstream", {"*/*": {}}, params=("model", "tail"))
                                     for m in ("get", "post", "put", "patch", "delete", "options")},
    }
    for path in NATIVE_PATHS:
        paths[path] = {"post": _op(f"llama-server's own {path}", "llama.cpp", _ANY_JSON, body=True)}
    return paths


def _openai_post(what: str, answer: dict = _STREAM) -> dict:
    return _op(what, "OpenAI", answer, OPENAI, body=True)


def _ollama_post(what: str, answer: dict = _NDJSON) -> dict:
    return {"post": _op(what, "Ollama", answer, OLLAMA, body=True)}


def _multipart(what: str) -> dict:
    """An OpenAI route whose body is a multipart form (an audio file and its fields)."""
    form = {"multipart/form-data": {"schema": {"type": "object"}}}
    return {**_openai_post(what, _ANY_JSON), "requestBody": {"required": True, "content": form}}


# llama-server's own routes the switch forwards by the body's `model` (http/native.py)
NATIVE_PATHS = ("/completion", "/completions", "/infill", "/tokenize", "/detokenize", "/embedding", "/embeddings",
                "/rerank", "/reranking", "/v1/rerank", "/v1/reranking", "/apply-template")

_MODEL = {"type": "object", "properties": {
    "model": {"type": "string"}, "unit": {"type": "string"}, "url": {"type": "string"},
    "state": {"type": "string", "enum": ["stopped", "starting", "ready", "stopping", "failed"]},
    "since": {"type": "number", "description": "unix time of the last state change"},
    "reason": {"type": ["string", "null"]}, "in_flight": {"type": "integer"}, "waiting": {"type": "integer"},
    "load_s": {"type": ["number", "null"]}, "failures": {"type": "integer"}, "retry_in_s": {"type": ["number", "null"]},
    "memory": {"type": "object", "properties": {k: {"type": ["integer", "null"], "description": "bytes"} for k in
                                                ("declared", "measured_ram", "measured_vram")}},
    "prompt_cache": {"type": "object"}}}
SCHEMAS = {
    OPENAI: {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "code": {"type": ["string", "null"]}}}}},
    ANTHROPIC: {"type": "object", "required": ["type", "error"], "properties": {
        "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"], "properties": {
            "type": {"type": "string"}, "message": {"type": "string"}}}}},
    OLLAMA: {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Model": _MODEL,
    "Status": {"type": "object", "properties": {
        "config": {"type": ["string", "null"]}, "listen": {"type": "string"},
        "memory_budget": {"type": ["integer", "null"]}, "vram_note": {"type": ["string", "null"]},
        "models": {"type": "array", "items": {"$ref": _REF + "Model"}},
        "switches": {"type": "array", "items": {"type": "object"}}}},
    "Unloaded": {"type": "object", "properties": {"unloaded": {"type": "array", "items": {"type": "string"}}}},
    "Reload": {"type": "object", "properties": {
        "applied": {"type": "boolean"}, "at": {"type": "number"}, "config": {"type": ["string", "null"]},
        "message": {"type": "string", "description": "what is in force now (when applied)"},
        "reason": {"type": "string", "description": "why the file was refused (when not applied)"},
        "notes": {"type": "array", "items": {"type": "string"}}}},
}


def describe() -> dict:
    """The whole description; the same for every switch (the models are in /v1/models)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-switch", "version": __version__,
                 "description": "One OpenAI-compatible URL for several local models, switched under systemd "
                                "--user. Every error the switch answers itself has the shape its route's "
                                "clients read: OpenAI's, Anthropic's on /v1/messages, Ollama's on /api/."},
        "paths": {**_own(), **_forwarded()},
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "one of the config's api_keys"},
            "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
        # only where the config sets api_keys; /health (and /metrics with metrics_public) stay open
        "security": [{"bearer": []}, {"x-api-key": []}, {}],
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(describe())


ROUTES = [web.get("/openapi.json", openapi)]
