"""The lean HTTP/1.1 server for the gateway (``server.http_server: kvgate``)."""

from kvgate.httpserver.serve import serve

__all__ = ["serve"]
