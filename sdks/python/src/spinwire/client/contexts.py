"""The values passed to event handlers (and yielded by publication iterators)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spinwire._payload import decode_json
from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2


@dataclass(frozen=True)
class ConnectingContext:
    code: int
    reason: str


@dataclass(frozen=True)
class ConnectedContext:
    client: str
    """Client id the server assigned to this connection."""
    version: str
    data: bytes
    """``ConnectResult.data`` (empty when the server sent none)."""


@dataclass(frozen=True)
class DisconnectedContext:
    code: int
    reason: str


@dataclass(frozen=True)
class ErrorContext:
    error: BaseException
    where: str
    """What failed: ``connect``, ``transport``, ``token``, ``refresh``, ``subscribe``."""


@dataclass(frozen=True)
class SubscribingContext:
    channel: str
    code: int
    reason: str


@dataclass(frozen=True)
class SubscribedContext:
    channel: str
    recovered: bool
    """The missed publications were all delivered (they arrive right after this event)."""
    was_recovering: bool
    """A recovery was attempted; with ``recovered`` false the app should re-sync its state."""
    recoverable: bool
    positioned: bool
    epoch: str
    offset: int
    data: bytes
    server_side: bool = False
    """True for subscriptions the server made (token ``channels``/``subs``, API subscribe)."""


@dataclass(frozen=True)
class UnsubscribedContext:
    channel: str
    code: int
    reason: str


@dataclass(frozen=True)
class PublicationContext:
    channel: str
    data: bytes
    offset: int
    info: client_pb2.ClientInfo | None = None
    """Publisher's info when a client published it."""
    tags: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """``data`` decoded as JSON."""
        return decode_json(self.data)

    @classmethod
    def from_proto(cls, channel: str, pub: client_pb2.Publication) -> PublicationContext:
        return cls(
            channel=channel,
            data=pub.data,
            offset=pub.offset,
            info=pub.info if pub.HasField("info") else None,
            tags=dict(pub.tags),
        )


@dataclass(frozen=True)
class JoinLeaveContext:
    channel: str
    info: client_pb2.ClientInfo


@dataclass(frozen=True)
class MessageContext:
    data: bytes
