"""JWT helpers: the encoding itself, and what the real server accepts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest

from spinwire import (
    ApiClient,
    Client,
    ClientState,
    ConnectError,
    SubscriptionError,
    SubscriptionState,
    connection_token,
    subscription_token,
)
from spinwire.tokens import encode_hs
from tests.conftest import SECRET, Server, start_server
from tests.support import Recorder, unique, wait_until


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_hs256_token_layout_and_signature() -> None:
    token = connection_token("s3cret", "42", ttl=timedelta(minutes=1), info={"name": "Ann"}, channels=["news"])
    header, payload, signature = token.split(".")
    for part in (header, payload, signature):
        assert "=" not in part and "+" not in part and "/" not in part
    assert json.loads(b64url_decode(header)) == {"alg": "HS256", "typ": "JWT"}
    claims = json.loads(b64url_decode(payload))
    assert claims["sub"] == "42" and claims["info"] == {"name": "Ann"} and claims["channels"] == ["news"]
    assert claims["exp"] - claims["iat"] == 60
    assert b" " not in b64url_decode(payload)  # compact JSON
    expected = hmac.new(b"s3cret", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert b64url_decode(signature) == expected


def test_subscription_token_claims() -> None:
    token = subscription_token("k", "7", "$chat:x", exp=2_000_000_000, data={"d": 1}, override={"presence": False})
    claims = json.loads(b64url_decode(token.split(".")[1]))
    assert claims["sub"] == "7" and claims["channel"] == "$chat:x" and claims["exp"] == 2_000_000_000
    assert claims["data"] == {"d": 1} and claims["override"] == {"presence": {"value": False}}


def test_token_without_expiry_and_other_algorithms() -> None:
    claims = json.loads(b64url_decode(connection_token("k", "1").split(".")[1]))
    assert "exp" not in claims
    header = json.loads(b64url_decode(encode_hs({"sub": "1"}, "k", "HS512").split(".")[0]))
    assert header["alg"] == "HS512"
    with pytest.raises(ValueError):
        encode_hs({}, "k", "RS256")
    with pytest.raises(ValueError):
        connection_token("k", "1", ttl=5, exp=10)


async def test_minted_connection_token_is_accepted(server: Server, api: ApiClient) -> None:
    user, channel = unique("tok-user"), unique("chat:tok")
    client = Client(server.stream_target, token=connection_token(SECRET, user, ttl=60, info={"n": 1}))
    try:
        await client.connect()
        await client.new_subscription(channel).subscribe()
        presence = await api.presence(channel)
        infos = list(presence.presence.values())
        assert [(i.user, i.conn_info) for i in infos] == [(user, b'{"n":1}')]
    finally:
        await client.disconnect()


async def test_expired_connection_token_is_error_109(server: Server) -> None:
    expired = connection_token(SECRET, unique("old-user"), exp=int(time.time()) - 10)
    client = Client(server.stream_target, token=expired)
    events = Recorder().attach(client, "disconnected")
    try:
        with pytest.raises(ConnectError) as info:
            await client.connect()
        assert info.value.code == 109
        (disconnected,) = await events.wait_count("disconnected", 1)
        assert disconnected.code == 109
        assert client.state == ClientState.DISCONNECTED
    finally:
        await client.disconnect()


async def test_expired_token_is_replaced_through_get_token(server: Server) -> None:
    user = unique("fresh-user")
    calls = []

    async def get_token() -> str:
        calls.append(1)
        return connection_token(SECRET, user, ttl=60)

    expired = connection_token(SECRET, user, exp=int(time.time()) - 10)
    client = Client(server.stream_target, token=expired, get_token=get_token, min_reconnect_delay=0.05)
    try:
        await client.connect()
        assert client.state == ClientState.CONNECTED
        assert len(calls) == 1
    finally:
        await client.disconnect()


async def test_subscription_token_grants_a_private_channel(server: Server) -> None:
    user = unique("priv-user")
    channel = "$" + unique("chat:private")
    client = Client(server.stream_target, token=connection_token(SECRET, user, ttl=60))
    try:
        await client.connect()
        denied = client.new_subscription(channel)
        with pytest.raises(SubscriptionError) as info:
            await denied.subscribe()
        assert info.value.code == 103
        await client.remove_subscription(denied)

        async def get_token(ch: str) -> str:
            return subscription_token(SECRET, user, ch, ttl=60)

        granted = client.new_subscription(channel, get_token=get_token)
        await granted.subscribe()
        assert granted.state == SubscriptionState.SUBSCRIBED
        await granted.publish({"secret": True})
        history = await granted.history()
        assert [p.data for p in history.publications] == [b'{"secret":true}']
    finally:
        await client.disconnect()


async def test_expiring_connection_and_subscription_are_refreshed() -> None:
    # Expired connections/subscriptions are closed one second after their tokens expire.
    srv = start_server({"client": {"expired_close_delay": "1s", "expired_sub_close_delay": "1s"}})
    user, channel = unique("refresh-user"), "$" + unique("chat:refresh")
    conn_tokens: list[str] = []
    sub_tokens: list[str] = []

    async def get_connection_token() -> str:
        conn_tokens.append(connection_token(SECRET, user, ttl=600))
        return conn_tokens[-1]

    async def get_subscription_token(ch: str) -> str:
        # The first token lives two seconds; refreshed ones ten minutes.
        sub_tokens.append(subscription_token(SECRET, user, ch, ttl=2 if not sub_tokens else 600))
        return sub_tokens[-1]

    client = Client(
        srv.stream_target, token=connection_token(SECRET, user, ttl=2), get_token=get_connection_token
    )
    events = Recorder().attach(client, "connecting", "disconnected", "error")
    try:
        await client.connect()
        sub = client.new_subscription(channel, get_token=get_subscription_token)
        sub_events = Recorder().attach(sub, "subscribing", "unsubscribed", "error")
        await sub.subscribe()
        await wait_until(lambda: bool(conn_tokens), timeout=5, what="connection token refresh")
        await wait_until(lambda: len(sub_tokens) == 2, timeout=5, what="subscription token refresh")
        # Past both original expiries plus the close delay, nothing was closed.
        await asyncio.sleep(2.0)
        assert [c.code for c in events.of("connecting")] == [0]
        assert events.of("disconnected") == [] and events.of("error") == []
        assert [c.code for c in sub_events.of("subscribing")] == [0]
        assert sub_events.of("unsubscribed") == [] and sub_events.of("error") == []
        assert sub.state == SubscriptionState.SUBSCRIBED
    finally:
        await client.disconnect()
        srv.stop()
