"""Server-side subscriptions: channels the server subscribed the connection to.

They come from the connection token (``channels``/``subs``) in ``ConnectResult.subs`` or
later from a ``subscribe`` push (server API subscribe). Their events are the client's own
(``subscribed``, ``publication``, ``join``, ``leave``, ``unsubscribed``). Their positions
are kept so that a reconnect asks the server to recover them (``ConnectRequest.subs``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2
from spinwire.client.contexts import (
    JoinLeaveContext,
    PublicationContext,
    SubscribedContext,
    UnsubscribedContext,
)

Emit = Callable[[str, Any], Awaitable[None]]


@dataclass
class _Position:
    recoverable: bool
    epoch: str
    offset: int


def _subscribed(channel: str, res: client_pb2.SubscribeResult | client_pb2.Subscribe) -> SubscribedContext:
    return SubscribedContext(
        channel=channel,
        recovered=getattr(res, "recovered", False),
        was_recovering=getattr(res, "was_recovering", False),
        recoverable=res.recoverable,
        positioned=res.positioned,
        epoch=res.epoch,
        offset=res.offset,
        data=res.data,
        server_side=True,
    )


class ServerSubscriptions:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._positions: dict[str, _Position] = {}

    def __contains__(self, channel: str) -> bool:
        return channel in self._positions

    def channels(self) -> list[str]:
        return list(self._positions)

    def recovery_requests(self) -> dict[str, client_pb2.SubscribeRequest]:
        """What to put in ``ConnectRequest.subs`` to recover after a reconnect."""
        return {
            channel: client_pb2.SubscribeRequest(recover=True, epoch=pos.epoch, offset=pos.offset)
            for channel, pos in self._positions.items()
            if pos.recoverable
        }

    async def on_connect(self, result: client_pb2.ConnectResult) -> None:
        for channel in [ch for ch in self._positions if ch not in result.subs]:
            del self._positions[channel]
            await self._emit("unsubscribed", UnsubscribedContext(channel, 0, "server-side subscription gone"))
        for channel, res in result.subs.items():
            self._positions[channel] = _Position(res.recoverable, res.epoch, res.offset)
            await self._emit("subscribed", _subscribed(channel, res))
            for pub in res.publications:  # recovered ones, in order
                await self.on_publication(channel, pub)

    async def on_subscribe_push(self, channel: str, push: client_pb2.Subscribe) -> None:
        self._positions[channel] = _Position(push.recoverable, push.epoch, push.offset)
        await self._emit("subscribed", _subscribed(channel, push))

    async def on_unsubscribe_push(self, channel: str, push: client_pb2.Unsubscribe) -> None:
        if self._positions.pop(channel, None) is not None:
            await self._emit("unsubscribed", UnsubscribedContext(channel, push.code, push.reason))

    async def on_publication(self, channel: str, pub: client_pb2.Publication) -> None:
        pos = self._positions.get(channel)
        if pos is not None:
            if pub.offset:
                pos.offset = pub.offset
            if pub.epoch:
                pos.epoch = pub.epoch
        await self._emit("publication", PublicationContext.from_proto(channel, pub))

    async def on_join_leave(self, event: str, channel: str, info: client_pb2.ClientInfo) -> None:
        await self._emit(event, JoinLeaveContext(channel, info))
