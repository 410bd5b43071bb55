"""gRPC server API (service centrifugal.centrifugo.api.CentrifugoApi) with stubs generated
from <repo>/proto at session start; auth metadata `authorization: apikey <key>`."""

import json

import grpc
import pytest

import interop_helpers as h


def _md(key):
    return (("authorization", f"apikey {key}"),)


def test_grpc_publish_broadcast_history(server, grpc_api):
    pb2, pb2_grpc = grpc_api
    channel = f"chat:{h.uid('grpc-')}"
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb2_grpc.CentrifugoApiStub(ch)
        md = _md(server.grpc_key)

        r1 = stub.Publish(pb2.PublishRequest(channel=channel, data=b'{"n":1}'), metadata=md, timeout=5)
        assert not r1.HasField("error"), r1
        assert r1.result.offset == 1
        assert r1.result.epoch
        r2 = stub.Publish(pb2.PublishRequest(channel=channel, data=b'{"n":2}'), metadata=md, timeout=5)
        assert r2.result.offset == 2 and r2.result.epoch == r1.result.epoch

        other = f"chat:{h.uid('grpc-b-')}"
        b = stub.Broadcast(
            pb2.BroadcastRequest(channels=[channel, other], data=b'{"n":3}'), metadata=md, timeout=5
        )
        assert not b.HasField("error"), b
        assert len(b.result.responses) == 2
        assert [resp.result.offset for resp in b.result.responses] == [3, 1]
        assert not any(resp.HasField("error") for resp in b.result.responses)

        hist = stub.History(pb2.HistoryRequest(channel=channel, limit=10), metadata=md, timeout=5)
        assert not hist.HasField("error"), hist
        assert [p.offset for p in hist.result.publications] == [1, 2, 3]
        assert [json.loads(p.data) for p in hist.result.publications] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert hist.result.offset == 3
        assert hist.result.epoch == r1.result.epoch

        # API errors travel in the response `error` field with status OK.
        bad = stub.Publish(pb2.PublishRequest(channel="nope:x", data=b"{}"), metadata=md, timeout=5)
        assert bad.HasField("error") and bad.error.code == 102


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(lambda s: _md("wrong-key"), id="wrong-key"),
        pytest.param(lambda s: _md(s.api_key), id="http-api-key"),
        pytest.param(lambda s: (), id="no-metadata"),
    ],
)
def test_grpc_unauthenticated(server, grpc_api, metadata):
    pb2, pb2_grpc = grpc_api
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb2_grpc.CentrifugoApiStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Publish(
                pb2.PublishRequest(channel=f"chat:{h.uid()}", data=b"{}"),
                metadata=metadata(server),
                timeout=5,
            )
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    server.assert_alive("after unauthenticated gRPC calls")


def test_grpc_transport_error_mode(server, grpc_api):
    """Metadata `x-centrifugo-error-mode: transport`: API errors become gRPC statuses
    (102 unknown channel -> NOT_FOUND) instead of the response `error` field."""
    pb2, pb2_grpc = grpc_api
    md = _md(server.grpc_key) + (("x-centrifugo-error-mode", "transport"),)
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb2_grpc.CentrifugoApiStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Publish(pb2.PublishRequest(channel="nope:x", data=b'{"a":1}'), metadata=md, timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND, (exc.value.code(), exc.value.details())

        # Success is unchanged in transport mode.
        ok = stub.Publish(
            pb2.PublishRequest(channel=f"chat:{h.uid('grpc-t-')}", data=b'{"a":1}'), metadata=md, timeout=5
        )
        assert not ok.HasField("error"), ok
        assert ok.result.offset == 1


async def test_grpc_publication_reaches_sdk_client(server, grpc_api):
    pb2, pb2_grpc = grpc_api
    client, _ = await h.connect(server)
    try:
        channel = f"news:{h.uid('grpc-live-')}"
        _, sub_events, _ = await h.subscribe(client, channel)
        with grpc.insecure_channel(server.grpc_target) as ch:
            stub = pb2_grpc.CentrifugoApiStub(ch)
            r = stub.Publish(
                pb2.PublishRequest(channel=channel, data=b'{"via":"grpc"}'),
                metadata=_md(server.grpc_key),
                timeout=5,
            )
            assert not r.HasField("error"), r
        ctx = await sub_events.next("publication")
        assert ctx.pub.data == {"via": "grpc"}
    finally:
        await h.disconnect_all(client)
