"""Drop-in proof for existing Centrifugo gRPC API users: requests are protobuf bytes
encoded by hand from the field numbers in the protocol spec (§4.7), sent with grpcio's
generic unary calls (no generated stubs, no protobuf library), and the replies are decoded
the same way. A server that numbered a field differently from Centrifugo fails here even
if it agrees with its own .proto files."""

import json

import grpc
import pytest

import interop_helpers as h
import protowire as pw
from grpc_wire_helpers import (
    BATCH,
    BROADCAST,
    HISTORY,
    PUBLISH,
    ApiCommand,
    ApiPublication,
    ApiReply,
    ApiResponse,
    BatchResponse,
    BroadcastResult,
    HistoryResult,
    PublishResult,
    api_error,
    batch_request,
    broadcast_request,
    call_api,
    history_request,
    publish_request,
)


def test_codec_matches_protobuf_encoding_examples():
    """The hand codec agrees with the protobuf encoding guide's examples, so a failure in
    the server tests below is the server's, not the encoder's."""
    assert pw.f_varint(1, 150) == bytes.fromhex("089601")
    assert pw.f_bytes(2, "testing") == bytes.fromhex("120774657374696e67")
    assert pw.varint(-1) == b"\xff" * 9 + b"\x01"  # int32 -1: ten bytes, two's complement
    msg = pw.decode(bytes.fromhex("089601") + pw.f_message(3, bytes.fromhex("089601")) + pw.f_varint(4, 2**64 - 2))
    assert msg.uint(1) == 150
    assert msg.msg(3).uint(1) == 150
    assert msg.int64(4) == -2
    assert msg.msg(9) is None and msg.uint(9) == 0
    with pytest.raises(pw.WireError):
        pw.decode(b"\xff\xff\xff\xff")


def test_publish_then_history(server):
    channel = f"chat:{h.uid('wire-')}"
    first, second = b'{"n":1,"text":"hand-encoded"}', b'{"n":2}'
    with grpc.insecure_channel(server.grpc_target) as ch:
        r1 = call_api(ch, PUBLISH, publish_request(channel, first, tags={"k": "v"}), server.grpc_key)
        assert api_error(r1) is None, api_error(r1)
        res1 = r1.msg(ApiResponse.RESULT)
        assert res1 is not None, f"PublishResponse without result: {r1.raw!r}"
        assert res1.uint(PublishResult.OFFSET) == 1
        epoch = res1.str_(PublishResult.EPOCH)
        assert epoch, f"PublishResult without epoch: {res1.raw!r}"

        r2 = call_api(ch, PUBLISH, publish_request(channel, second), server.grpc_key)
        res2 = r2.msg(ApiResponse.RESULT)
        assert (res2.uint(PublishResult.OFFSET), res2.str_(PublishResult.EPOCH)) == (2, epoch)

        # limit -1 (all) exercises the ten-byte negative int32 varint.
        hist = call_api(ch, HISTORY, history_request(channel, limit=-1), server.grpc_key)
        assert api_error(hist) is None, api_error(hist)
        result = hist.msg(ApiResponse.RESULT)
        pubs = result.msgs(HistoryResult.PUBLICATIONS)
        assert [p.bytes_(ApiPublication.DATA) for p in pubs] == [first, second]
        assert [p.uint(ApiPublication.OFFSET) for p in pubs] == [1, 2]
        assert pubs[0].str_map(ApiPublication.TAGS) == {"k": "v"}
        assert result.str_(HistoryResult.EPOCH) == epoch
        assert result.uint(HistoryResult.OFFSET) == 2

        # `since` (a StreamPosition) returns only what came after it.
        since = call_api(ch, HISTORY, history_request(channel, limit=10, since=(1, epoch)), server.grpc_key)
        later = since.msg(ApiResponse.RESULT).msgs(HistoryResult.PUBLICATIONS)
        assert [(p.uint(ApiPublication.OFFSET), p.bytes_(ApiPublication.DATA)) for p in later] == [(2, second)]


def test_publish_without_history_has_no_position(server):
    """Namespace `news` keeps no history: the result is present but carries no offset or
    epoch."""
    with grpc.insecure_channel(server.grpc_target) as ch:
        reply = call_api(ch, PUBLISH, publish_request(f"news:{h.uid()}", b'{"x":1}'), server.grpc_key)
    assert api_error(reply) is None, api_error(reply)
    result = reply.msg(ApiResponse.RESULT)
    assert result is not None, f"PublishResponse without result: {reply.raw!r}"
    assert not result.has(PublishResult.OFFSET) and not result.has(PublishResult.EPOCH), result.raw


