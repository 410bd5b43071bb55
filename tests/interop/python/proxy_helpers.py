"""Helpers for the proxy tests (test_proxy*.py): the test backends of
tests/interop/backends as child processes, the Spinwire proxy configs (Centrifugo v6 keys,
the same as node/proxy.mjs), clients without a token, and what centrifuge-python shows for
each answer of the server (the one place that encodes the SDK's side of an outcome)."""

import asyncio
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

import pytest
import websockets
from centrifuge import Client, ClientState, ReplyError

import interop_helpers as h

BACKENDS_DIR = h.REPO_ROOT / "tests" / "interop" / "backends"
BACKEND_START_TIMEOUT = 20.0  # the gRPC backend runs protoc first

# The proxy timeout of every config here, and how soon a client must hear about a backend
# that failed: the timeout plus a margin for the connect round trip on a busy 2-core box.
PROXY_TIMEOUT = "500ms"
FAIL_FAST = 1.5  # seconds


# ----------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------


class Backend:
    """A running test backend. `calls()` normalizes both backends' records to
    {kind, body, headers, at}: body is the proxy request (gRPC: as JSON with `bytes` fields
    decoded), headers the HTTP headers or gRPC metadata, lower-cased. The gRPC backend's
    subscribe stream records also keep `stream` ({channel, client, user, direction}) and,
    for "stream_closed", `outcome` ("ended", "aborted" or "cancelled")."""

    def __init__(self, kind: str, proc: subprocess.Popen, ports: dict, stderr):
        self.kind = kind
        self.proc = proc
        self.port = ports["port"]
        self.calls_url = f"http://127.0.0.1:{ports.get('calls_port', self.port)}"
        self._stderr = stderr

    def endpoint(self, event: str) -> str:
        """The proxy endpoint for one event: HTTP has a path per event, gRPC one address."""
        if self.kind == "http":
            return f"http://127.0.0.1:{self.port}/{event}"
        return f"grpc://127.0.0.1:{self.port}"

    def calls(self, kind: Optional[str] = None) -> list:
        with urllib.request.urlopen(f"{self.calls_url}/calls", timeout=3) as resp:
            raw = json.load(resp)
        if self.kind == "http":
            norm = [{"kind": c["kind"], "body": c["body"], "headers": c["headers"], "at": c["at"]} for c in raw]
        else:
            norm = [
                {"kind": c["kind"], "body": c["request"], "headers": c["metadata"], "at": c["at"],
                 **{k: c[k] for k in ("stream", "outcome") if k in c}}
                for c in raw
            ]
        return [c for c in norm if kind is None or c["kind"] == kind]

    async def call(self, kind: str, pred: Callable[[dict], bool], timeout: float = 3.0) -> dict:
        """The first call of `kind` whose record matches `pred`, waiting up to `timeout` (calls
        such as refresh come later than the client action that causes them)."""
        deadline = time.monotonic() + timeout
        while True:
            for c in await asyncio.to_thread(self.calls, kind):
                if pred(c):
                    return c
            if time.monotonic() >= deadline:
                raise AssertionError(f"timeout ({timeout}s) waiting for a {kind} call at the {self.kind} backend")
            await asyncio.sleep(0.05)

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-64 * 1024 :].decode("utf-8", "replace")


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline()
    return b""


@contextmanager
def running_backend(kind: str) -> Iterator[Backend]:
    """Start the `http` (node) or `grpc` (this python) backend; stop it afterwards. It
    exits on its own if this process dies (--watch-stdin)."""
    if kind == "http":
        node = shutil.which("node")
        if node is None:
            pytest.skip("`node` not found: the HTTP proxy backend is tests/interop/backends/http_backend.mjs")
        cmd = [node, str(BACKENDS_DIR / "http_backend.mjs"), "--watch-stdin"]
    else:
        cmd = [sys.executable, str(BACKENDS_DIR / "grpc_backend.py"), "--watch-stdin"]
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        line = _read_line(proc, BACKEND_START_TIMEOUT)
        if not line:
            stderr.seek(0)
            pytest.fail(f"{kind} backend printed no port: {stderr.read().decode('utf-8', 'replace')}", pytrace=False)
        backend = Backend(kind, proc, json.loads(line), stderr)
        yield backend
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for f in (proc.stdin, proc.stdout):
            f.close()
        stderr.close()


class Proxied(NamedTuple):
    backend: Backend
    server: h.SpinwireServer


# ----------------------------------------------------------------------------------------
# Spinwire configs (merged over interop_helpers.python_suite_config)
# ----------------------------------------------------------------------------------------


def _deep_merge(base, extra):
    if not isinstance(base, dict) or not isinstance(extra, dict):
        return extra
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(base[k], v) if k in base else v
    return out


