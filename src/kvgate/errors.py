"""Errors the gateway itself raises, each carrying its HTTP status and OpenAI error shape."""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """A refusal with a status, rendered as ``{"error": {message, type, code, param}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.code, self.param)


def error_body(message: str, error_type: str, code: str | None, param: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "code": code, "param": param}}
    )


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> (
    GatewayError
):
    return GatewayError(400, message, code=code, param=param)
