"""The exception hierarchy of the SDK.

Everything the SDK raises derives from :class:`SpinwireError`. Errors that come from the
server carry the Centrifugo code: :class:`ApiError` for the server API (codes 100-113 of
the API), :class:`ReplyError` for commands of the real-time client (client protocol codes),
with :class:`ConnectError` and :class:`SubscriptionError` as its connect/subscribe flavours.
"""

from __future__ import annotations

import builtins
from typing import Any


class SpinwireError(Exception):
    """Base class of every error raised by this package."""


class ApiError(SpinwireError):
    """The server API answered with ``error {code, message}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransportError(SpinwireError):
    """The request did not produce an API reply: gRPC status, HTTP status or network error.

    ``grpc_status`` is a :class:`grpc.StatusCode` for gRPC calls, ``http_status`` the HTTP
    status for the HTTP client (``None`` when no response arrived at all).
    """

    def __init__(self, message: str, *, grpc_status: Any = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.grpc_status = grpc_status
        self.http_status = http_status


class AuthenticationError(TransportError):
    """The API key was missing or wrong (gRPC UNAUTHENTICATED, HTTP 401)."""


class TimeoutError(SpinwireError, builtins.TimeoutError):  # noqa: A001 - deliberate shadowing
    """A call did not complete within its timeout (also an :class:`builtins.TimeoutError`)."""


class ReplyError(SpinwireError):
    """A real-time client command was answered with ``Reply.error``."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.temporary = temporary


class ConnectError(ReplyError):
    """The connection ended for good before it was established (connect error or terminal code)."""


class SubscriptionError(ReplyError):
    """A subscription could not be established and gave up (e.g. 103 permission denied)."""


class ClientDisconnectedError(SpinwireError):
    """A command needs a connection, but the client is disconnected or lost it meanwhile."""
