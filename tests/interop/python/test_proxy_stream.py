"""Subscribe stream proxies (gRPC only) with centrifuge-python. A tokenless subscribe to
`streamed:*` (unidirectional) or `bidi:*` (bidirectional) opens a stream to the gRPC backend
(tests/interop/backends/grpc_backend.py), which acts by the channel name: its first message
decides the subscription like the unary subscribe proxy, every later one is a publication
for this one subscriber. The stream ending, breaking, or timing out, and the client leaving,
must each show up as Centrifugo shows them; the backend's records show what Spinwire did to
the stream (opened, cancelled) and what a bidirectional stream carried."""

import asyncio
import time

import pytest
from cent import AsyncClient, PublishRequest
from centrifuge import ClientState, ReplyError, SubscriptionState

import interop_helpers as h
import proxy_helpers as ph
from grpc_wire_helpers import running_server

PROTOCOLS = [pytest.param(False, id="json"), pytest.param(True, id="protobuf")]
STREAM_DATA = [{"n": 1}, {"n": 2}, {"n": 3}]  # what the backend sends on an ok stream
SETTLE = 0.3  # time for a wrongly delivered publication to arrive before counting
CLOSE_WITHIN = 2.0  # seconds for the server to cancel a stream nobody listens to any more


@pytest.fixture(scope="module")
def streamed():
    with ph.running_backend("grpc") as backend:
        with running_server(ph.config_factory(ph.stream_proxy_config(backend))) as server:
            yield ph.Proxied(backend, server)


async def _expect_stream_publications(events, client_id, use_protobuf=False):
    """The ok stream's three publications, in order, from this subscriber's own stream (the
    backend tags each with the client id of its stream) and without an offset (a stream's
    publications are not in the channel's history: no recovery)."""
    pubs = [(await events.next("publication", timeout=3.0)).pub for _ in STREAM_DATA]
    assert [h.decode(p.data, use_protobuf) for p in pubs] == STREAM_DATA
    assert [p.tags for p in pubs] == [{"stream": client_id}] * len(STREAM_DATA), "from another subscriber's stream"
    assert [p.offset for p in pubs] == [0] * len(STREAM_DATA)


async def _streams_closed(backend, channel, client_id, timeout=CLOSE_WITHIN):
    """The outcomes of a subscriber's streams in `channel`, once every stream it opened has
    closed; fails when one is still open after `timeout` seconds."""
    match = ph.stream_of(channel, client_id)
    deadline = time.monotonic() + timeout
    while True:
        calls = [c for c in await asyncio.to_thread(backend.calls) if match(c)]
        opened = sum(c["kind"] == "stream_open" for c in calls)
        outcomes = [c["outcome"] for c in calls if c["kind"] == "stream_closed"]
        if opened and len(outcomes) == opened:
            return outcomes
        if time.monotonic() >= deadline:
            raise AssertionError(f"{opened} stream(s) opened, {len(outcomes)} closed after {timeout}s: {outcomes}")
        await asyncio.sleep(0.05)


async def _subscribe_only(client, channel):
    """Start subscribing without waiting for the outcome; returns (sub, events)."""
    events = h.SubEvents()
    sub = client.new_subscription(channel, events=events)
    await sub.subscribe()
    return sub, events


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_ok_stream_feeds_each_subscriber_its_own_publications(streamed, use_protobuf):
    backend, server = streamed
    alice, _, _ = await ph.connect_as(server, {"user": "alice"}, use_protobuf)
    bob, _, _ = await ph.connect_as(server, {"user": "bob"}, use_protobuf)
    try:
        channel = f"streamed:ok-{h.uid()}"
        sub, events, subscribed = await h.subscribe(alice, channel)
        assert h.decode(subscribed.data, use_protobuf) == {"stream": "open"}, "the first message's result data"
        assert (subscribed.recoverable, subscribed.positioned, subscribed.stream_position) == (False, False, None)
        opened = await backend.call("stream_open", ph.stream_of(channel, alice.client_id))
        assert opened["stream"] == {"channel": channel, "client": alice.client_id, "user": "alice", "direction": "unidirectional"}
        await _expect_stream_publications(events, alice.client_id, use_protobuf)

        # A second subscriber of the channel gets a stream of its own, and nothing of alice's.
        _, bob_events, bob_subscribed = await h.subscribe(bob, channel)
        assert h.decode(bob_subscribed.data, use_protobuf) == {"stream": "open"}
        await _expect_stream_publications(bob_events, bob.client_id, use_protobuf)
        await asyncio.sleep(SETTLE)
        assert events.count("publication") == 3, "bob's stream reached alice"
        assert bob_events.count("publication") == 3
        assert sub.state == SubscriptionState.SUBSCRIBED, "an ok stream stays open"
    finally:
        await h.disconnect_all(alice, bob)


