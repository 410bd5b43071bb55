"""Wire-level gRPC plumbing for test_grpc_wire.py and test_grpc_bad_input.py.

Owns: the protobuf field numbers of the Centrifugo messages these tests send and read,
typed from /work/shared/spec/centrifugo-protocol.md (line numbers in the comments; the
server API tables are in §4.7, the client protocol tables in §1.2), never taken from
<repo>/proto or generated stubs; hand encoders for those messages (protowire); generic
grpcio calls with raw-bytes (de)serialisers; an asyncio client for the bidirectional
`ClientStreamService/Connect` stream and the `CentrifugoUniStream/Consume` stream; and the
server config with every gRPC listener enabled and small message size limits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import grpc
import grpc.aio

import interop_helpers as h
import protowire as pw
from protowire import Msg

EVENT_TIMEOUT = 5.0

# ---------------------------------------------------------------------------------------
# Method paths
# ---------------------------------------------------------------------------------------

API_SERVICE = "/centrifugal.centrifugo.api.CentrifugoApi"  # spec L690
PUBLISH = f"{API_SERVICE}/Publish"
HISTORY = f"{API_SERVICE}/History"
BROADCAST = f"{API_SERVICE}/Broadcast"
BATCH = f"{API_SERVICE}/Batch"
STREAM_CONNECT = "/spinwire.stream.v1.ClientStreamService/Connect"  # proto/spinwire/stream/v1
UNI_CONSUME = "/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume"  # spec L560


# ---------------------------------------------------------------------------------------
# Server API field numbers (spec §4.7)
# ---------------------------------------------------------------------------------------


class ApiResponse:
    """Every XxxResponse except BatchResponse (spec L695, also §4.6 L690)."""

    ERROR = 1
    RESULT = 2


class ApiError:  # spec L790-791
    CODE = 1
    MESSAGE = 2


class ApiCommand:  # BatchRequest element, spec L701, L702, L708
    PUBLISH = 4
    BROADCAST = 5
    HISTORY = 11


class ApiReply:  # BatchResponse element, spec L745, L746, L753
    ERROR = 2
    PUBLISH = 4
    HISTORY = 11


class BatchRequest:  # spec L797-798
    COMMANDS = 1
    PARALLEL = 2


class BatchResponse:  # spec L804
    REPLIES = 1


class PublishRequest:  # spec L810, L811, L814
    CHANNEL = 1
    DATA = 2
    TAGS = 5


class PublishResult:  # spec L824-825
    OFFSET = 1
    EPOCH = 2


class BroadcastRequest:  # spec L831-832
    CHANNELS = 1
    DATA = 2


class BroadcastResult:  # spec L845 (repeated PublishResponse)
    RESPONSES = 1


class StreamPosition:  # spec L972-973
    OFFSET = 1
    EPOCH = 2


class HistoryRequest:  # spec L979-981
    CHANNEL = 1
    LIMIT = 2
    SINCE = 3


class ApiPublication:  # spec L988, L990, L991 (not the client-protocol numbering)
    DATA = 2
    OFFSET = 4
    TAGS = 5


class HistoryResult:  # spec L997-999
    PUBLICATIONS = 1
    EPOCH = 2
    OFFSET = 3


# ---------------------------------------------------------------------------------------
# Client protocol field numbers (spec §1.2)
# ---------------------------------------------------------------------------------------


class Command:  # spec L70, L71, L72
    ID = 1
    CONNECT = 4
    SUBSCRIBE = 5


class Reply:  # spec L88-92
    ID = 1
    ERROR = 2
    PUSH = 4
    CONNECT = 5
    SUBSCRIBE = 6


class Push:  # spec L108, L109, L115, L116
    CHANNEL = 2
    PUB = 4
    CONNECT = 10
    DISCONNECT = 11


class Publication:  # spec L132, L134
    DATA = 4
    OFFSET = 6


class ConnectPush:  # `Connect`, spec L185, L188
    CLIENT = 1
    SUBS = 4


class Disconnect:  # spec L201-202
    CODE = 1
    REASON = 2


class ConnectRequest:  # spec L216, L217, L219, L220
    TOKEN = 1
    DATA = 2
    NAME = 4
    VERSION = 5


class ConnectResult:  # spec L228, L234, L235
    CLIENT = 1
    PING = 7
    PONG = 8


class SubscribeRequest:  # spec L259
    CHANNEL = 1


# ---------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------


def publish_request(channel: str, data: bytes, tags: Optional[dict[str, str]] = None) -> bytes:
    parts = [pw.f_bytes(PublishRequest.CHANNEL, channel), pw.f_bytes(PublishRequest.DATA, data)]
    for key, value in (tags or {}).items():
        parts.append(pw.f_map_entry(PublishRequest.TAGS, pw.f_bytes(1, key), pw.f_bytes(2, value)))
    return pw.message(*parts)


def history_request(channel: str, limit: int, since: Optional[tuple[int, str]] = None) -> bytes:
    parts = [pw.f_bytes(HistoryRequest.CHANNEL, channel), pw.f_varint(HistoryRequest.LIMIT, limit)]
    if since is not None:
        offset, epoch = since
        parts.append(
            pw.f_message(
                HistoryRequest.SINCE,
                pw.f_varint(StreamPosition.OFFSET, offset),
                pw.f_bytes(StreamPosition.EPOCH, epoch),
            )
        )
    return pw.message(*parts)


def broadcast_request(channels: list[str], data: bytes) -> bytes:
    return pw.message(
        pw.f_repeated_string(BroadcastRequest.CHANNELS, channels), pw.f_bytes(BroadcastRequest.DATA, data)
    )


def batch_request(commands: list[tuple[int, bytes]], parallel: bool = False) -> bytes:
    """`commands`: (ApiCommand field number, encoded request) pairs, in order."""
    encoded = [pw.f_message(BatchRequest.COMMANDS, pw.f_message(number, body)) for number, body in commands]
    return pw.message(*encoded, pw.f_varint(BatchRequest.PARALLEL, int(parallel)))


def connect_request(token: str, data: bytes = b"") -> bytes:
    return pw.message(
        pw.f_bytes(ConnectRequest.TOKEN, token),
        pw.f_bytes(ConnectRequest.DATA, data),
        pw.f_bytes(ConnectRequest.NAME, "spinwire-interop-wire"),
        pw.f_bytes(ConnectRequest.VERSION, "0.0.1"),
    )


def command(command_id: int, field_number: int, body: bytes) -> bytes:
    return pw.message(pw.f_varint(Command.ID, command_id), pw.f_message(field_number, body))


def subscribe_request(channel: str) -> bytes:
    return pw.f_bytes(SubscribeRequest.CHANNEL, channel)


# ---------------------------------------------------------------------------------------
# Decoded views
# ---------------------------------------------------------------------------------------


def api_error(msg: Msg, field_number: int = ApiResponse.ERROR) -> Optional[tuple[int, str]]:
    err = msg.msg(field_number)
    return None if err is None else (err.uint(ApiError.CODE), err.str_(ApiError.MESSAGE))


def disconnect_of(push: Msg) -> Optional[tuple[int, str]]:
    d = push.msg(Push.DISCONNECT)
    return None if d is None else (d.uint(Disconnect.CODE), d.str_(Disconnect.REASON))


# ---------------------------------------------------------------------------------------
# Server API calls (generic grpcio, raw bytes in and out)
# ---------------------------------------------------------------------------------------


def api_metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"apikey {key}"),)


def call_api(channel: grpc.Channel, path: str, request: bytes, key: str, timeout: float = 5.0) -> Msg:
    raw = channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
        request, metadata=api_metadata(key), timeout=timeout
    )
    assert isinstance(raw, bytes), type(raw)
    return pw.decode(raw)


async def call_api_async(
    channel: grpc.aio.Channel, path: str, request: bytes, key: str, timeout: float = 5.0
) -> Msg:
    raw = await channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
        request, metadata=api_metadata(key), timeout=timeout
    )
    return pw.decode(raw)


async def publish_ok(channel: grpc.aio.Channel, server: h.SpinwireServer, ch: str, data: bytes) -> Msg:
    """Publishes through the gRPC API and returns the PublishResult (asserting no error)."""
    reply = await call_api_async(channel, PUBLISH, publish_request(ch, data), server.grpc_key)
    assert api_error(reply) is None, f"publish to {ch}: error {api_error(reply)}"
    result = reply.msg(ApiResponse.RESULT)
    assert result is not None, f"publish to {ch}: no result field: {reply.raw!r}"
    return result


# ---------------------------------------------------------------------------------------
# Stream clients
# ---------------------------------------------------------------------------------------


class StreamEnded(AssertionError):
    """The server ended the stream while the test waited for a message."""


class _Reader:
    """Reads one grpc.aio stream call with per-read deadlines."""

    def __init__(self, call, what: str):
        self.call = call
        self.what = what

    async def read(self, timeout: float = EVENT_TIMEOUT) -> Optional[Msg]:
        """Next message, or None at the end of the stream. A non-OK end raises
        grpc.aio.AioRpcError."""
        try:
            raw = await asyncio.wait_for(self.call.read(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.what}: nothing received in {timeout}s") from None
        if raw is grpc.aio.EOF:
            return None
        return pw.decode(raw)

    MAX_TRAILING = 100

    async def finish(self, timeout: float = EVENT_TIMEOUT) -> tuple[grpc.StatusCode, str, list[Msg]]:
        """Waits for the end of the stream; returns its status and the messages that came
        before it (at most MAX_TRAILING)."""
        received: list[Msg] = []
        try:
            await asyncio.wait_for(self._drain(received), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.what}: the stream did not end within {timeout}s") from None
        return await self.call.code(), (await self.call.details()) or "", received

    async def _drain(self, received: list[Msg]) -> None:
        try:
            while (raw := await self.call.read()) is not grpc.aio.EOF:
                assert len(received) < self.MAX_TRAILING, f"{self.what}: too many messages before the end"
                received.append(pw.decode(raw))
        except grpc.aio.AioRpcError:
            pass  # a non-OK end; the caller reads the status


class BidiClient(_Reader):
    """A hand-encoded client on `ClientStreamService/Connect`. Pushes that arrive while a
    command waits for its reply are kept (bounded) for `next_push`."""

    MAX_PENDING = 1000

    def __init__(self, channel: grpc.aio.Channel, what: str = "bidi stream"):
        call = channel.stream_stream(STREAM_CONNECT, request_serializer=None, response_deserializer=None)()
        super().__init__(call, what)
        self._next_id = 0
        self._pending: list[Msg] = []
        self.pong = False

    async def send(self, raw: bytes) -> None:
        await self.call.write(raw)

    async def request(self, field_number: int, body: bytes, timeout: float = EVENT_TIMEOUT) -> Msg:
        """Sends a command and returns its Reply (pushes received meanwhile are kept)."""
        self._next_id += 1
        cid = self._next_id
        await self.send(command(cid, field_number, body))
        deadline = time.monotonic() + timeout
        while True:
            reply = await self._read_skipping_pings(deadline)
            if reply.uint(Reply.ID) == cid:
                return reply
            assert reply.has(Reply.PUSH), f"{self.what}: unexpected reply {reply.raw!r}"
            assert len(self._pending) < self.MAX_PENDING, f"{self.what}: too many unread pushes"
            self._pending.append(reply.msg(Reply.PUSH))

    async def connect(self, token: str) -> Msg:
        reply = await self.request(Command.CONNECT, connect_request(token))
        result = reply.msg(Reply.CONNECT)
        assert result is not None, f"{self.what}: connect failed: {reply.raw!r}"
        self.pong = bool(result.uint(ConnectResult.PONG))
        return result

    async def subscribe(self, channel: str) -> Msg:
        reply = await self.request(Command.SUBSCRIBE, subscribe_request(channel))
        result = reply.msg(Reply.SUBSCRIBE)
        assert result is not None, f"{self.what}: subscribe {channel} failed: {reply.raw!r}"
        return result

    async def next_push(self, pred: Callable[[Msg], bool], timeout: float = EVENT_TIMEOUT) -> Msg:
        for i, push in enumerate(self._pending):
            if pred(push):
                return self._pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            reply = await self._read_skipping_pings(deadline)
            push = reply.msg(Reply.PUSH)
            if push is not None and pred(push):
                return push

    async def _read_skipping_pings(self, deadline: float) -> Msg:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.what}: timed out waiting for a message")
            reply = await self.read(remaining)
            if reply is None:
                raise StreamEnded(f"{self.what}: stream ended ({await self.call.code()})")
            if reply.raw == b"":  # ping: answer with an empty Command when asked to
                if self.pong:
                    await self.send(b"")
                continue
            return reply

    def close(self) -> None:
        self.call.cancel()


class UniClient(_Reader):
    """A consumer of `CentrifugoUniStream/Consume` sending raw request bytes."""

    def __init__(self, channel: grpc.aio.Channel, request: bytes, what: str = "uni stream"):
        call = channel.unary_stream(UNI_CONSUME, request_serializer=None, response_deserializer=None)(request)
        super().__init__(call, what)

    async def next_push(self, pred: Callable[[Msg], bool], timeout: float = EVENT_TIMEOUT) -> Msg:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.what}: timed out waiting for a push")
            push = await self.read(remaining)
            if push is None:
                raise StreamEnded(f"{self.what}: stream ended ({await self.call.code()})")
            if pred(push):
                return push

    def close(self) -> None:
        self.call.cancel()


def is_pub(channel: str) -> Callable[[Msg], bool]:
    return lambda push: push.str_(Push.CHANNEL) == channel and push.has(Push.PUB)


# ---------------------------------------------------------------------------------------
# Server with every gRPC listener
# ---------------------------------------------------------------------------------------

MAX_RECEIVE = 65536  # bytes; max_receive_message_size of grpc_api, uni_grpc and grpc_stream


def grpc_listeners_config(port: int, grpc_port: int, secret: str, api_key: str, grpc_key: str) -> dict:
    """SpinwireServer config factory: the gRPC API with a key; uni_grpc and grpc_stream on
    one shared port (`config["uni_grpc"]["port"]`); a MAX_RECEIVE size limit on all three;
    namespace `chat` with history."""
    stream_port = h.free_port()
    while stream_port in (port, grpc_port):
        stream_port = h.free_port()
    return {
        "http_server": {"port": port},
        "log": {"level": "info"},
        "health": {"enabled": True},
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": api_key},
        "grpc_api": {
            "enabled": True,
            "port": grpc_port,
            "key": grpc_key,
            "max_receive_message_size": MAX_RECEIVE,
        },
        "uni_grpc": {"enabled": True, "port": stream_port, "max_receive_message_size": MAX_RECEIVE},
        "grpc_stream": {"enabled": True, "port": stream_port, "max_receive_message_size": MAX_RECEIVE},
        "channel": {
            "namespaces": [
                {
                    "name": "chat",
                    "allow_subscribe_for_client": True,
                    "history_size": 100,
                    "history_ttl": "300s",
                    "allow_history_for_subscriber": True,
                }
            ]
        },
    }


def stream_target(server: h.SpinwireServer) -> str:
    return f"127.0.0.1:{server.config['uni_grpc']['port']}"


# grpcio shares one TCP connection among channels to the same target unless told otherwise;
# tests that need "another connection" pass these options.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@contextmanager
def running_server(config_factory) -> Iterator[h.SpinwireServer]:
    """Starts a dedicated server, stops it afterwards and fails on a panic or an
    unexpected exit, printing its log."""
    import pytest

    srv = h.SpinwireServer(config_factory)
    # Let conftest's terminal summary print this server's log too when a test fails.
    conftest = sys.modules.get("conftest")
    if conftest is not None and isinstance(getattr(conftest, "_servers", None), list):
        conftest._servers.append(srv)
    try:
        srv.start()
    except h.ServerNotReady as e:
        srv.stop()
        pytest.fail(f"{e}\n----- server log -----\n{srv.log_tail()}", pytrace=False)
    try:
        yield srv
    finally:
        problem = srv.stop()
        if problem:
            pytest.fail(f"spinwire (port {srv.port}): {problem}\n----- server log -----\n{srv.log_tail()}", pytrace=False)