def test_unknown_namespace_is_error_102_in_response(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        reply = call_api(ch, PUBLISH, publish_request("nope:x", b"{}"), server.grpc_key)
    assert api_error(reply) == (102, "unknown channel")
    assert not reply.has(ApiResponse.RESULT), reply.raw


def test_unknown_fields_are_ignored(server):
    """A client built from a newer Centrifugo schema may send fields this server does not
    know; protobuf says they are skipped."""
    channel = f"chat:{h.uid('wire-unknown-')}"
    request = publish_request(channel, b'{"u":1}') + pw.f_bytes(99, "from the future") + pw.f_varint(98, 7)
    with grpc.insecure_channel(server.grpc_target) as ch:
        reply = call_api(ch, PUBLISH, request, server.grpc_key)
    assert api_error(reply) is None, api_error(reply)
    assert reply.msg(ApiResponse.RESULT).uint(PublishResult.OFFSET) == 1


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(lambda s: (("authorization", "apikey wrong"),), id="wrong-key"),
        pytest.param(lambda s: (("authorization", f"bearer {s.grpc_key}"),), id="wrong-scheme"),
        pytest.param(lambda s: (), id="none"),
    ],
)
def test_api_key_metadata_required(server, metadata):
    request = publish_request(f"chat:{h.uid()}", b"{}")
    with grpc.insecure_channel(server.grpc_target) as ch:
        call = ch.unary_unary(PUBLISH, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as exc:
            call(request, metadata=metadata(server), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, (exc.value.code(), exc.value.details())
        # The right key on the same connection still works.
        ok = pw.decode(call(request, metadata=(("authorization", f"apikey {server.grpc_key}"),), timeout=5))
        assert api_error(ok) is None, api_error(ok)


def test_broadcast(server):
    a, b = f"chat:{h.uid('wire-a-')}", f"chat:{h.uid('wire-b-')}"
    with grpc.insecure_channel(server.grpc_target) as ch:
        call_api(ch, PUBLISH, publish_request(a, b'{"pre":1}'), server.grpc_key)
        reply = call_api(ch, BROADCAST, broadcast_request([a, b, "nope:x"], b'{"all":1}'), server.grpc_key)
        assert api_error(reply) is None, api_error(reply)
        responses = reply.msg(ApiResponse.RESULT).msgs(BroadcastResult.RESPONSES)
        assert len(responses) == 3, reply.raw
        offsets = [r.msg(ApiResponse.RESULT).uint(PublishResult.OFFSET) for r in responses[:2]]
        assert offsets == [2, 1]
        assert api_error(responses[2]) == (102, "unknown channel")
        hist = call_api(ch, HISTORY, history_request(b, limit=10), server.grpc_key)
        pubs = hist.msg(ApiResponse.RESULT).msgs(HistoryResult.PUBLICATIONS)
        assert [p.bytes_(ApiPublication.DATA) for p in pubs] == [b'{"all":1}']


def test_batch(server):
    channel = f"chat:{h.uid('wire-batch-')}"
    request = batch_request(
        [
            (ApiCommand.PUBLISH, publish_request(channel, b'{"b":1}')),
            (ApiCommand.PUBLISH, publish_request("nope:x", b'{"b":2}')),
            (ApiCommand.HISTORY, history_request(channel, limit=10)),
        ]
    )
    with grpc.insecure_channel(server.grpc_target) as ch:
        reply = call_api(ch, BATCH, request, server.grpc_key)
    replies = reply.msgs(BatchResponse.REPLIES)
    assert len(replies) == 3, reply.raw
    published = replies[0].msg(ApiReply.PUBLISH)
    assert published is not None and published.uint(PublishResult.OFFSET) == 1, replies[0].raw
    assert api_error(replies[1], ApiReply.ERROR) == (102, "unknown channel")
    assert not replies[1].has(ApiReply.PUBLISH)
    history = replies[2].msg(ApiReply.HISTORY)
    assert history is not None, replies[2].raw
    pubs = history.msgs(HistoryResult.PUBLICATIONS)
    assert [json.loads(p.bytes_(ApiPublication.DATA)) for p in pubs] == [{"b": 1}]
