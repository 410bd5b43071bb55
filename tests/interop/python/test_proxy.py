"""The proxy to an application backend (Centrifugo's proxy feature) with centrifuge-python,
once with the HTTP backend (node) and once with the gRPC one (tests/interop/backends), both
answering the same way. No client has a token: the connect proxy decides who connects and
as whom; channel `proxied:*` subscribe / publish / sub refresh and every RPC go to named
proxies. The backend's records show what Spinwire sent; SDK events show what a user sees."""

import asyncio
import time

import pytest
from centrifuge import CentrifugeError, ClientState, SubscriptionState

import interop_helpers as h
import proxy_helpers as ph
from grpc_wire_helpers import running_server

PROTOCOLS = [pytest.param(False, id="json"), pytest.param(True, id="protobuf")]
EMULATED = {"X-Emulated-Ok": "yes", "X-Real-Header": "forged", "X-Untrusted": "evil"}


@pytest.fixture(scope="module", params=["http", "grpc"])
def proxied(request):
    with ph.running_backend(request.param) as backend:
        with running_server(ph.config_factory(ph.proxy_config(backend))) as server:
            yield ph.Proxied(backend, server)


def _of(client):
    return lambda c: c["body"].get("client") == client.client_id


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_connect_backend_names_the_user(proxied, use_protobuf):
    backend, server = proxied
    client, _, connected = await ph.connect_as(server, {"user": "alice"}, use_protobuf)
    try:
        assert h.decode(connected.data, use_protobuf) == {"welcome": "alice"}
        body = (await backend.call("connect", _of(client)))["body"]
        assert body["data"] == {"user": "alice"}, "connect data reaches the backend as JSON"
        protocol = "protobuf" if use_protobuf else "json"
        assert (body["transport"], body["protocol"], body["encoding"]) == ("websocket", protocol, "json")
        assert body.get("name") == "spinwire-interop-python", "the client name from the connect command"

        channel = f"proxied:allowed-{h.uid()}"
        _, _, subscribed = await h.subscribe(client, channel)
        assert h.decode(subscribed.data, use_protobuf) == {"hello": channel}
        sub = (await backend.call("subscribe", lambda c: c["body"].get("channel") == channel))["body"]
        # The connection really is alice's, with the meta the connect proxy attached
        # (include_connection_meta on the subscribe proxy).
        assert (sub["user"], sub["client"]) == ("alice", client.client_id)
        assert sub.get("meta") == {"role": "tester"}

        reply = await client.rpc("echo", ph.encode({"n": 1}, use_protobuf))
        assert h.decode(reply.data, use_protobuf) == {"echo": {"n": 1}}
        rpc = (await backend.call("rpc", _of(client)))["body"]
        assert (rpc["user"], rpc["method"]) == ("alice", "echo")
    finally:
        await h.disconnect_all(client)


@pytest.mark.parametrize("use_protobuf", PROTOCOLS)
async def test_publish_rewritten_by_backend_or_rejected(proxied, use_protobuf):
    backend, server = proxied
    publisher, _, _ = await ph.connect_as(server, {"user": "alice"}, use_protobuf)
    watcher, _, _ = await ph.connect_as(server, {"user": "watcher"}, use_protobuf)
    try:
        channel = f"proxied:allowed-{h.uid()}"
        _, sub_events, _ = await h.subscribe(watcher, channel)

        await publisher.publish(channel, ph.encode({"text": "hi"}, use_protobuf))
        pub = await sub_events.next("publication")
        assert h.decode(pub.pub.data, use_protobuf) == {"text": "hi", "rewritten": True}
        call = (await backend.call("publish", lambda c: c["body"].get("channel") == channel))["body"]
        assert call["data"] == {"text": "hi"}, "the backend got the original data"
        assert (call["user"], call["client"]) == ("alice", publisher.client_id)

        await ph.expect_call_error(publisher.publish(channel, ph.encode({"reject": True}, use_protobuf)), 4003, "publish rejected")
        await asyncio.sleep(0.3)  # time for a wrongly delivered publication to arrive
        assert sub_events.count("publication") == 1, "the rejected publication reached no subscriber"
    finally:
        await h.disconnect_all(publisher, watcher)


async def test_subscribe_denied_then_kicked(proxied):
    _, server = proxied
    client, events, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        denied_events = h.SubEvents()
        denied = client.new_subscription(f"proxied:denied-{h.uid()}", events=denied_events)
        await denied.subscribe()
        ctx = await denied_events.next("unsubscribed")
        assert (ctx.code, ctx.reason) == (103, "permission denied")
        assert denied.state == SubscriptionState.UNSUBSCRIBED

        kick = client.new_subscription(f"proxied:kick-{h.uid()}", events=h.SubEvents())
        await kick.subscribe()
        d = await events.next("disconnected")
        assert (d.code, d.reason) == (4502, "subscribe kick")
    finally:
        await h.disconnect_all(client)


async def test_rpc_fail_and_kick(proxied):
    _, server = proxied
    client, events, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        first_id = client.client_id
        await ph.expect_call_error(client.rpc("fail", {}), 4500, "rpc failed")

        # 4444 is in the reconnect range (4000-4499): connecting, then connected again.
        with pytest.raises(CentrifugeError):
            await client.rpc("kick", {})
        c = await events.next("connecting")
        assert (c.code, c.reason) == (4444, "kicked")
        await events.next("connected", timeout=8.0)
        assert client.client_id != first_id, "a new connection"
    finally:
        await h.disconnect_all(client)


