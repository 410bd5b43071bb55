"""``Subscription``: one client-side channel subscription, its state, position and events.

The subscription keeps its stream position (epoch + offset) from subscribe results and
publications, and re-subscribes with ``recover`` after a reconnect or an unsubscribe push
code >= 2500, so that missed publications are delivered before live ones.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from spinwire._payload import Payload, encode_payload
from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2
from spinwire.client import codes
from spinwire.client._backoff import Backoff
from spinwire.client._events import Emitter
from spinwire.client._position import Position, split_position
from spinwire.client._session import Session, SessionEnd
from spinwire.client.codes import SubscriptionState
from spinwire.client.contexts import (
    ErrorContext,
    JoinLeaveContext,
    PublicationContext,
    SubscribedContext,
    SubscribingContext,
    UnsubscribedContext,
)
from spinwire.errors import ClientDisconnectedError, ReplyError, SubscriptionError, TimeoutError

if TYPE_CHECKING:
    from spinwire.client.client import Client

_END = object()  # ends publication iterators when the subscription is unsubscribed


class PublicationIterator:
    """``async for ctx in sub.publications()``; ends when the subscription is unsubscribed.

    Backed by a bounded queue: when the consumer falls behind, event delivery waits for it.
    Call :meth:`close` (or use ``async with``) when you stop iterating early.
    """

    def __init__(self, sub: Subscription, maxsize: int) -> None:
        self._sub = sub
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def __aiter__(self) -> PublicationIterator:
        return self

    async def __anext__(self) -> PublicationContext:
        item = await self._queue.get()
        if item is _END:
            self.close()
            raise StopAsyncIteration
        return item

    async def _put(self, item: Any) -> None:
        await self._queue.put(item)

    def close(self) -> None:
        if self in self._sub._iterators:
            self._sub._iterators.remove(self)

    async def __aenter__(self) -> PublicationIterator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Subscription(Emitter):
    """Created by :meth:`Client.new_subscription`.

    Events: ``subscribing``, ``subscribed`` (:class:`SubscribedContext` with ``recovered``
    and ``was_recovering``), ``unsubscribed``, ``publication``, ``join``, ``leave``, ``error``.
    """

    EVENTS = ("subscribing", "subscribed", "unsubscribed", "publication", "join", "leave", "error")

    def __init__(
        self,
        client: Client,
        channel: str,
        *,
        token: str = "",
        get_token: Callable[[str], Awaitable[str]] | None = None,
        data: Payload | None = None,
        recoverable: bool = False,
        positioned: bool = False,
        join_leave: bool = False,
        since: Position | None = None,
        queue_size: int = 1024,
    ) -> None:
        super().__init__()
        self.client = client
        self.channel = channel
        self.state = SubscriptionState.UNSUBSCRIBED
        self._token = token
        self._get_token = get_token
        self._data = data
        self._recoverable = recoverable
        self._positioned = positioned
        self._join_leave = join_leave
        self._queue_size = queue_size
        self._iterators: list[PublicationIterator] = []
        # Stream position; ``_recover`` once the server said the stream is recoverable.
        self._epoch = ""
        self._offset = 0
        self._recover = False
        if since is not None:
            self._offset, self._epoch = split_position(since)
            self._recover = True
        self._ready: asyncio.Future[None] | None = None
        self._inflight: Session | None = None  # session a subscribe command is in flight on
        self._backoff = Backoff(client.min_reconnect_delay, client.max_reconnect_delay)

    # ---- public API -----------------------------------------------------------------------

    @property
    def position(self) -> tuple[int, str]:
        """``(offset, epoch)`` of the last publication seen (or of the subscribe result)."""
        return self._offset, self._epoch

    async def subscribe(self) -> None:
        """Subscribe and wait until subscribed (raises :class:`SubscriptionError` when the
        server refuses for good). With the client disconnected this only records the intent:
        the subscription is made on the next connect."""
        if self.state == SubscriptionState.SUBSCRIBED:
            return
        if self.state == SubscriptionState.UNSUBSCRIBED:
            await self._set_subscribing(codes.SUBSCRIBE_CALLED, "subscribe called")
        elif self._ready is None or self._ready.done():
            self._ready = asyncio.get_running_loop().create_future()  # the last wait failed
        session = self.client._session
        if session is not None and self.client.state == codes.ClientState.CONNECTED:
            self._start_subscribe(session)
        if self.client.state == codes.ClientState.DISCONNECTED:
            return
        assert self._ready is not None
        await asyncio.shield(self._ready)

    async def ready(self, timeout: float | None = None) -> None:
        """Wait until subscribed (raises the terminal :class:`SubscriptionError`)."""
        if self.state == SubscriptionState.SUBSCRIBED:
            return
        if self._ready is None:
            raise SubscriptionError(codes.UNSUBSCRIBE_CALLED, "not subscribing")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except builtins.TimeoutError:
            raise TimeoutError(f"{self.channel}: not subscribed within {timeout} s") from None

    async def unsubscribe(self) -> None:
        """Leave the channel (tells the server when connected); no more events after this."""
        if self.state == SubscriptionState.UNSUBSCRIBED:
            return
        await self._set_unsubscribed(codes.UNSUBSCRIBE_CALLED, "unsubscribe called")
        # Also when only subscribing: a subscribe may be in flight (the server answers {} if
        # there is nothing to undo).
        if self.client.state == codes.ClientState.CONNECTED:
            try:
                cmd = client_pb2.Command(unsubscribe=client_pb2.UnsubscribeRequest(channel=self.channel))
                await self.client._request(cmd)
            except (ClientDisconnectedError, TimeoutError, ReplyError):
                pass  # the server forgets the subscription with the connection anyway

    def publications(self) -> PublicationIterator:
        """An async iterator over this subscription's publications from now on."""
        iterator = PublicationIterator(self, self._queue_size)
        self._iterators.append(iterator)
        return iterator

    async def publish(self, data: Payload) -> None:
        await self.client.publish(self.channel, data)

    async def presence(self) -> client_pb2.PresenceResult:
        return await self.client.presence(self.channel)

    async def presence_stats(self) -> client_pb2.PresenceStatsResult:
        return await self.client.presence_stats(self.channel)

    async def history(
        self, *, limit: int = -1, since: Position | None = None, reverse: bool = False
    ) -> client_pb2.HistoryResult:
        return await self.client.history(self.channel, limit=limit, since=since, reverse=reverse)

    # ---- state changes --------------------------------------------------------------------

    async def _set_subscribing(self, code: int, reason: str) -> None:
        self.state = SubscriptionState.SUBSCRIBING
        if self._ready is None or self._ready.done():
            self._ready = asyncio.get_running_loop().create_future()
        await self.client._emit(self, "subscribing", SubscribingContext(self.channel, code, reason))

    async def _set_unsubscribed(self, code: int, reason: str, error: SubscriptionError | None = None) -> None:
        self.state = SubscriptionState.UNSUBSCRIBED
        self._inflight = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error or SubscriptionError(code, reason))
            self._ready.exception()  # nobody may be waiting
        await self.client._emit(self, "unsubscribed", UnsubscribedContext(self.channel, code, reason))

    async def _deliver(self, event: str, ctx: Any) -> None:
        await super()._deliver(event, ctx)
        if event == "publication":
            for iterator in list(self._iterators):
                await iterator._put(ctx)
        elif event == "unsubscribed":
            for iterator in list(self._iterators):
                await iterator._put(_END)

    # ---- protocol ---------------------------------------------------------------------------

    def _start_subscribe(self, session: Session) -> None:
        if self._inflight is session:
            return  # already asked on this connection
        self._inflight = session
        if self._ready is None or self._ready.done():
            self._ready = asyncio.get_running_loop().create_future()  # the last wait failed
        session.spawn(self._subscribe_on(session), name=f"spinwire-subscribe-{self.channel}")

    async def _subscribe_on(self, session: Session) -> None:
        req = client_pb2.SubscribeRequest(
            channel=self.channel,
            recoverable=self._recoverable,
            positioned=self._positioned,
            join_leave=self._join_leave,
        )
        if self._data is not None:
            req.data = encode_payload(self._data)
        if self._recover:
            req.recover = True
            req.epoch = self._epoch
            req.offset = self._offset
        try:
            if not self._token and self._get_token is not None:
                self._token = await self._get_token(self.channel)
            req.token = self._token
        except Exception as err:  # the app's token callback failed: retry later
            await self.client._emit(self, "error", ErrorContext(err, "token"))
            await self._retry_later(session)
            return
        try:
            reply = await self.client._request(
                client_pb2.Command(subscribe=req), session=session, on_reply=self._on_subscribe_reply
            )
        except TimeoutError:
            # The reply may still come; reconnecting is the only way to a known state.
            session.finish(SessionEnd(codes.SUBSCRIBE_TIMEOUT, "subscribe timeout", reconnect=True))
            return
        except ClientDisconnectedError:
            return  # resubscribed after the reconnect
        if reply.HasField("error"):
            await self._on_subscribe_error(session, reply.error)

    async def _on_subscribe_reply(self, reply: client_pb2.Reply) -> None:
        if reply.HasField("error") or not reply.HasField("subscribe"):
            return
        if self.state != SubscriptionState.SUBSCRIBING:
            return  # unsubscribed meanwhile; the unsubscribe command follows
        await self._apply_result(reply.subscribe)

    async def _apply_result(self, result: client_pb2.SubscribeResult) -> None:
        self._inflight = None
        self._backoff.reset()
        self._recover = result.recoverable
        self._epoch = result.epoch
        self._offset = result.offset
        self.state = SubscriptionState.SUBSCRIBED
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        ctx = SubscribedContext(
            channel=self.channel,
            recovered=result.recovered,
            was_recovering=result.was_recovering,
            recoverable=result.recoverable,
            positioned=result.positioned,
            epoch=result.epoch,
            offset=result.offset,
            data=result.data,
        )
        await self.client._emit(self, "subscribed", ctx)
        for pub in result.publications:
            await self._on_publication(pub)
        if result.expires and self._get_token is not None and self.client._session is not None:
            self.client._session.spawn(self._refresh_after(result.ttl), name=f"spinwire-sub-refresh-{self.channel}")

    async def _on_subscribe_error(self, session: Session, error: client_pb2.Error) -> None:
        err = SubscriptionError(error.code, error.message, error.temporary)
        await self.client._emit(self, "error", ErrorContext(err, "subscribe"))
        if error.code == codes.TOKEN_EXPIRED and self._get_token is not None:
            self._token = ""
            await self._retry_later(session)
        elif codes.retryable_error(error.code, error.temporary):
            await self._retry_later(session)
        else:
            await self._set_unsubscribed(error.code, error.message, err)

    async def _retry_later(self, session: Session) -> None:
        await asyncio.sleep(self._backoff.next())
        if self.state == SubscriptionState.SUBSCRIBING and not session.ended.done():
            self._inflight = None
            self._start_subscribe(session)

    async def _refresh_after(self, ttl: int) -> None:
        await asyncio.sleep(max(ttl, 1))
        assert self._get_token is not None
        while self.state == SubscriptionState.SUBSCRIBED:
            try:
                token = await self._get_token(self.channel)
                cmd = client_pb2.Command(sub_refresh=client_pb2.SubRefreshRequest(channel=self.channel, token=token))
                reply = await self.client._request(cmd)
            except ClientDisconnectedError:
                return
            except Exception as err:
                await self.client._emit(self, "error", ErrorContext(err, "refresh"))
                await asyncio.sleep(self._backoff.next())
                continue
            if reply.HasField("error"):
                await self.client._emit(
                    self, "error", ErrorContext(ReplyError(reply.error.code, reply.error.message), "refresh")
                )
                await asyncio.sleep(self._backoff.next())
                continue
            self._token = token
            if not reply.sub_refresh.expires:
                return
            await asyncio.sleep(max(reply.sub_refresh.ttl, 1))

    # ---- pushes -----------------------------------------------------------------------------

    async def _on_publication(self, pub: client_pb2.Publication) -> None:
        if pub.offset:
            self._offset = pub.offset
        if pub.epoch:
            self._epoch = pub.epoch  # first publication of a new stream carries its epoch
        await self.client._emit(self, "publication", PublicationContext.from_proto(self.channel, pub))

    async def _on_join(self, info: client_pb2.ClientInfo) -> None:
        await self.client._emit(self, "join", JoinLeaveContext(self.channel, info))

    async def _on_leave(self, info: client_pb2.ClientInfo) -> None:
        await self.client._emit(self, "leave", JoinLeaveContext(self.channel, info))

    async def _on_unsubscribe_push(self, session: Session, code: int, reason: str) -> None:
        if codes.resubscribes(code):
            await self._set_subscribing(code, reason)
            self._inflight = None
            self._start_subscribe(session)
        else:
            await self._set_unsubscribed(code, reason)

    def _on_client_stopped(self, code: int, reason: str) -> None:
        # The intent stays (next connect subscribes again) but nobody should wait for it.
        self._inflight = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ClientDisconnectedError(f"client disconnected: {code} {reason}"))
            self._ready.exception()

    async def _on_connection_lost(self, code: int, reason: str) -> None:
        self._inflight = None
        if self.state == SubscriptionState.SUBSCRIBED:
            await self._set_subscribing(code, reason)

