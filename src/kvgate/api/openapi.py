"""The gateway's OpenAPI schema and a Swagger UI page served from the bundled assets."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import orjson

from kvgate import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _op(summary: str, body: str | None = None, statuses: tuple[int, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK"}} | {
            str(s): {"description": "Error",
                     "content": {"application/json": {"schema": _ERROR}}} for s in statuses
        },
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    return op


_COMPLETION_ERRORS = (400, 401, 402, 404, 413, 422, 429, 502, 503, 504)


def openapi_schema(model_names: list[str]) -> dict[str, Any]:
    model_prop = {"type": "string", "enum": model_names, "example": model_names[0]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "KVGate", "version": __version__,
                 "description": "OpenAI-compatible gateway with KV-cache-aware routing."},
        "paths": {
            "/v1/chat/completions": {"post": _op(
                "Chat completion (blocking or SSE stream)", "ChatRequest", _COMPLETION_ERRORS)},
            "/v1/completions": {"post": _op(
                "Legacy text completion", "CompletionRequest", _COMPLETION_ERRORS)},
            "/v1/models": {"get": _op("Logical models served")},
            "/healthz": {"get": _op("Liveness")},
            "/readyz": {"get": _op("Readiness: at least one healthy deployment per model", None,
                                   (503,))},
            "/metrics": {"get": _op("Prometheus metrics")},
            "/admin/stats": {"get": _op("Live routing state per deployment", None, (401,))},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}}},
            "ChatRequest": {"type": "object", "required": ["model", "messages"],
                            "additionalProperties": True, "properties": {
                "model": model_prop,
                "messages": {"type": "array", "items": {"type": "object"}, "example": [
                    {"role": "user", "content": "Hello"}]},
                "stream": {"type": "boolean"}, "max_tokens": {"type": "integer"},
                "temperature": {"type": "number"},
                "stream_options": {"type": "object"}}},
            "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                                  "additionalProperties": True, "properties": {
                "model": model_prop, "prompt": {"type": "string", "example": "Say hello"},
                "stream": {"type": "boolean"}, "max_tokens": {"type": "integer"}}},
        }},
    }


_DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>KVGate API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


#: The only Swagger UI files the page uses; read once at start-up, never per request.
_ASSET_NAMES = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")


class DocsAssets:
    """Pre-rendered docs responses: the page, the schema, and the Swagger UI files."""

    def __init__(self, model_names: list[str]) -> None:
        self.page = _DOCS_HTML.encode()
        self.schema = orjson.dumps(openapi_schema(model_names))
        self._assets: dict[str, tuple[bytes, str]] = {}
        root = _swagger_root()
        for name in _ASSET_NAMES if root is not None else ():
            path = root / name  # type: ignore[operator]
            if path.is_file():
                kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
                self._assets[name] = (path.read_bytes(), kind)

    def asset(self, name: str) -> tuple[bytes, str] | None:
        return self._assets.get(name)


def _swagger_root() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)