@pytest.mark.parametrize(
    "mode,code,reason",
    [
        ("error", 4001, "backend refused"),
        ("disconnect", 4501, "backend disconnect"),
        # No result and no token: nobody to connect as (anonymous connects are off).
        ("no_result", 3501, "bad request"),
    ],
)
async def test_connect_refused_by_backend(proxied, mode, code, reason):
    client, events = ph.proxy_client(proxied.server, {"mode": mode})
    await ph.expect_connect_disconnected(client, events, code, reason)


async def test_refresh_proxy_extends_the_connection(proxied):
    backend, server = proxied
    client, events, _ = await ph.connect_as(server, {"user": "bob", "ttl": 2})
    since, mark = time.monotonic(), len(events.history)
    try:
        refresh = await backend.call("refresh", _of(client), timeout=5.0)
        assert refresh["body"]["user"] == "bob"
        # Well past the first expiry (2 s): the refresh answer (+60 s) kept it open.
        await asyncio.sleep(max(0.0, since + 4.5 - time.monotonic()))
        assert client.state == ClientState.CONNECTED
        assert events.names()[mark:] == [], "no disconnect, no reconnect"
    finally:
        await h.disconnect_all(client)


async def test_refresh_proxy_expired_closes_with_3005(proxied):
    backend, server = proxied
    client, events, _ = await ph.connect_as(server, {"user": "expire-me", "ttl": 2})
    first_id = client.client_id
    since = time.monotonic()
    try:
        c = await events.next("connecting", timeout=6.0)
        elapsed = time.monotonic() - since
        assert (c.code, c.reason) == (3005, "connection expired")
        # expire_at is whole seconds (now+2): 1-2 s after connecting, plus the refresh call.
        assert 0.5 <= elapsed <= 4.5, f"closed after {elapsed:.2f}s"
        refresh = await backend.call("refresh", lambda x: x["body"].get("client") == first_id)
        assert refresh["body"]["user"] == "expire-me"
    finally:
        await h.disconnect_all(client)


async def test_sub_refresh_proxy_keeps_the_subscription(proxied):
    backend, server = proxied
    client, events, _ = await ph.connect_as(server, {"user": "alice"})
    try:
        channel = f"proxied:short-{h.uid()}"
        sub, sub_events, _ = await h.subscribe(client, channel)
        since, mark, sub_mark = time.time(), len(events.history), len(sub_events.history)
        call = await backend.call("sub_refresh", lambda c: c["body"].get("channel") == channel, timeout=5.0)
        assert (call["body"]["user"], call["body"]["client"]) == ("alice", client.client_id)
        # Past the original expiry (2 s) and a second after the refresh: still subscribed.
        await asyncio.sleep(max(0.0, since + 3.5 - time.time(), call["at"] / 1000 + 1.0 - time.time()))
        assert sub.state == SubscriptionState.SUBSCRIBED
        assert sub_events.names()[sub_mark:] == []
        assert events.names()[mark:] == []
    finally:
        await h.disconnect_all(client)


async def test_real_upgrade_header_forwarded_only_if_listed(proxied):
    """centrifuge-python's `headers` are real WebSocket upgrade headers."""
    backend, server = proxied
    headers = {"X-Real-Header": "real", "X-Untrusted": "evil-real"}
    client, _, _ = await ph.connect_as(server, {"user": "real"}, headers=headers)
    try:
        got = (await backend.call("connect", _of(client)))["headers"]
        assert got.get("x-real-header") == "real"
        assert "x-untrusted" not in got, "not in http_headers"
        if backend.kind == "http":
            assert got.get("x-static") == "s", "http.static_headers"
    finally:
        await h.disconnect_all(client)


async def test_emulated_headers_cannot_forge_http_headers(proxied):
    """GHSA-9468-v6mj-fppw: headers emulation (the connect frame's `headers`) is client
    controlled: only emulated_headers names come from it, never an http_headers one. The
    SDK has no emulation, so the connect command is sent over a plain WebSocket."""
    backend, server = proxied
    reply, close = await ph.raw_connect(server, {"data": {"user": "emulated"}, "headers": EMULATED})
    assert close is None and reply and "connect" in reply, (reply, close)
    client_id = reply["connect"]["client"]
    got = (await backend.call("connect", lambda c: c["body"].get("client") == client_id))["headers"]
    assert got.get("x-emulated-ok") == "yes"
    assert "x-real-header" not in got, "an emulated header must not fill an http_headers name"
    assert "x-untrusted" not in got

    # With the real header on the upgrade too, the real value wins.
    reply, close = await ph.raw_connect(server, {"data": {"user": "both"}, "headers": EMULATED}, headers={"X-Real-Header": "real"})
    assert close is None and reply and "connect" in reply, (reply, close)
    client_id = reply["connect"]["client"]
    got = (await backend.call("connect", lambda c: c["body"].get("client") == client_id))["headers"]
    assert got.get("x-real-header") == "real"
