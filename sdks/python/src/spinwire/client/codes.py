"""States and the SDK's own event codes, plus the server-code rules that drive reconnects.

Server disconnect codes 3000-3499, 4000-4499 and >= 5000 mean "reconnect"; 3500-3999 and
4500-4999 are terminal. Unsubscribe push codes >= 2500 mean "resubscribe". Codes below
100 in events are SDK-internal (mirroring the official SDKs' numbering where it exists).
"""

from __future__ import annotations

import enum


class ClientState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class SubscriptionState(enum.StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    SUBSCRIBING = "subscribing"
    SUBSCRIBED = "subscribed"


# "connecting" event codes (why the client is (re)connecting).
CONNECT_CALLED = 0
TRANSPORT_CLOSED = 1
NO_PING = 2
SUBSCRIBE_TIMEOUT = 3

# "disconnected" event codes of the SDK itself; server codes (>= 3000) and terminal connect
# error codes (>= 100) are reported as they are.
DISCONNECT_CALLED = 0
UNAUTHORIZED = 1

# "subscribing" / "unsubscribed" event codes of the SDK itself.
SUBSCRIBE_CALLED = 0
UNSUBSCRIBE_CALLED = 0

# Connect/subscribe error code for an expired token: fetch a new one and retry.
TOKEN_EXPIRED = 109


def reconnects(disconnect_code: int) -> bool:
    """Whether a server disconnect code asks the client to reconnect."""
    return not (3500 <= disconnect_code <= 3999 or 4500 <= disconnect_code <= 4999)


def resubscribes(unsubscribe_code: int) -> bool:
    """Whether an unsubscribe push code asks the client to subscribe again."""
    return unsubscribe_code >= 2500


def retryable_error(code: int, temporary: bool) -> bool:
    """Whether a connect/subscribe error reply is worth retrying (with backoff)."""
    return temporary or code < 100
