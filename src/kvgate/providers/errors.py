"""Upstream failures as a small typed hierarchy, translated at the provider boundary.

Failover decides by type (``retryable``) and the API layer maps each type to one HTTP status,
so no stage ever inspects a provider's raw error text to decide what to do.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream call failed. ``message`` keeps the upstream's own words."""

    retryable: bool = True
    #: HTTP status the gateway answers with when this is the final failure.
    client_status: int = 502
    error_type: str = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, reset, DNS)."""

    client_status = 502
    error_type = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    """No answer (or no next chunk) within the deadline."""

    client_status = 504
    error_type = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429; another deployment may still have capacity."""

    client_status = 429
    error_type = "upstream_rate_limited"


class UpstreamServerError(UpstreamError):
    """The upstream answered 5xx, or broke the protocol (bad JSON, cut stream)."""

    client_status = 502
    error_type = "upstream_server_error"


class UpstreamOverloaded(UpstreamServerError):
    """The upstream answered 503: it is up but cannot take work now."""

    client_status = 503


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (4xx other than 429).

    Not retryable: another deployment would refuse the same request, so the client hears the
    upstream's status and message at once.
    """

    retryable = False
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.client_status = upstream_status


def error_for_status(status: int, message: str) -> UpstreamError:
    """Map an upstream HTTP status to the exception failover understands."""
    if status == 429:
        return UpstreamRateLimited(message, upstream_status=status)
    if status in (503, 529):  # 529: Anthropic's 'overloaded'
        return UpstreamOverloaded(message, upstream_status=status)
    if status == 504 or status == 408:
        return UpstreamTimeout(message, upstream_status=status)
    if status >= 500:
        return UpstreamServerError(message, upstream_status=status)
    return UpstreamRejected(message, upstream_status=status)