def config_factory(extra: dict):
    """SpinwireServer config factory: the suite's base config with `extra` merged in
    (dicts merge, lists replace: `channel.namespaces` becomes the proxied one only)."""

    def factory(port, grpc_port, secret, api_key, grpc_key):
        return _deep_merge(h.python_suite_config(port, grpc_port, secret, api_key, grpc_key), extra)

    return factory


def proxy_config(backend: Backend) -> dict:
    """Every event proxied to `backend` by named proxies. The `http` block (static headers,
    status transform) is for HTTP endpoints only, as in Centrifugo."""
    timeout = PROXY_TIMEOUT
    connect = {
        "enabled": True,
        "endpoint": backend.endpoint("connect"),
        "timeout": timeout,
        "http_headers": ["x-real-header"],
        "emulated_headers": ["x-emulated-ok"],
    }
    if backend.kind == "http":
        connect["http"] = {
            "static_headers": {"x-static": "s"},
            "status_to_code_transforms": [{"status_code": 403, "to_disconnect": {"code": 4403, "reason": "forbidden"}}],
        }
    return {
        "client": {"proxy": {"connect": connect, "refresh": {"enabled": True, "endpoint": backend.endpoint("refresh"), "timeout": timeout}}},
        "proxies": [
            {"name": "subscribe", "endpoint": backend.endpoint("subscribe"), "timeout": timeout, "include_connection_meta": True},
            {"name": "publish", "endpoint": backend.endpoint("publish"), "timeout": timeout},
            {"name": "rpc", "endpoint": backend.endpoint("rpc"), "timeout": timeout},
            {"name": "sub_refresh", "endpoint": backend.endpoint("sub_refresh"), "timeout": timeout},
        ],
        "channel": {
            "namespaces": [
                {
                    "name": "proxied",
                    "subscribe_proxy_enabled": True,
                    "subscribe_proxy_name": "subscribe",
                    "publish_proxy_enabled": True,
                    "publish_proxy_name": "publish",
                    "sub_refresh_proxy_enabled": True,
                    "sub_refresh_proxy_name": "sub_refresh",
                }
            ]
        },
        "rpc": {"without_namespace": {"proxy_enabled": True, "proxy_name": "rpc"}},
    }


def default_proxy_config(backend: Backend, closed_port: int) -> dict:
    """The unnamed proxies: `channel.proxy.subscribe` to the backend (a namespace with
    subscribe_proxy_enabled and no name uses it); connect and `rpc.proxy` at `closed_port`,
    where nothing listens."""
    timeout = PROXY_TIMEOUT
    return {
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": f"http://127.0.0.1:{closed_port}/connect", "timeout": timeout}}},
        "channel": {
            "proxy": {"subscribe": {"endpoint": backend.endpoint("subscribe"), "timeout": timeout}},
            "namespaces": [{"name": "proxied", "subscribe_proxy_enabled": True}],
        },
        "rpc": {
            "proxy": {"endpoint": f"http://127.0.0.1:{closed_port}/rpc", "timeout": timeout},
            "without_namespace": {"proxy_enabled": True},
        },
    }


def stream_proxy_config(backend: Backend) -> dict:
    """Subscribe stream proxies (gRPC only) through the named proxy "stream": `streamed:*`
    unidirectional, `bidi:*` bidirectional. Connect is proxied too, so that the connect
    data {"user": ...} names the user the stream's request carries."""
    timeout = PROXY_TIMEOUT
    stream = {"subscribe_stream_proxy_enabled": True, "subscribe_stream_proxy_name": "stream"}
    return {
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": backend.endpoint("connect"), "timeout": timeout}}},
        "proxies": [{"name": "stream", "endpoint": backend.endpoint("subscribe_stream"), "timeout": timeout}],
        "channel": {
            "namespaces": [
                {"name": "streamed", **stream},
                {"name": "bidi", **stream, "subscribe_stream_proxy_bidirectional": True},
            ]
        },
    }


def stream_of(channel: str, client_id: str) -> Callable[[dict], bool]:
    """Matches the gRPC backend's stream records of one subscriber's streams."""
    return lambda c: (c.get("stream") or {}).get("channel") == channel and c["stream"].get("client") == client_id


# ----------------------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------------------


def encode(value, use_protobuf: bool):
    """A payload for the SDK: JSON bytes for Protobuf, the value itself for JSON."""
    return json.dumps(value).encode() if use_protobuf else value


