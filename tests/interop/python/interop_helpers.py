"""Helpers shared by the Spinwire Python interop tests: server process, JWTs, SDK event
recorders, free ports."""

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt as pyjwt
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # tests/interop/python -> repo root
PROTO_ROOT = REPO_ROOT / "proto"
SPINWIRE_BIN = os.environ.get("SPINWIRE_BIN", str(REPO_ROOT / "target" / "debug" / "spinwire"))
READY_TIMEOUT = 20.0
EVENT_TIMEOUT = 5.0


class ServerNotReady(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_suite_config(port: int, grpc_port: int, secret: str, api_key: str, grpc_key: str) -> dict:
    """Centrifugo v6 JSON config used by the Python suite."""
    return {
        "http_server": {"port": port},
        "log": {"level": "info"},
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": api_key},
        "grpc_api": {"enabled": True, "port": grpc_port, "key": grpc_key},
        "health": {"enabled": True},
        "channel": {
            "namespaces": [
                {
                    "name": "chat",
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_subscriber": True,
                    "presence": True,
                    "allow_presence_for_subscriber": True,
                    "join_leave": True,
                    "history_size": 10,
                    "history_ttl": "300s",
                    "allow_history_for_subscriber": True,
                },
                {"name": "news", "allow_subscribe_for_client": True},
                {
                    "name": "rec",
                    "allow_subscribe_for_client": True,
                    "history_size": 100,
                    "history_ttl": "300s",
                    "force_recovery": True,
                },
            ]
        },
    }


class SpinwireServer:
    def __init__(self, config_factory):
        self.port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        self.secret = "py-secret-" + secrets.token_hex(16)
        self.api_key = "py-api-key-" + secrets.token_hex(8)
        self.grpc_key = "py-grpc-key-" + secrets.token_hex(8)
        self.config = config_factory(self.port, self.grpc_port, self.secret, self.api_key, self.grpc_key)
        self.dir = Path(tempfile.mkdtemp(prefix="spinwire-py-"))
        self.config_path = self.dir / "config.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = self.dir / "server.log"
        self.proc = None
        self.panicked = False  # "panicked" seen on the server's stderr
        self.expect_exit = False  # set by signal(): the test itself stops the process
        self._stderr_thread = None
        self._log_lock = threading.Lock()

    # URLs
    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        if not Path(SPINWIRE_BIN).exists():
            raise ServerNotReady(f"server did not become ready: binary not found at {SPINWIRE_BIN} (set SPINWIRE_BIN)")
        # stdout goes straight to the log file; stderr is piped through a thread that
        # copies it into the same file and watches for "panicked".
        self._log = open(self.log_path, "ab", buffering=0)
        try:
            self.proc = subprocess.Popen(
                [SPINWIRE_BIN, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            self._log.close()
            raise ServerNotReady(f"server did not become ready: spawn failed: {e}") from e
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerNotReady(f"server did not become ready: process exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise ServerNotReady(f"server did not become ready: no 200 from {url} in {READY_TIMEOUT}s (last: {last})")

    def _pump_stderr(self) -> None:
        tail = b""
        for line in iter(self.proc.stderr.readline, b""):
            if b"panicked" in tail + line:
                self.panicked = True
            tail = line[-16:]
            with self._log_lock:
                try:
                    self._log.write(line)
                except ValueError:  # log closed
                    pass
        self.proc.stderr.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self, what: str = "server") -> None:
        """The process still runs, has not panicked and answers GET /health with 200."""
        assert self.alive, f"{what}: server process exited with {self.proc.returncode if self.proc else None}"
        assert not self.panicked, f'{what}: server stderr contains "panicked"'
        url = f"http://127.0.0.1:{self.port}/health"
        with urllib.request.urlopen(url, timeout=3) as resp:
            assert resp.status == 200, f"{what}: GET /health answered {resp.status}"

    def signal(self, sig=signal.SIGTERM) -> None:
        """Send a signal to the server (the test expects it to exit)."""
        self.expect_exit = True
        if self.alive:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the server. Returns a problem description (panic, unexpected exit) or None."""
        problem = None
        if self.proc is not None and self.proc.poll() is not None and not self.expect_exit:
            problem = f"server exited unexpectedly with {self.proc.returncode}"
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)
            self._stderr_thread = None
        if getattr(self, "_log", None) is not None:
            with self._log_lock:
                self._log.close()
        if self.panicked:
            problem = 'server stderr contains "panicked"'
        return problem

    def log_tail(self, limit: int = 200_000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return f"(no log; binary {SPINWIRE_BIN})"
        return data[-limit:].decode("utf-8", "replace")

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # Tokens
    def token(self, user: str, ttl: int = 3600, **claims) -> str:
        now = int(time.time())
        payload = {"sub": user, "iat": now, "exp": now + ttl}
        payload.update(claims)
        return pyjwt.encode(payload, self.secret, algorithm="HS256")


def uid(prefix: str = "") -> str:
    return prefix + secrets.token_hex(4)


# ----------------------------------------------------------------------------------------
# Event recorders
# ----------------------------------------------------------------------------------------


class _Recorder:
    """Records each callback's context in a per-event queue."""

    def __init__(self):
        self._queues = {}
        self.history = []

    def _q(self, name):
        if name not in self._queues:
            self._queues[name] = asyncio.Queue()
        return self._queues[name]

    def _put(self, name, ctx):
        self.history.append((name, ctx))
        self._q(name).put_nowait(ctx)

    async def next(self, name, timeout=EVENT_TIMEOUT, pred=None):
        """Next `name` event (optionally the next one matching `pred`)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timeout ({timeout}s) waiting for {name!r}; events so far: {self.names()}")
            try:
                ctx = await asyncio.wait_for(self._q(name).get(), remaining)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"timeout ({timeout}s) waiting for {name!r}; events so far: {self.names()}"
                ) from None
            if pred is None or pred(ctx):
                return ctx

    def drain(self):
        """Forget queued (not yet awaited) events; `history` keeps them."""
        self._queues = {}

    def names(self):
        return [n for n, _ in self.history]

    def count(self, name):
        return sum(1 for n, _ in self.history if n == name)


class ClientEvents(_Recorder, ClientEventHandler):
    async def on_connecting(self, ctx):
        self._put("connecting", ctx)

    async def on_connected(self, ctx):
        self._put("connected", ctx)

    async def on_disconnected(self, ctx):
        self._put("disconnected", ctx)

    async def on_error(self, ctx):
        self._put("error", ctx)

    async def on_subscribed(self, ctx):
        self._put("subscribed", ctx)

    async def on_subscribing(self, ctx):
        self._put("subscribing", ctx)

    async def on_unsubscribed(self, ctx):
        self._put("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self._put("publication", ctx)

    async def on_join(self, ctx):
        self._put("join", ctx)

    async def on_leave(self, ctx):
        self._put("leave", ctx)


class SubEvents(_Recorder, SubscriptionEventHandler):
    async def on_subscribing(self, ctx):
        self._put("subscribing", ctx)

    async def on_subscribed(self, ctx):
        self._put("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        self._put("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self._put("publication", ctx)

    async def on_join(self, ctx):
        self._put("join", ctx)

    async def on_leave(self, ctx):
        self._put("leave", ctx)

    async def on_error(self, ctx):
        self._put("error", ctx)


async def connect(server, user=None, use_protobuf=False, token=None, **kwargs):
    """Connected centrifuge-python Client plus its event recorder."""
    events = ClientEvents()
    client = Client(
        server.ws_url,
        events=events,
        token=token if token is not None else server.token(user or uid("py-")),
        use_protobuf=use_protobuf,
        timeout=5.0,
        min_reconnect_delay=0.1,
        max_reconnect_delay=1.0,
        name="spinwire-interop-python",
        proxy=None,
        **kwargs,
    )
    await client.connect()
    await events.next("connected")
    # Tests wait for what happens next: drop the initial connecting/connected events.
    events.drain()
    return client, events


async def subscribe(client, channel, **kwargs):
    events = SubEvents()
    sub = client.new_subscription(channel, events=events, **kwargs)
    await sub.subscribe()
    ctx = await events.next("subscribed")
    return sub, events, ctx


def decode(data, use_protobuf):
    """Publication payload -> Python value (protobuf payloads are JSON bytes)."""
    if use_protobuf:
        assert isinstance(data, (bytes, bytearray)), f"protobuf payload should be bytes, got {type(data)}"
        return json.loads(bytes(data))
    return data


async def wait_until(pred, timeout=EVENT_TIMEOUT, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timeout ({timeout}s) waiting for {what}")
        await asyncio.sleep(interval)


async def disconnect_all(*clients):
    for c in clients:
        if c is not None:
            try:
                await c.disconnect()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
