"""Spinwire Python SDK.

- :mod:`spinwire.api` — server API clients (:class:`ApiClient` over gRPC,
  :class:`HttpApiClient` over HTTP JSON).
- :mod:`spinwire.client` — real-time :class:`Client` over the bidirectional gRPC stream.
- :mod:`spinwire.tokens` — connection and subscription JWTs (HS256/384/512).
- :mod:`spinwire.errors` — the exceptions, all derived from :class:`SpinwireError`.
"""

from spinwire._version import __version__
from spinwire.api import ApiClient, HttpApiClient
from spinwire.client import Client, ClientState, Subscription, SubscriptionState
from spinwire.errors import (
    ApiError,
    AuthenticationError,
    ClientDisconnectedError,
    ConnectError,
    ReplyError,
    SpinwireError,
    SubscriptionError,
    TimeoutError,
    TransportError,
)
from spinwire.tokens import connection_token, subscription_token

__all__ = [
    "ApiClient",
    "ApiError",
    "AuthenticationError",
    "Client",
    "ClientDisconnectedError",
    "ClientState",
    "ConnectError",
    "HttpApiClient",
    "ReplyError",
    "SpinwireError",
    "Subscription",
    "SubscriptionError",
    "SubscriptionState",
    "TimeoutError",
    "TransportError",
    "__version__",
    "connection_token",
    "subscription_token",
]
