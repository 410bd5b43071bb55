"""centrifuge-python connects with a JWT, subscribes and receives a publication sent with
the HTTP server API (JSON and Protobuf)."""

import json

import pytest
from cent import PublishRequest

import interop_helpers as h

PROTOCOLS = [pytest.param(False, id="json"), pytest.param(True, id="protobuf")]


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_subscribe_and_receive_api_publication(server, cent_client, use_protobuf):
    user = h.uid("py-sdk-")
    client, events = await h.connect(server, user, use_protobuf=use_protobuf)
    try:
        connected = events.history[-1][1]
        assert isinstance(connected.client, str) and connected.client
        assert isinstance(connected.version, str)

        channel = f"news:{h.uid('py-')}"
        sub, sub_events, subscribed = await h.subscribe(client, channel)
        assert subscribed.channel == channel

        payload = {"text": "hello python", "n": 7, "nested": {"list": [1, 2, 3]}}
        result = await cent_client.publish(PublishRequest(channel=channel, data=payload))
        assert result.offset == 0 and result.epoch == "", "news has no history"

        ctx = await sub_events.next("publication")
        assert h.decode(ctx.pub.data, use_protobuf) == payload
        assert ctx.pub.info is None
    finally:
        await h.disconnect_all(client)


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_client_publish_presence_history(server, cent_client, use_protobuf):
    """Client-side publish, presence, presence_stats and history through the SDK."""
    user_a, user_b = h.uid("py-a-"), h.uid("py-b-")
    a, _ = await h.connect(server, user_a, use_protobuf=use_protobuf)
    b, _ = await h.connect(server, user_b, use_protobuf=use_protobuf)
    try:
        channel = f"chat:{h.uid('py-')}"
        sub_a, ev_a, _ = await h.subscribe(a, channel)
        sub_b, ev_b, _ = await h.subscribe(b, channel)

        payload = {"from": "b"}
        data = json.dumps(payload).encode() if use_protobuf else payload
        await sub_b.publish(data)
        ctx = await ev_a.next("publication")
        assert h.decode(ctx.pub.data, use_protobuf) == payload
        assert ctx.pub.info is not None
        assert ctx.pub.info.user == user_b
        assert ctx.pub.info.client == b.client_id
        assert ctx.pub.offset == 1

        presence = await sub_a.presence()
        assert set(presence.clients) == {a.client_id, b.client_id}
        assert presence.clients[a.client_id].user == user_a
        assert presence.clients[b.client_id].user == user_b
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (2, 2)

        history = await sub_a.history(limit=10)
        assert [p.offset for p in history.publications] == [1]
        assert h.decode(history.publications[0].data, use_protobuf) == payload
        assert history.offset == 1
        assert history.epoch
    finally:
        await h.disconnect_all(a, b)


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_recovery_from_a_position_without_epoch(server, cent_client, use_protobuf):
    """get_state returns an offset with an empty epoch (the app stored only the offset): the
    subscribe recovers the publications after it instead of failing with 112."""
    from centrifuge import StreamPosition

    channel = f"rec:{h.uid('py-state-')}"
    for revision in range(1, 6):
        await cent_client.publish(PublishRequest(channel=channel, data={"revision": revision}))
    client, _ = await h.connect(server, h.uid("py-state-"), use_protobuf=use_protobuf)
    calls = []

    async def get_state(_channel):
        calls.append(_channel)
        return StreamPosition(offset=2, epoch="")

    try:
        sub, sub_events, subscribed = await h.subscribe(client, channel, get_state=get_state)
        assert subscribed.recovered, "recovered from offset 2 in the current epoch"
        received = [await sub_events.next("publication") for _ in range(3)]
        assert [h.decode(ctx.pub.data, use_protobuf)["revision"] for ctx in received] == [3, 4, 5]
        assert [ctx.pub.offset for ctx in received] == [3, 4, 5]
        assert calls == [channel], "get_state ran once: no resubscribe loop"
    finally:
        await h.disconnect_all(client)