async def test_stream_ended_by_backend_unsubscribes_with_2000(streamed):
    backend, server = streamed
    client, client_events, _ = await ph.connect_as(server, {"user": "alice"})
    mark = len(client_events.history)
    try:
        channel = f"streamed:end-{h.uid()}"
        sub, events, _ = await h.subscribe(client, channel)
        pub = await events.next("publication", timeout=3.0)
        assert pub.pub.data == {"n": 1}
        ctx = await events.next("unsubscribed", timeout=3.0)
        assert (ctx.code, ctx.reason) == (2000, "server unsubscribe")
        names = events.names()
        assert names.index("publication") < names.index("unsubscribed"), "the publication sent before the end comes first"
        assert sub.state == SubscriptionState.UNSUBSCRIBED
        assert client.state == ClientState.CONNECTED and client_events.names()[mark:] == [], "only the subscription ended"
        assert await _streams_closed(backend, channel, client.client_id) == ["ended"]
    finally:
        await h.disconnect_all(client)


async def test_stream_first_message_error_is_subscribe_error_103(streamed):
    _, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        sub, events = await _subscribe_only(client, f"streamed:deny-{h.uid()}")
        ctx = await events.next("unsubscribed", timeout=3.0)
        assert (ctx.code, ctx.reason) == (103, "permission denied")
        assert "subscribed" not in events.names()
        assert sub.state == SubscriptionState.UNSUBSCRIBED
        assert client.state == ClientState.CONNECTED, "a refused subscription leaves the connection alone"
    finally:
        await h.disconnect_all(client)


async def test_stream_first_message_disconnect_closes_with_4502(streamed):
    _, server = streamed
    client, client_events, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        _, events = await _subscribe_only(client, f"streamed:kick-{h.uid()}")
        # 4500-4999 is terminal for the SDK: disconnected, no reconnect.
        d = await client_events.next("disconnected", timeout=3.0)
        assert (d.code, d.reason) == (4502, "stream kick")
        assert client.state == ClientState.DISCONNECTED
        assert "subscribed" not in events.names()
    finally:
        await h.disconnect_all(client)


async def test_broken_stream_is_2500_then_the_sdk_resubscribes(streamed):
    backend, server = streamed
    client, client_events, _ = await ph.connect_as(server, {"user": "alice"})
    mark = len(client_events.history)
    try:
        channel = f"streamed:fail-{h.uid()}"
        sub, events, first = await h.subscribe(client, channel)
        assert first.data == {"stream": "open"}
        events.drain()  # the next subscribing event is the one the broken stream causes
        ctx = await events.next("subscribing", timeout=3.0)
        assert (ctx.code, ctx.reason) == (2500, "insufficient state")
        again = await events.next("subscribed", timeout=5.0)
        assert again.data == {"stream": "open"}, "subscribed again, on a new stream"
        await _expect_stream_publications(events, client.client_id)
        assert "unsubscribed" not in events.names()
        assert sub.state == SubscriptionState.SUBSCRIBED
        assert client_events.names()[mark:] == [], "the connection is untouched"
        streams = [c for c in await asyncio.to_thread(backend.calls) if ph.stream_of(channel, client.client_id)(c)]
        assert [c["kind"] for c in streams if c["kind"] != "stream_closed"] == ["stream_open", "stream_open"]
        assert [c["outcome"] for c in streams if c["kind"] == "stream_closed"] == ["aborted"], "the second one is still open"
    finally:
        await h.disconnect_all(client)


async def test_stream_first_message_late_is_internal_error_100(streamed):
    backend, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"})
    channel = f"streamed:slow-{h.uid()}"
    try:
        started = time.monotonic()
        sub, events = await _subscribe_only(client, channel)
        ctx = await events.next("error", timeout=3.0)
        elapsed = time.monotonic() - started
        await sub.unsubscribe()  # it would subscribe again and again (100 is temporary)
        err = ctx.error
        assert isinstance(err, ReplyError), ctx
        assert (err.code, err.message, err.temporary) == (100, "internal server error", True)
        # The 500 ms proxy timeout, not an immediate failure, and not the backend's 2 s.
        assert 0.4 <= elapsed < ph.FAIL_FAST, f"error after {elapsed:.2f}s"
        assert "subscribed" not in events.names()
        # The server gave up on the stream: it cancels it rather than leaving it open.
        outcomes = await _streams_closed(backend, channel, client.client_id)
        assert set(outcomes) == {"cancelled"}, outcomes
    finally:
        await h.disconnect_all(client)


