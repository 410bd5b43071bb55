"""The real-time gRPC-stream ``Client`` against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spinwire import ApiClient, Client, ClientState, SubscriptionError, SubscriptionState, connection_token
from tests.conftest import SECRET, Server, start_server
from tests.support import Recorder, unique

REPO_ROOT = Path(__file__).resolve().parents[3]
INTEROP_NODE_DIR = REPO_ROOT / "tests" / "interop" / "node"
NODE_SUBSCRIBER = Path(__file__).parent / "node" / "ws_subscriber.cjs"


def make_client(server: Server, user: str, **options: Any) -> Client:
    return Client(server.stream_target, token=connection_token(SECRET, user, ttl=600), **options)


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Clients a test creates; all disconnected at the end, even when the test fails."""
    made: list[Client] = []
    yield made
    for client in made:
        await client.disconnect()


class NodeSubscriber:
    """The npm ``centrifuge`` SDK subscribed over WebSocket, reporting JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, server: Server, user: str, channel: str) -> NodeSubscriber:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed", pytrace=False)
        if not (INTEROP_NODE_DIR / "node_modules" / "centrifuge").is_dir():
            pytest.fail(
                f"npm centrifuge not installed in {INTEROP_NODE_DIR}: run `npm ci` there "
                "(tests/interop/run.sh does)",
                pytrace=False,
            )
        proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_SUBSCRIBER),
            server.ws_url,
            connection_token(SECRET, user, ttl=600),
            channel,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "INTEROP_NODE_DIR": str(INTEROP_NODE_DIR)},
        )
        return cls(proc)

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"node subscriber printed nothing for {timeout} s") from None
        if not line:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode(errors="replace")
            raise AssertionError(f"node subscriber exited: {err}")
        return json.loads(line)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def test_api_publish_reaches_websocket_and_grpc_stream_subscribers(
    server: Server, api: ApiClient, clients: list[Client]
) -> None:
    channel = unique("chat:fanout")
    node = await NodeSubscriber.start(server, unique("js-user"), channel)
    try:
        assert await node.next_event() == {"event": "subscribed", "recovered": False}

        client = make_client(server, unique("py-user"))
        clients.append(client)
        await client.connect()
        sub = client.new_subscription(channel)
        seen = Recorder().attach(sub, "publication")
        await sub.subscribe()

        await api.publish(channel, {"text": "one"})
        await api.publish(channel, {"text": "two"})

        node_pubs = [await node.next_event(), await node.next_event()]
        assert node_pubs == [
            {"event": "publication", "data": {"text": "one"}, "offset": 1},
            {"event": "publication", "data": {"text": "two"}, "offset": 2},
        ]
        py_pubs = await seen.wait_count("publication", 2)
        assert [(p.json(), p.offset) for p in py_pubs] == [({"text": "one"}, 1), ({"text": "two"}, 2)]
    finally:
        await node.stop()


async def test_reconnect_code_recovers_missed_publications(
    server: Server, api: ApiClient, clients: list[Client]
) -> None:
    user, channel = unique("rec-user"), unique("chat:recover")
    # A one-second reconnect delay leaves room to publish while the client is away.
    client = make_client(server, user, min_reconnect_delay=1.0, max_reconnect_delay=2.0)
    clients.append(client)
    events = Recorder().attach(client, "connecting", "connected", "disconnected")
    sub = client.new_subscription(channel)
    sub_events = Recorder().attach(sub, "subscribed", "publication")
    await client.connect()
    await sub.subscribe()
    await api.publish(channel, {"n": 1})
    await sub_events.wait_count("publication", 1)

    await api.disconnect(user, code=4001, reason="test reconnect")
    await events.wait(
        lambda: any(c.code == 4001 for c in events.of("connecting")), what="connecting with code 4001"
    )
    assert client.state == ClientState.CONNECTING
    for n in (2, 3, 4):
        await api.publish(channel, {"n": n})

    subscribed = await sub_events.wait_count("subscribed", 2)
    assert subscribed[1].was_recovering is True
    assert subscribed[1].recovered is True
    await sub_events.wait_count("publication", 4)
    await api.publish(channel, {"n": 5})
    pubs = await sub_events.wait_count("publication", 5)

    assert [p.json()["n"] for p in pubs] == [1, 2, 3, 4, 5]
    assert [p.offset for p in pubs] == [1, 2, 3, 4, 5]
    assert len(events.of("connected")) == 2
    assert events.of("disconnected") == []
    assert client.state == ClientState.CONNECTED


async def test_terminal_disconnect_code_stops_the_client(
    server: Server, api: ApiClient, clients: list[Client]
) -> None:
    user, channel = unique("term-user"), unique("chat:term")
    client = make_client(server, user, min_reconnect_delay=0.1, max_reconnect_delay=0.2)
    clients.append(client)
    events = Recorder().attach(client, "connecting", "connected", "disconnected")
    await client.connect()
    sub = client.new_subscription(channel)
    await sub.subscribe()

    await api.disconnect(user, code=4501, reason="go away")
    (disconnected,) = await events.wait_count("disconnected", 1)
    assert (disconnected.code, disconnected.reason) == (4501, "go away")
    assert client.state == ClientState.DISCONNECTED

    # "Does not reconnect" has no event to await: give it several reconnect delays.
    await asyncio.sleep(1.0)
    assert len(events.of("connected")) == 1
    assert [c.code for c in events.of("connecting")] == [0]
    assert (await api.presence_stats(channel)).num_clients == 0

    # The app may connect again; the subscription is made again with it.
    await client.connect()
    await sub.ready(timeout=5)
    assert (await api.presence_stats(channel)).num_clients == 1


async def test_presence_history_and_publish_from_the_client(server: Server, clients: list[Client]) -> None:
    user, channel = unique("ph-user"), unique("chat:ph")
    client = make_client(server, user)
    clients.append(client)
    await client.connect()
    sub = client.new_subscription(channel)
    seen = Recorder().attach(sub, "publication")
    await sub.subscribe()

    presence = await sub.presence()
    assert {cid: info.user for cid, info in presence.presence.items()} == {client.client_id: user}
    stats = await client.presence_stats(channel)
    assert (stats.num_clients, stats.num_users) == (1, 1)

    await sub.publish({"text": "from python"})
    await sub.publish("second")
    pubs = await seen.wait_count("publication", 2)
    assert pubs[0].info is not None and pubs[0].info.user == user

    history = await client.history(channel, limit=10)
    assert [p.data for p in history.publications] == [b'{"text":"from python"}', b'"second"']
    position_only = await sub.history(limit=0)
    assert list(position_only.publications) == []
    assert (position_only.offset, position_only.epoch) == (2, history.epoch)
    newest = await sub.history(limit=1, reverse=True)
    assert [p.data for p in newest.publications] == [b'"second"']
    since = await sub.history(since=(1, history.epoch))
    assert [p.offset for p in since.publications] == [2]


async def test_publication_iterator(server: Server, api: ApiClient, clients: list[Client]) -> None:
    channel = unique("chat:iter")
    client = make_client(server, unique("iter-user"))
    clients.append(client)
    await client.connect()
    sub = client.new_subscription(channel)
    await sub.subscribe()
    pubs = sub.publications()
    for n in range(3):
        await api.publish(channel, {"n": n})

    async def take(count: int) -> list[int]:
        got = []
        async for pub in pubs:
            got.append(pub.json()["n"])
            if len(got) == count:
                break
        return got

    assert await asyncio.wait_for(take(3), 5) == [0, 1, 2]
    await sub.unsubscribe()
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    # After unsubscribe the iterator ends instead of waiting forever.
    assert await asyncio.wait_for(take(1), 5) == []


async def test_subscribe_errors_surface_the_server_code(server: Server, clients: list[Client]) -> None:
    client = make_client(server, unique("err-user"))
    clients.append(client)
    await client.connect()
    sub = client.new_subscription("nosuchns:room")
    events = Recorder().attach(sub, "unsubscribed")
    with pytest.raises(SubscriptionError) as info:
        await sub.subscribe()
    assert info.value.code == 102
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    (unsubscribed,) = await events.wait_count("unsubscribed", 1)
    assert unsubscribed.code == 102


async def test_server_side_subscriptions_from_token_channels(
    server: Server, api: ApiClient, clients: list[Client]
) -> None:
    user, channel = unique("srv-user"), unique("chat:srv")
    client = Client(server.stream_target, token=connection_token(SECRET, user, ttl=600, channels=[channel]))
    clients.append(client)
    events = Recorder().attach(client, "subscribed", "publication")
    await client.connect()
    (subscribed,) = await events.wait_count("subscribed", 1)
    assert subscribed.channel == channel and subscribed.server_side
    assert client.server_subscriptions == [channel]

    await api.publish(channel, {"srv": 1})
    (pub,) = await events.wait_count("publication", 1)
    assert (pub.channel, pub.json(), pub.offset) == (channel, {"srv": 1}, 1)


async def test_server_side_subscription_recovers_after_reconnect(
    server: Server, api: ApiClient, clients: list[Client]
) -> None:
    user, channel = unique("srvrec-user"), unique("chat:srvrec")
    client = Client(
        server.stream_target,
        token=connection_token(SECRET, user, ttl=600, channels=[channel]),
        min_reconnect_delay=1.0,
        max_reconnect_delay=2.0,
    )
    clients.append(client)
    events = Recorder().attach(client, "connecting", "subscribed", "publication")
    await client.connect()
    await api.publish(channel, {"n": 1})
    await events.wait_count("publication", 1)

    await api.disconnect(user, code=4002, reason="bounce")
    await events.wait(lambda: any(c.code == 4002 for c in events.of("connecting")), what="connecting 4002")
    await api.publish(channel, {"n": 2})

    subscribed = await events.wait_count("subscribed", 2)
    assert subscribed[1].was_recovering and subscribed[1].recovered
    pubs = await events.wait_count("publication", 2)
    assert [p.json()["n"] for p in pubs] == [1, 2]


async def test_pings_are_answered(clients: list[Client]) -> None:
    # A server that pings every second and wants the pong within 800 ms.
    fast = start_server({"client": {"ping_interval": "1s", "pong_timeout": "800ms"}})
    try:
        client = make_client(fast, unique("ping-user"))
        clients.append(client)
        events = Recorder().attach(client, "connecting", "disconnected")
        await client.connect()
        channel = unique("chat:ping")
        await client.new_subscription(channel).subscribe()
        first_id = client.client_id
        # Pings are invisible to the user; what shows is a connection that outlives several
        # ping rounds without the server's 3012 "no pong" disconnect.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            assert client.state == ClientState.CONNECTED
        assert client.client_id == first_id
        assert [c.code for c in events.of("connecting")] == [0]
        assert events.of("disconnected") == []
        assert (await client.presence_stats(channel)).num_clients == 1
    finally:
        for c in clients:
            await c.disconnect()
        fast.stop()


async def test_stream_error_reconnects_and_reports_lost_position(clients: list[Client]) -> None:
    # A server of its own, killed without a goodbye and started again on the same ports.
    srv = start_server()
    try:
        user, channel = unique("crash-user"), unique("chat:crash")
        client = make_client(srv, user, min_reconnect_delay=0.1, max_reconnect_delay=0.5)
        clients.append(client)
        events = Recorder().attach(client, "connecting", "connected", "disconnected")
        sub = client.new_subscription(channel)
        sub_events = Recorder().attach(sub, "subscribed", "publication")
        await client.connect()
        await sub.subscribe()
        await sub.publish({"before": "crash"})
        await sub_events.wait_count("publication", 1)

        assert srv.process is not None
        srv.process.kill()
        srv.process.wait()
        await events.wait(lambda: len(events.of("connecting")) == 2, what="reconnecting after the crash")
        await asyncio.to_thread(srv.start)

        await events.wait_count("connected", 2, timeout=15)
        subscribed = await sub_events.wait_count("subscribed", 2)
        # The restarted (memory) engine lost the stream: recovery was tried and failed,
        # which tells the app to re-sync.
        assert subscribed[1].was_recovering is True
        assert subscribed[1].recovered is False
        assert events.of("disconnected") == []
    finally:
        for c in clients:
            await c.disconnect()
        srv.stop()
