"""The `cent` HTTP API client drives every OSS server API method against live
centrifuge-python clients, and the results have Centrifugo's shapes."""

import asyncio
import time
from typing import Any, Optional

import pytest
from cent import (
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    ChannelsRequest,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import CentRequest, CentResult

import interop_helpers as h


class RpcResult(CentResult):
    data: Optional[Any] = None


class RpcRequest(CentRequest[RpcResult]):
    """cent 5.2.0 has no rpc method: the request is declared here and sent with the same
    client machinery (POST {api_url}/rpc)."""

    __returning__ = RpcResult
    __api_method__ = "rpc"

    method: str
    params: Optional[Any] = None


async def test_publish_history_history_remove(server, cent_client):
    channel = f"chat:{h.uid('hist-')}"
    offsets, epochs = [], set()
    for i in range(3):
        r = await cent_client.publish(PublishRequest(channel=channel, data={"i": i}))
        offsets.append(r.offset)
        epochs.add(r.epoch)
    assert offsets == [1, 2, 3]
    assert len(epochs) == 1 and all(epochs)
    (epoch,) = epochs

    hist = await cent_client.history(HistoryRequest(channel=channel, limit=10))
    assert [p.offset for p in hist.publications] == [1, 2, 3]
    assert [p.data for p in hist.publications] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert hist.offset == 3 and hist.epoch == epoch

    # limit 0 (omitted): position only.
    pos = await cent_client.history(HistoryRequest(channel=channel))
    assert pos.publications == [] and pos.offset == 3 and pos.epoch == epoch

    # since + reverse.
    since = await cent_client.history(
        HistoryRequest(channel=channel, limit=-1, since=StreamPosition(offset=1, epoch=epoch))
    )
    assert [p.offset for p in since.publications] == [2, 3]
    rev = await cent_client.history(HistoryRequest(channel=channel, limit=-1, reverse=True))
    assert [p.offset for p in rev.publications] == [3, 2, 1]

    # Wrong epoch in since -> 112.
    with pytest.raises(CentApiResponseError) as exc:
        await cent_client.history(
            HistoryRequest(channel=channel, limit=10, since=StreamPosition(offset=1, epoch="not-the-epoch"))
        )
    assert exc.value.code == 112

    await cent_client.history_remove(HistoryRemoveRequest(channel=channel))
    after = await cent_client.history(HistoryRequest(channel=channel, limit=10))
    assert after.publications == []
    assert after.offset == 3 and after.epoch == epoch, "history_remove keeps the stream position"


async def test_publish_errors_and_no_history(server, cent_client):
    r = await cent_client.publish(PublishRequest(channel=f"news:{h.uid()}", data={"a": 1}))
    assert r.offset == 0 and r.epoch == ""
    with pytest.raises(CentApiResponseError) as exc:
        await cent_client.publish(PublishRequest(channel="nope:x", data={"a": 1}))
    assert exc.value.code == 102
    with pytest.raises(CentApiResponseError) as exc:
        await cent_client.history(HistoryRequest(channel=f"news:{h.uid()}", limit=10))
    assert exc.value.code == 108
    with pytest.raises(CentApiResponseError) as exc:
        await cent_client.presence(PresenceRequest(channel=f"news:{h.uid()}"))
    assert exc.value.code == 108
    server.assert_alive("after API errors")


async def test_broadcast(server, cent_client):
    c1, c2 = f"chat:{h.uid('b1-')}", f"chat:{h.uid('b2-')}"
    client, _ = await h.connect(server)
    try:
        _, ev1, _ = await h.subscribe(client, c1)
        _, ev2, _ = await h.subscribe(client, c2)
        r = await cent_client.broadcast(BroadcastRequest(channels=[c1, c2, "nope:b3"], data={"b": True}))
        assert len(r.responses) == 3
        assert r.responses[0].error is None and r.responses[0].result.offset == 1
        assert r.responses[0].result.epoch
        assert r.responses[1].error is None and r.responses[1].result.offset == 1
        assert r.responses[2].error is not None and r.responses[2].error.code == 102
        assert (await ev1.next("publication")).pub.data == {"b": True}
        assert (await ev2.next("publication")).pub.data == {"b": True}
    finally:
        await h.disconnect_all(client)


async def test_presence_presence_stats_channels_info(server, cent_client):
    user = h.uid("pres-")
    channel = f"chat:{h.uid('pres-')}"
    a, _ = await h.connect(server, user)
    b, _ = await h.connect(server, user, use_protobuf=True)
    try:
        await h.subscribe(a, channel)
        await h.subscribe(b, channel)

        pres = await cent_client.presence(PresenceRequest(channel=channel))
        assert set(pres.presence) == {a.client_id, b.client_id}
        for client_id, info in pres.presence.items():
            assert info.client == client_id
            assert info.user == user

        stats = await cent_client.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (2, 1)

        chans = await cent_client.channels(ChannelsRequest(pattern=channel))
        assert set(chans.channels) == {channel}
        assert chans.channels[channel].num_clients == 2
        all_chans = await cent_client.channels(ChannelsRequest())
        assert channel in all_chans.channels

        # Node stats may be aggregated periodically: poll until they include our clients.
        info_holder = {}

        async def info_ready():
            info = await cent_client.info(InfoRequest())
            info_holder["info"] = info
            return len(info.nodes) == 1 and info.nodes[0].num_clients >= 2

        await h.wait_until(info_ready, timeout=10, what="info num_clients >= 2")
        node = info_holder["info"].nodes[0]
        assert node.uid and node.name and node.version
        assert node.num_users >= 1
        assert node.num_channels >= 1
        assert node.num_subs >= 2
    finally:
        await h.disconnect_all(a, b)


async def test_server_side_subscribe_and_unsubscribe(server, cent_client):
    user = h.uid("srv-")
    client, events = await h.connect(server, user)
    try:
        channel = f"chat:{h.uid('srvsub-')}"
        await cent_client.subscribe(SubscribeRequest(user=user, channel=channel, data={"welcome": 1}))
        sub_ctx = await events.next("subscribed", pred=lambda c: c.channel == channel)
        assert sub_ctx.data == {"welcome": 1}

        await cent_client.publish(PublishRequest(channel=channel, data={"to": "server-side"}))
        pub_ctx = await events.next("publication", pred=lambda c: c.channel == channel)
        assert pub_ctx.pub.data == {"to": "server-side"}

        await cent_client.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
        unsub_ctx = await events.next("unsubscribed")
        assert unsub_ctx.channel == channel

        # Client-side subscription removed by the server: unsubscribe code 2000.
        cs_channel = f"chat:{h.uid('clientsub-')}"
        sub, sub_events, _ = await h.subscribe(client, cs_channel)
        await cent_client.unsubscribe(UnsubscribeRequest(user=user, channel=cs_channel))
        u = await sub_events.next("unsubscribed")
        assert (u.code, u.reason) == (2000, "server unsubscribe")
        assert sub.state.value == "unsubscribed"
    finally:
        await h.disconnect_all(client)


async def test_disconnect(server, cent_client):
    # Default disconnect: 3503 "force disconnect", terminal.
    user1 = h.uid("disc1-")
    c1, ev1 = await h.connect(server, user1)
    # Custom terminal code.
    user2 = h.uid("disc2-")
    c2, ev2 = await h.connect(server, user2)
    # Custom reconnect code.
    user3 = h.uid("disc3-")
    c3, ev3 = await h.connect(server, user3)
    try:
        await cent_client.disconnect(DisconnectRequest(user=user1))
        d1 = await ev1.next("disconnected")
        assert (d1.code, d1.reason) == (3503, "force disconnect")

        await cent_client.disconnect(
            DisconnectRequest(user=user2, disconnect=Disconnect(code=4501, reason="custom bye"))
        )
        d2 = await ev2.next("disconnected")
        assert (d2.code, d2.reason) == (4501, "custom bye")

        await cent_client.disconnect(
            DisconnectRequest(user=user3, disconnect=Disconnect(code=4000, reason="come back"))
        )
        r3 = await ev3.next("connecting")
        assert (r3.code, r3.reason) == (4000, "come back")
        await ev3.next("connected")
        assert ev3.count("disconnected") == 0
    finally:
        await h.disconnect_all(c1, c2, c3)


def _record_pushes(client):
    """Record every push the centrifuge-python client receives (the SDK ignores `refresh`
    pushes, so wrap its reply dispatcher)."""
    pushes = []
    original = client._process_reply

    async def process_reply(reply):
        if isinstance(reply, dict) and reply.get("push"):
            pushes.append(reply["push"])
        return await original(reply)

    client._process_reply = process_reply
    return pushes


async def test_refresh(server, cent_client):
    user = h.uid("refresh-")
    client, events = await h.connect(server, user)
    pushes = _record_pushes(client)
    try:
        # Extend the connection: the client is told with a refresh push (or at least the
        # connection stays as it is).
        mark = len(events.history)
        expire_at = int(time.time()) + 600
        r = await cent_client.refresh(RefreshRequest(user=user, expire_at=expire_at))
        assert r is not None
        # Give a (wrong) disconnect or the refresh push time to arrive.
        await asyncio.sleep(1.0)
        since_refresh = events.names()[mark:]
        assert "disconnected" not in since_refresh and "connecting" not in since_refresh, since_refresh
        assert client.state.value == "connected"
        refresh_pushes = [p["refresh"] for p in pushes if "refresh" in p]
        for push in refresh_pushes:
            assert push.get("expires") is True, f"refresh push: {push}"
            assert 590 <= int(push.get("ttl", 0)) <= 600, f"refresh push ttl for expire_at now+600: {push}"

        # Expire the connection now: 3005 "connection expired", the SDK reconnects.
        await cent_client.refresh(RefreshRequest(user=user, expired=True))
        c = await events.next("connecting")
        assert (c.code, c.reason) == (3005, "connection expired")
        await events.next("connected")
        assert "disconnected" not in events.names()[mark:], f"3005 is a reconnect code: {events.names()}"
        assert client.state.value == "connected"
    finally:
        await h.disconnect_all(client)


@pytest.mark.parametrize("parallel", [False, True])
async def test_batch(server, cent_client, parallel):
    channel = f"chat:{h.uid('batch-')}"
    result = await cent_client.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=channel, data={"n": 1}),
                PublishRequest(channel=channel, data={"n": 2}),
                PresenceStatsRequest(channel=channel),
                HistoryRequest(channel=channel, limit=10),
            ],
            parallel=parallel,
        )
    )
    assert len(result.replies) == 4
    pub1, pub2, stats, hist = result.replies
    assert {pub1.offset, pub2.offset} == {1, 2}
    assert pub1.epoch and pub1.epoch == pub2.epoch
    assert (stats.num_clients, stats.num_users) == (0, 0)
    if not parallel:
        assert [p.offset for p in hist.publications] == [1, 2]
        assert [p.data for p in hist.publications] == [{"n": 1}, {"n": 2}]


async def test_rpc_not_found(server, cent_client):
    with pytest.raises(CentApiResponseError) as exc:
        await cent_client._send(RpcRequest(method="whatever", params={"x": 1}))
    assert exc.value.code == 104
    server.assert_alive("after rpc to an unknown method")