async def test_unsubscribe_cancels_the_stream(streamed):
    backend, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        channel = f"streamed:ok-{h.uid()}"
        sub, events, _ = await h.subscribe(client, channel)
        await _expect_stream_publications(events, client.client_id)
        await sub.unsubscribe()
        assert await _streams_closed(backend, channel, client.client_id) == ["cancelled"]
        assert client.state == ClientState.CONNECTED
    finally:
        await h.disconnect_all(client)


async def test_disconnect_cancels_the_stream(streamed):
    backend, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"})
    channel = f"streamed:ok-{h.uid()}"
    client_id = client.client_id
    try:
        _, events, _ = await h.subscribe(client, channel)
        await _expect_stream_publications(events, client_id)
    finally:
        await h.disconnect_all(client)
    assert await _streams_closed(backend, channel, client_id) == ["cancelled"]


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_bidi_publish_goes_to_the_backend_on_the_stream(streamed, use_protobuf):
    backend, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"}, use_protobuf)
    watcher, _, _ = await ph.connect_as(server, {"user": "watcher"}, use_protobuf)
    try:
        channel = f"bidi:ok-{h.uid()}"
        _, events, subscribed = await h.subscribe(client, channel)
        assert h.decode(subscribed.data, use_protobuf) == {"stream": "open"}
        opened = await backend.call("stream_open", ph.stream_of(channel, client.client_id))
        assert opened["stream"]["direction"] == "bidirectional"
        assert (opened["body"]["channel"], opened["body"]["user"]) == (channel, "alice"), "the first request's subscribe_request"
        await _expect_stream_publications(events, client.client_id, use_protobuf)
        _, watcher_events, _ = await h.subscribe(watcher, channel)
        await _expect_stream_publications(watcher_events, watcher.client_id, use_protobuf)

        await client.publish(channel, ph.encode({"hello": 1}, use_protobuf))  # no error: an empty result
        logged = await backend.call("stream_publication", ph.stream_of(channel, client.client_id))
        assert logged["body"]["data"] == {"hello": 1}, "the publish data on the publisher's stream"
        echo = (await events.next("publication", timeout=3.0)).pub
        assert h.decode(echo.data, use_protobuf) == {"echo": {"hello": 1}}
        assert echo.tags == {"stream": client.client_id}
        await asyncio.sleep(SETTLE)
        assert events.count("publication") == 4, "exactly one echo"
        assert watcher_events.count("publication") == 3, "the publish went to the backend only, not into the channel"
        assert len([c for c in await asyncio.to_thread(backend.calls, "stream_publication") if c["stream"]["channel"] == channel]) == 1
    finally:
        await h.disconnect_all(client, watcher)


async def test_publish_into_a_unidirectional_stream_channel_is_108(streamed):
    backend, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        channel = f"streamed:ok-{h.uid()}"
        _, events, _ = await h.subscribe(client, channel)
        await _expect_stream_publications(events, client.client_id)
        await ph.expect_call_error(client.publish(channel, {"hello": 1}), 108, "not available")
        await asyncio.sleep(SETTLE)
        assert events.count("publication") == 3, "the refused publish reached nobody"
        sent = [c for c in await asyncio.to_thread(backend.calls) if (c.get("stream") or {}).get("channel") == channel]
        assert [c["kind"] for c in sent] == ["stream_open"], "nothing but the stream's start reached the backend"
    finally:
        await h.disconnect_all(client)


async def test_server_api_publish_reaches_stream_subscribers(streamed):
    _, server = streamed
    client, _, _ = await ph.connect_as(server, {"user": "alice"})
    api = AsyncClient(server.api_url, server.api_key, timeout=5.0)
    try:
        channel = f"streamed:ok-{h.uid()}"
        _, events, _ = await h.subscribe(client, channel)
        await _expect_stream_publications(events, client.client_id)
        await api.publish(PublishRequest(channel=channel, data={"from": "api"}))
        pub = (await events.next("publication", timeout=3.0)).pub
        assert (pub.data, pub.tags) == ({"from": "api"}, {}), "the channel's own publication, untagged"
    finally:
        await api.close()
        await h.disconnect_all(client)
