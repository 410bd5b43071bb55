"""``Client``: the real-time connection over ``spinwire.stream.v1.ClientStreamService/Connect``.

The stream carries the client protocol's ``Command``/``Reply`` messages one per gRPC
frame. This module owns the connection lifecycle: connect (with the token and the
positions of server-side subscriptions), answering pings, reading replies and pushes in
order, reconnecting with backoff when the server says so or the stream breaks, and stopping
on terminal codes. Subscriptions live in :mod:`spinwire.client.subscription`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from spinwire._payload import Payload, encode_payload
from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2
from spinwire._proto.spinwire.stream.v1 import stream_pb2_grpc
from spinwire._version import __version__
from spinwire.client import codes
from spinwire.client._backoff import Backoff
from spinwire.client._events import Dispatcher, Emitter
from spinwire.client._position import Position, split_position
from spinwire.client._server_subs import ServerSubscriptions
from spinwire.client._session import ReplyHook, Session, SessionEnd
from spinwire.client.codes import ClientState
from spinwire.client.contexts import (
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    MessageContext,
)
from spinwire.client.subscription import Subscription
from spinwire.errors import ClientDisconnectedError, ConnectError, ReplyError, TimeoutError

log = logging.getLogger("spinwire")

class _Retry(Exception):
    """A connect attempt failed in a way worth retrying."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Stop(Exception):
    """A connect attempt failed for good."""

    def __init__(self, code: int, reason: str, error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error = error


class Client(Emitter):
    """Async real-time client.

    ``target`` is ``host:port`` of the ``grpc_stream`` listener. Authenticate with a
    connection JWT (``token``) and/or ``get_token``, an async callable returning a fresh
    one (used at first connect when ``token`` is empty, after error 109 and to refresh an
    expiring connection).

    Events (:meth:`on`): ``connecting``, ``connected``, ``disconnected``, ``error``, and for
    server-side subscriptions ``subscribed``, ``unsubscribed``, ``publication``, ``join``,
    ``leave``; plus ``message`` for async messages.
    """

    EVENTS = (
        "connecting",
        "connected",
        "disconnected",
        "error",
        "subscribed",
        "unsubscribed",
        "publication",
        "join",
        "leave",
        "message",
    )

    def __init__(
        self,
        target: str,
        *,
        token: str = "",
        get_token: Callable[[], Awaitable[str]] | None = None,
        name: str = "python",
        version: str = __version__,
        data: Payload | None = None,
        timeout: float = 5.0,
        min_reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 20.0,
        max_server_ping_delay: float = 10.0,
        event_queue_size: int = 1024,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.target = target
        self.timeout = timeout
        self.min_reconnect_delay = min_reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.state = ClientState.DISCONNECTED
        self.client_id = ""
        self._token = token
        self._get_token = get_token
        self._name = name
        self._version = version
        self._data = None if data is None else encode_payload(data)
        self._max_server_ping_delay = max_server_ping_delay
        self._event_queue_size = event_queue_size
        self._credentials = credentials
        self._channel_options = list(channel_options)
        self._subs: dict[str, Subscription] = {}
        self._server_subs = ServerSubscriptions(lambda event, ctx: self._emit(self, event, ctx))
        self._backoff = Backoff(min_reconnect_delay, max_reconnect_delay)
        self._next_id = 0
        self._session: Session | None = None
        self._channel: grpc.aio.Channel | None = None
        self._dispatcher: Dispatcher | None = None
        self._run_task: asyncio.Task[None] | None = None
        # Resolved on connected, failed on a terminal stop: what connect() waits for.
        self._outcome: asyncio.Future[None] | None = None
        # Set while the state is not CONNECTING: commands issued meanwhile wait on it.
        self._settled = asyncio.Event()
        self._settled.set()

    # ---- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and wait until connected.

        Transient failures (server unreachable, reconnect codes) are retried with backoff
        while this waits — wrap it in ``asyncio.wait_for`` to bound the wait. Raises
        :class:`ConnectError` when the server refuses for good (e.g. 109 with no
        ``get_token``, 3500 invalid token).
        """
        if self.state == ClientState.DISCONNECTED:
            if self._dispatcher is None:  # still there after a terminal stop without disconnect()
                self._dispatcher = Dispatcher(self._event_queue_size)
            self._dispatcher.start()
            loop = asyncio.get_running_loop()
            self._outcome = loop.create_future()
            self._backoff.reset()
            await self._set_connecting(codes.CONNECT_CALLED, "connect called")
            self._run_task = loop.create_task(self._run(), name="spinwire-client")
        assert self._outcome is not None
        await asyncio.shield(self._outcome)

    async def disconnect(self) -> None:
        """Close the connection and stop reconnecting; delivers the ``disconnected`` event.

        Subscriptions keep their intent and are made again on the next :meth:`connect`.
        """
        task, self._run_task = self._run_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._drop_session(codes.DISCONNECT_CALLED, "disconnect called")
        if self.state != ClientState.DISCONNECTED:
            await self._stop(codes.DISCONNECT_CALLED, "disconnect called", None)
        if self._dispatcher is not None:
            await self._dispatcher.stop(drain_timeout=self.timeout)
            self._dispatcher = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # ---- subscriptions ----------------------------------------------------------------------

    def new_subscription(
        self,
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
    ) -> Subscription:
        """A subscription to ``channel`` (call :meth:`Subscription.subscribe` on it).

        ``token``/``get_token(channel)`` supply a subscription JWT (needed for ``$``
        channels); ``recoverable``/``positioned``/``join_leave`` ask for those options
        (the namespace must allow them); ``since`` recovers from a known position.
        """
        if channel in self._subs:
            raise ValueError(f"already have a subscription to {channel!r}")
        sub = Subscription(
            self,
            channel,
            token=token,
            get_token=get_token,
            data=data,
            recoverable=recoverable,
            positioned=positioned,
            join_leave=join_leave,
            since=since,
            queue_size=queue_size,
        )
        self._subs[channel] = sub
        return sub

    def get_subscription(self, channel: str) -> Subscription | None:
        return self._subs.get(channel)

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return dict(self._subs)

    @property
    def server_subscriptions(self) -> list[str]:
        """Channels the server subscribed this connection to."""
        return self._server_subs.channels()

    async def remove_subscription(self, sub: Subscription) -> None:
        await sub.unsubscribe()
        self._subs.pop(sub.channel, None)

    # ---- commands -----------------------------------------------------------------------------

    async def publish(self, channel: str, data: Payload) -> None:
        """Publish into ``channel`` (the namespace must allow client publishing)."""
        req = client_pb2.PublishRequest(channel=channel, data=encode_payload(data))
        await self._call(client_pb2.Command(publish=req))

    async def presence(self, channel: str) -> client_pb2.PresenceResult:
        """``result.presence`` maps client id to ``ClientInfo``."""
        reply = await self._call(client_pb2.Command(presence=client_pb2.PresenceRequest(channel=channel)))
        return reply.presence

    async def presence_stats(self, channel: str) -> client_pb2.PresenceStatsResult:
        cmd = client_pb2.Command(presence_stats=client_pb2.PresenceStatsRequest(channel=channel))
        return (await self._call(cmd)).presence_stats

    async def history(
        self, channel: str, *, limit: int = -1, since: Position | None = None, reverse: bool = False
    ) -> client_pb2.HistoryResult:
        """Stored publications: all the server allows by default (-1), ``limit=0`` for the
        stream position only, ``since`` for those after a position."""
        req = client_pb2.HistoryRequest(channel=channel, limit=limit, reverse=reverse)
        if since is not None:
            req.since.offset, req.since.epoch = split_position(since)
        return (await self._call(client_pb2.Command(history=req))).history

    async def rpc(self, method: str, data: Payload) -> bytes:
        req = client_pb2.RPCRequest(method=method, data=encode_payload(data))
        return (await self._call(client_pb2.Command(rpc=req))).rpc.data

    async def _call(self, cmd: client_pb2.Command) -> client_pb2.Reply:
        reply = await self._request(cmd)
        if reply.HasField("error"):
            raise ReplyError(reply.error.code, reply.error.message, reply.error.temporary)
        return reply

    async def _request(
        self,
        cmd: client_pb2.Command,
        *,
        session: Session | None = None,
        on_reply: ReplyHook | None = None,
        timeout: float | None = None,
    ) -> client_pb2.Reply:
        """Send a command and wait for its reply (error replies are returned, not raised)."""
        timeout = self.timeout if timeout is None else timeout
        if session is None:
            session = await self._wait_session(timeout)
        self._next_id += 1
        cmd.id = self._next_id
        future = session.expect(cmd.id, on_reply)
        try:
            await session.write(cmd)
        except ClientDisconnectedError:
            session.pending.pop(cmd.id, None)
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except builtins.TimeoutError:
            session.pending.pop(cmd.id, None)
            raise TimeoutError(f"no reply within {timeout} s") from None

    async def _wait_session(self, timeout: float) -> Session:
        if self.state == ClientState.DISCONNECTED or self._outcome is None:
            raise ClientDisconnectedError("client is disconnected")
        if self.state == ClientState.CONNECTING:
            try:
                await asyncio.wait_for(self._settled.wait(), timeout)
            except builtins.TimeoutError:
                raise TimeoutError(f"not connected within {timeout} s") from None
        if self._session is None or self.state != ClientState.CONNECTED:
            raise ClientDisconnectedError("client is disconnected")
        return self._session

    # ---- events -------------------------------------------------------------------------------

    async def _emit(self, emitter: Emitter, event: str, ctx: Any) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.emit(emitter, event, ctx)

    async def _set_connecting(self, code: int, reason: str) -> None:
        if self.state != ClientState.CONNECTING:
            self.state = ClientState.CONNECTING
            self._settled.clear()
            await self._emit(self, "connecting", ConnectingContext(code, reason))

    async def _set_disconnected(self, code: int, reason: str) -> None:
        self.state = ClientState.DISCONNECTED
        self._settled.set()
        await self._emit(self, "disconnected", DisconnectedContext(code, reason))

    # ---- the connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    session = await self._open_session()
                except _Retry as retry:
                    await self._set_connecting(retry.code, retry.reason)
                    await asyncio.sleep(self._backoff.next())
                    continue
                except _Stop as stop:
                    await self._stop(stop.code, stop.reason, stop.error)
                    return
                end = await session.ended
                await self._drop_session(end.code, end.reason)
                if not end.reconnect:
                    await self._stop(end.code, end.reason, None)
                    return
                await self._set_connecting(end.code, end.reason)
                await asyncio.sleep(self._backoff.next())
        finally:
            if self._run_task is asyncio.current_task():
                self._run_task = None

    async def _stop(self, code: int, reason: str, error: BaseException | None) -> None:
        await self._set_disconnected(code, reason)
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(error or ConnectError(code, reason))
            self._outcome.exception()  # connect() may not be waiting any more
        for sub in list(self._subs.values()):
            sub._on_client_stopped(code, reason)

    async def _drop_session(self, code: int, reason: str) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        await session.close()
        for sub in list(self._subs.values()):
            await sub._on_connection_lost(code, reason)

    def _stub(self) -> stream_pb2_grpc.ClientStreamServiceStub:
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, self._channel_options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, self._channel_options)
        return stream_pb2_grpc.ClientStreamServiceStub(self._channel)

    async def _fresh_token(self) -> str:
        if not self._token and self._get_token is not None:
            try:
                self._token = await self._get_token()
            except Exception as err:
                await self._emit(self, "error", ErrorContext(err, "token"))
                raise _Retry(codes.UNAUTHORIZED, f"get_token failed: {err}") from err
            if not self._token:
                raise _Stop(codes.UNAUTHORIZED, "unauthorized")
        return self._token

    def _connect_request(self, token: str) -> client_pb2.ConnectRequest:
        req = client_pb2.ConnectRequest(token=token, name=self._name, version=self._version)
        if self._data is not None:
            req.data = self._data
        for channel, sub_req in self._server_subs.recovery_requests().items():
            req.subs[channel].CopyFrom(sub_req)
        return req

    async def _open_session(self) -> Session:
        token = await self._fresh_token()
        call = self._stub().Connect()
        self._next_id += 1
        connect_cmd = client_pb2.Command(id=self._next_id, connect=self._connect_request(token))

        async def handshake() -> Any:
            await call.write(connect_cmd)
            return await call.read()

        try:
            reply = await asyncio.wait_for(handshake(), self.timeout)
        except builtins.TimeoutError:
            call.cancel()
            raise _Retry(codes.TRANSPORT_CLOSED, "connect timeout") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            call.cancel()
            await self._emit(self, "error", ErrorContext(err, "transport"))
            raise _Retry(codes.TRANSPORT_CLOSED, f"transport error: {_describe(err)}") from err
        if reply is grpc.aio.EOF:
            raise _Retry(codes.TRANSPORT_CLOSED, "stream closed before connect reply")
        if reply.HasField("push") and reply.push.HasField("disconnect"):
            call.cancel()
            d = reply.push.disconnect
            if codes.reconnects(d.code):
                raise _Retry(d.code, d.reason)
            raise _Stop(d.code, d.reason)
        if reply.HasField("error"):
            call.cancel()
            await self._on_connect_error(reply.error)
        if not reply.HasField("connect"):
            call.cancel()
            raise _Retry(codes.TRANSPORT_CLOSED, "unexpected first reply")

        result = reply.connect
        session = Session(call, result)
        self._session = session
        self._backoff.reset()
        self.client_id = result.client
        self.state = ClientState.CONNECTED
        self._settled.set()
        await self._emit(self, "connected", ConnectedContext(result.client, result.version, result.data))
        await self._server_subs.on_connect(result)
        session.spawn(self._read(session), name="spinwire-reader")
        for sub in list(self._subs.values()):
            if sub.state == codes.SubscriptionState.SUBSCRIBING:
                sub._start_subscribe(session)
        if result.expires:
            session.spawn(self._refresh_after(session, result.ttl), name="spinwire-refresh")
        # Last, so that connect() returns with every subscription already on its way.
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)
        return session

    async def _on_connect_error(self, error: client_pb2.Error) -> None:
        err = ConnectError(error.code, error.message, error.temporary)
        await self._emit(self, "error", ErrorContext(err, "connect"))
        if error.code == codes.TOKEN_EXPIRED and self._get_token is not None:
            self._token = ""  # fetch a new one on the next attempt
            raise _Retry(error.code, error.message)
        if codes.retryable_error(error.code, error.temporary):
            raise _Retry(error.code, error.message)
        raise _Stop(error.code, error.message, err)

    async def _read(self, session: Session) -> None:
        """Read replies until the stream ends; record why in ``session.ended``."""
        ping = session.result.ping
        # Pings prove the stream is alive; without one for this long the link is dead.
        read_timeout = ping + self._max_server_ping_delay if ping > 0 else None
        try:
            while not session.ended.done():
                try:
                    reply = await asyncio.wait_for(session.call.read(), read_timeout)
                except builtins.TimeoutError:
                    session.finish(SessionEnd(codes.NO_PING, "no ping", True))
                    return
                if reply is grpc.aio.EOF:
                    session.finish(SessionEnd(codes.TRANSPORT_CLOSED, "stream closed", True))
                    return
                await self._on_reply(session, reply)
        except grpc.aio.AioRpcError as err:
            await self._emit(self, "error", ErrorContext(err, "transport"))
            session.finish(SessionEnd(codes.TRANSPORT_CLOSED, f"transport error: {_describe(err)}", True))

    async def _on_reply(self, session: Session, reply: client_pb2.Reply) -> None:
        if reply.id:
            await session.resolve(reply)
        elif reply.HasField("push"):
            await self._on_push(session, reply.push)
        elif not reply.ListFields():
            # An empty reply is the server's ping; answer with an empty command if asked to.
            if session.result.pong:
                try:
                    await session.write(client_pb2.Command())
                except ClientDisconnectedError:
                    pass

    async def _on_push(self, session: Session, push: client_pb2.Push) -> None:
        channel = push.channel
        if push.HasField("disconnect"):
            code, reason = push.disconnect.code, push.disconnect.reason
            session.finish(SessionEnd(code, reason, codes.reconnects(code)))
            return
        sub = self._subs.get(channel)
        # Pushes for a client-side subscription count only once it is subscribed.
        live = sub if sub is not None and sub.state == codes.SubscriptionState.SUBSCRIBED else None
        if push.HasField("pub"):
            if live is not None:
                await live._on_publication(push.pub)
            elif channel in self._server_subs:
                await self._server_subs.on_publication(channel, push.pub)
        elif push.HasField("join") or push.HasField("leave"):
            event = "join" if push.HasField("join") else "leave"
            info = push.join.info if event == "join" else push.leave.info
            if live is not None:
                await (live._on_join(info) if event == "join" else live._on_leave(info))
            elif channel in self._server_subs:
                await self._server_subs.on_join_leave(event, channel, info)
        elif push.HasField("unsubscribe"):
            if sub is not None and sub.state != codes.SubscriptionState.UNSUBSCRIBED:
                await sub._on_unsubscribe_push(session, push.unsubscribe.code, push.unsubscribe.reason)
            else:
                await self._server_subs.on_unsubscribe_push(channel, push.unsubscribe)
        elif push.HasField("subscribe"):
            await self._server_subs.on_subscribe_push(channel, push.subscribe)
        elif push.HasField("message"):
            await self._emit(self, "message", MessageContext(push.message.data))
        # refresh (server-side expiry update) and connect (uni transports) need nothing here.

    # ---- connection refresh ------------------------------------------------------------------------

    async def _refresh_after(self, session: Session, ttl: int) -> None:
        """Send a fresh token before the connection expires (needs ``get_token``)."""
        if self._get_token is None:
            return  # the server will close with 3005; the reconnect then reports 109
        await asyncio.sleep(max(ttl, 1))
        while not session.ended.done():
            try:
                token = await self._get_token()
                cmd = client_pb2.Command(refresh=client_pb2.RefreshRequest(token=token))
                reply = await self._request(cmd, session=session)
            except ClientDisconnectedError:
                return
            except Exception as err:
                await self._emit(self, "error", ErrorContext(err, "refresh"))
                await asyncio.sleep(self._backoff.next())
                continue
            if reply.HasField("error"):
                refused = ReplyError(reply.error.code, reply.error.message, reply.error.temporary)
                await self._emit(self, "error", ErrorContext(refused, "refresh"))
                await asyncio.sleep(self._backoff.next())
                continue
            self._token = token
            if not reply.refresh.expires:
                return
            await asyncio.sleep(max(reply.refresh.ttl, 1))


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name} {err.details() or ''}".strip()
    return str(err) or type(err).__name__
