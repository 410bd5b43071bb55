"""Bad input on the gRPC listeners: oversize messages, bytes that are not protobuf, and a
bidirectional stream that skips connect. Each must end only the offending call, with a
clear status (or the protocol's disconnect), while well-behaved callers on the same server
keep working. One dedicated server (grpc_listeners_config) serves the module."""

import grpc
import grpc.aio
import pytest

import interop_helpers as h
from grpc_wire_helpers import (
    MAX_RECEIVE,
    OWN_CONNECTION,
    PUBLISH,
    ApiResponse,
    BidiClient,
    Command,
    ConnectPush,
    Publication,
    PublishResult,
    Push,
    Reply,
    UniClient,
    api_error,
    call_api_async,
    command,
    connect_request,
    disconnect_of,
    grpc_listeners_config,
    is_pub,
    publish_ok,
    publish_request,
    running_server,
    stream_target,
    subscribe_request,
)

GARBAGE = b"\xff\xff\xff\xff"  # a varint tag that never ends: no protobuf decoder accepts it
DECODE_FAILURE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)


@pytest.fixture(scope="module")
def gserver():
    with running_server(grpc_listeners_config) as srv:
        yield srv


def _json_string_of(size: int) -> bytes:
    """A valid JSON payload of exactly `size` bytes."""
    return b'"' + b"x" * (size - 2) + b'"'


def _assert_decode_failure(what: str, code: grpc.StatusCode, details: str) -> None:
    assert code in DECODE_FAILURE_CODES, f"{what}: status {code} {details!r}"
    assert "decod" in details.lower(), f"{what}: status details should say decoding failed: {details!r}"


async def test_api_message_over_limit_is_resource_exhausted(gserver):
    channel = f"chat:{h.uid('big-')}"
    key = gserver.grpc_key
    async with grpc.aio.insecure_channel(gserver.grpc_target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call_api_async(ch, PUBLISH, publish_request(channel, _json_string_of(MAX_RECEIVE + 1024)), key)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.value.code(), exc.value.details())

        # The same connection keeps working, and the refused message was not published.
        first = await publish_ok(ch, gserver, channel, b'{"after":1}')
        assert first.uint(PublishResult.OFFSET) == 1
        # The limit is the configured one, not something smaller.
        near = await publish_ok(ch, gserver, channel, _json_string_of(MAX_RECEIVE - 512))
        assert near.uint(PublishResult.OFFSET) == 2

    async with grpc.aio.insecure_channel(gserver.grpc_target, options=OWN_CONNECTION) as other:
        reply = await call_api_async(other, PUBLISH, publish_request(channel, b'{"after":2}'), key)
        assert api_error(reply) is None, api_error(reply)
        assert reply.msg(ApiResponse.RESULT).uint(PublishResult.OFFSET) == 3
    gserver.assert_alive("after an oversize gRPC API message")


@pytest.mark.parametrize("after_connect", [False, True], ids=["first-message", "after-connect"])
async def test_garbage_on_bidi_stream_ends_only_that_stream(gserver, after_connect):
    channel = f"chat:{h.uid('garbage-')}"
    target = stream_target(gserver)
    async with grpc.aio.insecure_channel(target) as shared, grpc.aio.insecure_channel(
        target, options=OWN_CONNECTION
    ) as separate:
        # Well-behaved clients: one multiplexed with the bad stream, one on its own connection.
        good = [BidiClient(shared, "good stream (same connection)"), BidiClient(separate, "good stream (own connection)")]
        for i, client in enumerate(good):
            await client.connect(gserver.token(f"good-{i}"))
            await client.subscribe(channel)

        bad = BidiClient(shared, "garbage stream")
        if after_connect:
            await bad.connect(gserver.token("bad"))
        await bad.send(GARBAGE)
        code, details, received = await bad.finish()
        _assert_decode_failure("garbage stream", code, details)
        # Before the status, the session's end is announced as on any other transport.
        pushes = [m.msg(Reply.PUSH) for m in received if m.has(Reply.PUSH)]
        assert pushes and disconnect_of(pushes[-1]) == (3501, "bad request"), [m.raw for m in received]

        async with grpc.aio.insecure_channel(gserver.grpc_target) as api:
            await publish_ok(api, gserver, channel, b'{"after":"garbage"}')
        for client in good:
            push = await client.next_push(is_pub(channel))
            assert push.msg(Push.PUB).bytes_(Publication.DATA) == b'{"after":"garbage"}'
            client.close()
    gserver.assert_alive("after a garbage bidi stream")