def proxy_client(server, data, use_protobuf: bool = False, **kwargs):
    """A client without a token (so the connect proxy decides) sending `data` on connect;
    not connected yet."""
    events = h.ClientEvents()
    client = Client(
        server.ws_url,
        events=events,
        token="",
        data=encode(data, use_protobuf),
        use_protobuf=use_protobuf,
        timeout=5.0,
        min_reconnect_delay=0.1,
        max_reconnect_delay=1.0,
        name="spinwire-interop-python",
        proxy=None,
        **kwargs,
    )
    return client, events


async def connect_as(server, data, use_protobuf: bool = False, **kwargs):
    """A connected proxy client: (client, events with the connect events drained, connected ctx)."""
    client, events = proxy_client(server, data, use_protobuf, **kwargs)
    await client.connect()
    connected = await events.next("connected")
    events.drain()
    return client, events, connected


async def raw_connect(server, connect: dict, headers: Optional[dict] = None, timeout: float = 5.0):
    """Send one JSON connect command over a plain WebSocket (for what the SDK cannot send,
    e.g. emulated headers, or cannot show, e.g. a close while connecting). Returns
    (first reply or None, (close code, reason) or None)."""
    async with websockets.connect(server.ws_url, additional_headers=headers, proxy=None, open_timeout=timeout) as ws:
        await ws.send(json.dumps({"id": 1, "connect": connect}))
        try:
            frame = await asyncio.wait_for(ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            return None, ((e.rcvd.code, e.rcvd.reason) if e.rcvd else None)
        return json.loads(frame.splitlines()[0]), None


def fd_count(pid: int) -> Optional[int]:
    """Open file descriptors of a process (Linux /proc); None where /proc is missing."""
    path = f"/proc/{pid}/fd"
    return len(os.listdir(path)) if os.path.isdir(path) else None


# ----------------------------------------------------------------------------------------
# What centrifuge-python 0.7.0 shows (centrifuge/client.py, checked against its source):
#  * connect reply with a temporary error (100 "internal server error" is sent temporary):
#    on_error(ErrorContext(code=13 CONNECT_ERROR, error=ReplyError(code, message, True)));
#    the client stays CONNECTING and retries, with no connecting/disconnected event.
#  * connect reply with another error (4001): on_disconnected(code, reason=message), no retry.
#  * close frame 3500-3999 / 4500-4999 (3501, 4501, 4502): on_disconnected(code, reason).
#  * other close frames >= 3000 (3005, 4403, 4444) reconnect: from CONNECTED the SDK emits
#    on_connecting(code, reason); while still CONNECTING it emits nothing at all, so such a
#    close is checked on a raw WebSocket (raw_connect).
#  * a failed call (rpc, publish) raises ReplyError(code, message, temporary).
#  * subscribe reply with a temporary error (100): the subscription's on_error(
#    SubscriptionErrorContext(error=ReplyError(code, message, True))), then it subscribes
#    again by itself (no unsubscribed event); another error (103): its on_unsubscribed(code,
#    reason=message).
#  * unsubscribe push: code < 2500 (2000) -> on_unsubscribed(code, reason); code >= 2500
#    (2500) -> on_subscribing(code, reason), then it subscribes again by itself.
# ----------------------------------------------------------------------------------------


async def expect_connect_internal_error(client, events, timeout: float = 5.0) -> float:
    """Connect and expect the server's internal error (100) as a temporary connect error.
    Returns the seconds from connect() to that error; the client is disconnected after (it
    would retry against the same backend forever)."""
    started = time.monotonic()
    try:
        await client.connect()
        ctx = await events.next("error", timeout=timeout, pred=lambda c: isinstance(c.error, ReplyError))
        elapsed = time.monotonic() - started
        state, seen = client.state, events.names()
    finally:
        await h.disconnect_all(client)
    err = ctx.error
    assert (err.code, err.message, err.temporary) == (100, "internal server error", True), err
    assert state == ClientState.CONNECTING, "the SDK keeps trying after a temporary connect error"
    assert "disconnected" not in seen, seen
    return elapsed


async def expect_connect_disconnected(client, events, code: int, reason: str, timeout: float = 5.0) -> None:
    """Connect and expect a terminal on_disconnected(code, reason) (no retry)."""
    try:
        await client.connect()
        ctx = await events.next("disconnected", timeout=timeout)
        state = client.state
    finally:
        await h.disconnect_all(client)
    assert (ctx.code, ctx.reason) == (code, reason), events.history
    assert state == ClientState.DISCONNECTED


async def expect_call_error(call, code: int, message: str) -> float:
    """Await `call` (an rpc/publish coroutine), expecting ReplyError(code, message); returns
    the seconds it took."""
    started = time.monotonic()
    with pytest.raises(ReplyError) as info:
        await call
    assert (info.value.code, info.value.message) == (code, message), info.value
    return time.monotonic() - started
