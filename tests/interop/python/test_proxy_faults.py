"""A proxy backend that fails, with centrifuge-python. The HTTP backend is slow (past the
500 ms proxy timeout), answers 500, answers a body that is not JSON, or drops the socket; or
nothing listens at the endpoint. A client must hear "internal server error" (100) quickly,
for a connect as for an RPC, while a client connected beforehand keeps being served, and the
failures must not leak connections. A 403 with a status_to_code transform closes with the
configured code. Also: the unnamed default proxies (channel.proxy.subscribe, rpc.proxy)."""

import asyncio
import time

import pytest
import pytest_asyncio
from centrifuge import ClientState

import interop_helpers as h
import proxy_helpers as ph
from grpc_wire_helpers import running_server

FAILURES = ["slow", "status500", "garbage", "close"]
FD_MARGIN = 6  # a few pooled backend connections may stay open, idle
BAD_CONNECTS = 20


@pytest.fixture(scope="module")
def failing():
    with ph.running_backend("http") as backend:
        with running_server(ph.config_factory(ph.proxy_config(backend))) as server:
            yield ph.Proxied(backend, server)


@pytest.fixture(scope="module")
def unreachable():
    closed_port = h.free_port()  # nothing listens there
    with ph.running_backend("http") as backend:
        with running_server(ph.config_factory(ph.default_proxy_config(backend, closed_port))) as server:
            yield ph.Proxied(backend, server)


@pytest_asyncio.fixture
async def healthy(failing):
    """A client connected before the failure; it must keep being served."""
    client, _, _ = await ph.connect_as(failing.server, {"user": "healthy"})
    yield client
    await h.disconnect_all(client)


async def _assert_served(client, n):
    reply = await client.rpc("echo", {"n": n})
    assert reply.data == {"echo": {"n": n}}, "the healthy client is still served"


def _assert_fast(elapsed, what):
    assert elapsed < ph.FAIL_FAST, f"{what} took {elapsed:.2f}s (limit {ph.FAIL_FAST}s)"


@pytest.mark.parametrize("mode", FAILURES)
async def test_failing_connect_backend_is_internal_error(failing, healthy, mode):
    client, events = ph.proxy_client(failing.server, {"mode": mode})
    _assert_fast(await ph.expect_connect_internal_error(client, events), f"connect error for {mode}")
    await _assert_served(healthy, 1)


@pytest.mark.parametrize("method", FAILURES)
async def test_failing_rpc_backend_is_internal_error(healthy, method):
    elapsed = await ph.expect_call_error(healthy.rpc(method, {}), 100, "internal server error")
    _assert_fast(elapsed, f"rpc error for {method}")
    await _assert_served(healthy, 2)


async def test_status_403_transformed_to_disconnect_4403(failing):
    # The SDK shows nothing for a reconnect-range close while connecting: look at the socket.
    reply, close = await ph.raw_connect(failing.server, {"data": {"mode": "status403"}})
    assert reply is None, f"expected a close, got {reply}"
    assert close == (4403, "forbidden")


async def test_failed_connects_leave_no_file_descriptors(failing, healthy):
    pid = failing.server.proc.pid
    if ph.fd_count(pid) is None:
        pytest.skip("no /proc/<pid>/fd here")
    await _assert_served(healthy, 3)  # a pooled backend connection exists before counting
    before = ph.fd_count(pid)
    for i in range(BAD_CONNECTS):
        mode = FAILURES[i % len(FAILURES)]
        client, events = ph.proxy_client(failing.server, {"mode": mode})
        _assert_fast(await ph.expect_connect_internal_error(client, events), f"connect {i} ({mode})")
    await _assert_served(healthy, 4)
    # Closed WebSockets and dropped backend requests go away asynchronously.
    deadline = time.monotonic() + 6.0
    while (now := ph.fd_count(pid)) > before + FD_MARGIN:
        assert time.monotonic() < deadline, f"open files: {before} before, {now} after {BAD_CONNECTS} failed connects"
        await asyncio.sleep(0.2)


async def test_unreachable_connect_proxy_is_internal_error(unreachable):
    client, events = ph.proxy_client(unreachable.server, {"user": "alice"})
    _assert_fast(await ph.expect_connect_internal_error(client, events), "connect error for an unreachable backend")


async def test_token_skips_connect_proxy_and_default_subscribe_proxy_answers(unreachable):
    backend, server = unreachable
    user = h.uid("token-")
    client, _ = await h.connect(server, user)
    try:
        channel = f"proxied:allowed-{h.uid()}"
        _, _, subscribed = await h.subscribe(client, channel)
        assert subscribed.data == {"hello": channel}
        call = (await backend.call("subscribe", lambda c: c["body"].get("channel") == channel))["body"]
        assert (call["user"], call["client"]) == (user, client.client_id)

        # rpc.proxy points at the closed port too: the call fails, the connection stays.
        started = time.monotonic()
        await ph.expect_call_error(client.rpc("echo", {}), 100, "internal server error")
        _assert_fast(time.monotonic() - started, "rpc error for an unreachable backend")
        assert client.state == ClientState.CONNECTED
    finally:
        await h.disconnect_all(client)