async def test_garbage_uni_request_ends_only_that_stream(gserver):
    channel = f"chat:{h.uid('uni-garbage-')}"
    target = stream_target(gserver)
    async with grpc.aio.insecure_channel(target) as ch:
        good = UniClient(ch, connect_request(gserver.token("uni-good", channels=[channel])), "good uni stream")
        connected = await good.next_push(lambda p: p.has(Push.CONNECT))
        subs = connected.msg(Push.CONNECT).map_(ConnectPush.SUBS)
        assert channel.encode() in subs, f"token channel missing from connect push subs: {list(subs)}"

        bad = UniClient(ch, GARBAGE, "garbage uni stream")
        code, details, received = await bad.finish()
        _assert_decode_failure("garbage uni stream", code, details)
        assert received == [], [m.raw for m in received]  # refused before any session existed

        async with grpc.aio.insecure_channel(gserver.grpc_target) as api:
            await publish_ok(api, gserver, channel, b'{"uni":"still here"}')
        push = await good.next_push(is_pub(channel))
        assert push.msg(Push.PUB).bytes_(Publication.DATA) == b'{"uni":"still here"}'
        good.close()
    gserver.assert_alive("after a garbage uni request")


async def test_oversize_uni_request_is_resource_exhausted(gserver):
    target = stream_target(gserver)
    oversize = connect_request(gserver.token("uni-big"), data=_json_string_of(MAX_RECEIVE + 1024))
    async with grpc.aio.insecure_channel(target) as ch:
        bad = UniClient(ch, oversize, "oversize uni stream")
        code, details, received = await bad.finish()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert received == [], [m.raw for m in received]  # refused before any session existed

        # A normal consumer on the same connection still gets its connect push.
        good = UniClient(ch, connect_request(gserver.token("uni-after-big")), "uni stream after oversize")
        connected = await good.next_push(lambda p: p.has(Push.CONNECT))
        assert connected.msg(Push.CONNECT).str_(ConnectPush.CLIENT), connected.raw
        good.close()
    gserver.assert_alive("after an oversize uni request")


async def test_oversize_command_on_bidi_stream_is_resource_exhausted(gserver):
    channel = f"chat:{h.uid('bidi-big-')}"
    async with grpc.aio.insecure_channel(stream_target(gserver)) as ch:
        watcher = BidiClient(ch, "good stream beside the oversize one")
        await watcher.connect(gserver.token("bidi-watcher"))
        await watcher.subscribe(channel)

        bad = BidiClient(ch, "oversize bidi stream")
        await bad.connect(gserver.token("bidi-big"))
        await bad.send(command(2, Command.SUBSCRIBE, subscribe_request("chat:" + "x" * (MAX_RECEIVE + 1024))))
        code, details, _ = await bad.finish()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)

        async with grpc.aio.insecure_channel(gserver.grpc_target) as api:
            await publish_ok(api, gserver, channel, b'{"after":"oversize"}')
        push = await watcher.next_push(is_pub(channel))
        assert push.msg(Push.PUB).bytes_(Publication.DATA) == b'{"after":"oversize"}'
        watcher.close()
    gserver.assert_alive("after an oversize bidi command")


async def test_first_command_not_connect_gets_disconnect_3501(gserver):
    async with grpc.aio.insecure_channel(stream_target(gserver)) as ch:
        client = BidiClient(ch, "stream without connect")
        await client.send(command(1, Command.SUBSCRIBE, subscribe_request(f"chat:{h.uid()}")))
        reply = await client.read()
        assert reply is not None, "the stream ended without a disconnect push"
        assert reply.uint(Reply.ID) == 0 and not reply.has(Reply.SUBSCRIBE), reply.raw
        push = reply.msg(Reply.PUSH)
        assert push is not None and disconnect_of(push) == (3501, "bad request"), reply.raw
        code, details, rest = await client.finish()
        assert code == grpc.StatusCode.OK, (code, details)
        assert rest == [], [m.raw for m in rest]
    gserver.assert_alive("after a stream without connect")
