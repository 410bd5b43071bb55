"""Server API clients against the real server: gRPC ``ApiClient`` and ``HttpApiClient``."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest

from spinwire import ApiClient, ApiError, AuthenticationError, HttpApiClient, TimeoutError
from spinwire.api import requests
from tests.conftest import GRPC_KEY, Server
from tests.support import unique


async def test_grpc_publish_then_history_returns_the_publications_in_order(api: ApiClient) -> None:
    channel = unique("chat:api")
    first = await api.publish(channel, {"n": 1})
    second = await api.publish(channel, b'{"n":2}')
    assert second.offset == first.offset + 1
    assert first.epoch and second.epoch == first.epoch

    history = await api.history(channel)
    assert [p.data for p in history.publications] == [b'{"n":1}', b'{"n":2}']
    assert [p.offset for p in history.publications] == [first.offset, second.offset]
    assert (history.offset, history.epoch) == (second.offset, second.epoch)

    since = await api.history(channel, since=(first.offset, first.epoch))
    assert [p.data for p in since.publications] == [b'{"n":2}']

    await api.history_remove(channel)
    emptied = await api.history(channel)
    assert list(emptied.publications) == [] and emptied.offset == second.offset


async def test_grpc_unknown_namespace_is_api_error_102(api: ApiClient) -> None:
    with pytest.raises(ApiError) as info:
        await api.publish("nosuchns:x", {"a": 1})
    assert info.value.code == 102


async def test_grpc_wrong_api_key_is_authentication_error(server: Server) -> None:
    async with ApiClient(server.grpc_api_target, api_key="wrong-key") as bad:
        with pytest.raises(AuthenticationError) as info:
            await bad.info()
    assert info.value.grpc_status == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_grpc_deadline_is_timeout_error(silent_listener: int) -> None:
    async with ApiClient(f"127.0.0.1:{silent_listener}", api_key=GRPC_KEY, timeout=0.3) as hung:
        with pytest.raises(TimeoutError):
            await hung.info()


async def test_http_timeout_is_timeout_error(silent_listener: int) -> None:
    hung = HttpApiClient(f"http://127.0.0.1:{silent_listener}", api_key="k", timeout=0.3)
    with pytest.raises(TimeoutError):
        await hung.info()


async def test_grpc_broadcast_reports_each_channel(api: ApiClient) -> None:
    good = unique("chat:bc")
    result = await api.broadcast([good, "nosuchns:y"], {"b": True})
    assert len(result.responses) == 2
    assert result.responses[0].result.offset == 1
    assert result.responses[1].error.code == 102


async def test_grpc_batch_keeps_reply_order(api: ApiClient) -> None:
    channel = unique("chat:batch")
    replies = await api.batch(
        [requests.publish(channel, {"i": 1}), requests.publish("nosuchns:z", {"i": 2}), requests.history(channel)]
    )
    assert replies[0].publish.offset == 1
    assert replies[1].error.code == 102
    assert [p.data for p in replies[2].history.publications] == [b'{"i":1}']


async def test_grpc_info_presence_channels(api: ApiClient) -> None:
    info = await api.info()
    assert len(info.nodes) == 1 and info.nodes[0].uid
    channel = unique("chat:empty")
    stats = await api.presence_stats(channel)
    assert (stats.num_clients, stats.num_users) == (0, 0)
    assert dict((await api.presence(channel)).presence) == {}
    assert channel not in (await api.channels()).channels


async def test_http_publish_then_history(http_api: HttpApiClient) -> None:
    channel = unique("chat:http")
    first = await http_api.publish(channel, {"text": "hi"})
    await http_api.publish(channel, "plain string")
    history = await http_api.history(channel)
    assert [p.data for p in history.publications] == [b'{"text":"hi"}', b'"plain string"']
    assert history.publications[0].offset == first.offset
    assert history.epoch == first.epoch


async def test_http_binary_payload_goes_as_b64data(http_api: HttpApiClient, api: ApiClient) -> None:
    channel = unique("chat:bin")
    await http_api.publish(channel, b"\x00\x01binary")
    # Non-JSON bytes travel as b64data over HTTP; the gRPC API hands them back unchanged.
    history = await api.history(channel)
    assert [p.data for p in history.publications] == [b"\x00\x01binary"]


async def test_http_errors(server: Server, http_api: HttpApiClient) -> None:
    with pytest.raises(ApiError) as info:
        await http_api.publish("nosuchns:x", {"a": 1})
    assert info.value.code == 102
    bad = HttpApiClient(server.base_url, api_key="wrong-key")
    with pytest.raises(AuthenticationError) as auth:
        await bad.info()
    assert auth.value.http_status == 401


async def test_http_batch_and_presence_stats(http_api: HttpApiClient) -> None:
    channel = unique("chat:hb")
    replies = await http_api.batch([requests.publish(channel, [1, 2]), requests.presence_stats(channel)])
    assert replies[0].publish.offset == 1
    assert replies[1].presence_stats.num_clients == 0
