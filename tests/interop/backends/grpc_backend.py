"""A Centrifugo gRPC proxy backend for the interop suites (grpcio).

Implements `centrifugal.centrifugo.proxy.CentrifugoProxy` (Connect, Refresh, Subscribe,
Publish, RPC, SubRefresh), and Spinwire's `spinwire.lifecycle.v1.LifecycleEventsService`
(recorded as kind "lifecycle"), with stubs generated at start-up by grpc_tools.protoc from the
project's own proto/centrifugal/centrifugo/proxy/proxy.proto, so the backend checks that
definition too. It answers exactly like http_backend.mjs (same connect data modes, channel
prefixes, publish data and rpc methods); `bytes` fields carry JSON.

It also serves the subscribe streams (gRPC only): SubscribeUnidirectional and
SubscribeBidirectional, which behave by the channel name's part after the namespace
(`<ns>:ok-*`, `end-*`, `deny-*`, `kick-*`, `fail-*`, `slow-*`; see StreamSession). Stream
records carry `stream` ({channel, client, user, direction}) besides `request`:
"stream_open" (request: the SubscribeRequest), "stream_publication" (bidirectional; request:
the client's Publication), "stream_closed" (request: the SubscribeRequest, and `outcome`:
"ended" when the backend returned, "aborted" after a gRPC error, "cancelled" otherwise).

Every call is recorded (kind, the request as a dict with its `bytes` fields decoded as JSON
where they are JSON, lower-cased invocation metadata) and served by a side HTTP server:
    GET  /calls  -> JSON array of the calls so far
    POST /reset  -> forget them
    POST /lifecycle_fail?n=N -> answer the next N lifecycle batches with UNAVAILABLE

Usage: python grpc_backend.py [--watch-stdin]
Listens on 127.0.0.1 (free ports) and prints one line {"port": GRPC_PORT, "calls_port": N}.
--watch-stdin: exit when stdin closes, so a test runner that dies leaves no backend behind.
Needs grpcio and grpcio-tools (tests/interop/python/requirements.txt).
"""

import argparse
import base64
import importlib
import importlib.resources
import json
import math
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[3]  # tests/interop/backends -> repo root
PROTO_ROOT = REPO_ROOT / "proto"
PROXY_PROTO = "centrifugal/centrifugo/proxy/proxy.proto"
LIFECYCLE_PROTO = "spinwire/lifecycle/v1/lifecycle.proto"
SLOW_SECONDS = 3.0  # well past the 500 ms proxy timeout of the tests' configs
# Slow calls and every open subscribe stream hold a worker each (a stream until the server
# cancels it): enough workers that a test's open streams never starve the unary calls.
MAX_WORKERS = 128


def load_stubs(out_dir: str):
    """Generate proxy_pb2 / proxy_pb2_grpc from the project's proto into out_dir."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROXY_PROTO,
            LIFECYCLE_PROTO,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed for {PROXY_PROTO} or {LIFECYCLE_PROTO} (exit {rc})")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("centrifugal.centrifugo.proxy.proxy_pb2")
    pb2_grpc = importlib.import_module("centrifugal.centrifugo.proxy.proxy_pb2_grpc")
    return pb2, pb2_grpc


def lifecycle_servicer(log: "CallLog", failures: "Failures"):
    """Spinwire's LifecycleEventsService: records each batch; fails the next N on request."""
    lifecycle_pb2 = importlib.import_module("spinwire.lifecycle.v1.lifecycle_pb2")
    lifecycle_pb2_grpc = importlib.import_module("spinwire.lifecycle.v1.lifecycle_pb2_grpc")

    def deliver(self, request, context):
        log.add({"kind": "lifecycle", "request": request_dict(request), "metadata": metadata_dict(context),
                 "at": int(time.time() * 1000)})
        if failures.take():
            context.abort(grpc.StatusCode.UNAVAILABLE, "lifecycle store down")
        return lifecycle_pb2.DeliverResponse()

    servicer = type("Lifecycle", (lifecycle_pb2_grpc.LifecycleEventsServiceServicer,), {"Deliver": deliver})()
    return servicer, lifecycle_pb2_grpc.add_LifecycleEventsServiceServicer_to_server


class Failures:
    """Lifecycle deliveries still to refuse (POST /lifecycle_fail?n=N on the side server)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.left = 0

    def set(self, n: int) -> None:
        with self._lock:
            self.left = n

    def take(self) -> bool:
        with self._lock:
            if self.left > 0:
                self.left -= 1
                return True
            return False


# ---------------------------------------------------------------------------------------
# What the backend answers (kept in step with http_backend.mjs). Each returns
# ("result" | "error" | "disconnect", dict), ("empty", None), or ("abort", StatusCode).
# ---------------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def credentials(user, ttl):
    r = {"user": user, "info": {"name": user}, "data": {"welcome": user}, "meta": {"role": "tester"}}
    if isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        r["expire_at"] = now() + int(ttl)
    return r


def on_connect(req: dict):
    data = req.get("data") if isinstance(req.get("data"), dict) else {}
    mode = data.get("mode")
    user = data["user"] if isinstance(data.get("user"), str) else "anonymous-backend"
    if mode == "error":
        return "error", {"code": 4001, "message": "backend refused"}
    if mode == "disconnect":
        return "disconnect", {"code": 4501, "reason": "backend disconnect"}
    if mode == "no_result":
        return "empty", None
    if mode == "slow":
        time.sleep(SLOW_SECONDS)
    if mode == "grpc_error":  # gRPC only: the call fails with a status instead of a reply
        return "abort", grpc.StatusCode.INTERNAL
    return "result", credentials(user, data.get("ttl"))


def on_refresh(req: dict):
    if req.get("user") == "expire-me":
        return "result", {"expired": True}
    return "result", {"expire_at": now() + 60}


def on_subscribe(req: dict):
    channel = req.get("channel", "")
    allowed = {"info": {"via": "proxy"}, "data": {"hello": channel}}
    if channel.startswith("proxied:allowed-"):
        return "result", allowed
    if channel.startswith("proxied:short-"):
        return "result", {**allowed, "expire_at": now() + 2}
    if channel.startswith("proxied:kick-"):
        return "disconnect", {"code": 4502, "reason": "subscribe kick"}
    return "error", {"code": 103, "message": "permission denied"}  # proxied:denied-* and the rest


def on_publish(req: dict):
    data = req.get("data") if isinstance(req.get("data"), dict) else {}
    if data.get("reject") is True:
        return "error", {"code": 4003, "message": "publish rejected"}
    return "result", {"data": {**data, "rewritten": True}}


def on_rpc(req: dict):
    method = req.get("method", "")
    if method == "echo":
        return "result", {"data": {"echo": req.get("data")}}
    if method == "fail":
        return "error", {"code": 4500, "message": "rpc failed"}
    if method == "kick":
        return "disconnect", {"code": 4444, "reason": "kicked"}
    if method == "slow":
        time.sleep(SLOW_SECONDS)
        return "result", {"data": {"slept": True}}
    if method == "grpc_error":
        return "abort", grpc.StatusCode.INTERNAL
    return "error", {"code": 4404, "message": "unknown method"}


def on_sub_refresh(req: dict):
    return "result", {"expire_at": now() + 60}


# ---------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------


class CallLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._calls = []

    def add(self, call: dict) -> None:
        with self._lock:
            self._calls.append(call)

    def snapshot(self) -> list:
        with self._lock:
            return list(self._calls)

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()


def _json_or_base64(raw: bytes):
    """A `bytes` field as the JSON it carries, or as base64 when it is not JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return base64.b64encode(raw).decode("ascii")


def request_dict(msg) -> dict:
    """The request as JSON-able dict: proto field names, defaults omitted (as the HTTP
    proxy's JSON omits empty fields), `bytes` fields decoded as JSON."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    for field in msg.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_BYTES and field.name in d:
            d[field.name] = _json_or_base64(getattr(msg, field.name))
    return d


def metadata_dict(context) -> dict:
    out = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, bytes):  # "-bin" keys
            value = base64.b64encode(value).decode("ascii")
        out[key.lower()] = value
    return out


# ---------------------------------------------------------------------------------------
# gRPC service
# ---------------------------------------------------------------------------------------

BYTES_RESULT_FIELDS = ("info", "data", "meta")


def make_servicer(pb2, pb2_grpc, log: CallLog):
    # (kind, decide, response message, result message) per unary method.
    methods = {
        "Connect": ("connect", on_connect, pb2.ConnectResponse, pb2.ConnectResult),
        "Refresh": ("refresh", on_refresh, pb2.RefreshResponse, pb2.RefreshResult),
        "Subscribe": ("subscribe", on_subscribe, pb2.SubscribeResponse, pb2.SubscribeResult),
        "Publish": ("publish", on_publish, pb2.PublishResponse, pb2.PublishResult),
        "RPC": ("rpc", on_rpc, pb2.RPCResponse, pb2.RPCResult),
        "SubRefresh": ("sub_refresh", on_sub_refresh, pb2.SubRefreshResponse, pb2.SubRefreshResult),
    }

    def build_result(result_cls, values: dict):
        kwargs = {}
        for key, value in values.items():
            kwargs[key] = json.dumps(value).encode() if key in BYTES_RESULT_FIELDS else value
        return result_cls(**kwargs)

    def unary(kind, decide, response_cls, result_cls):
        def handler(self, request, context):
            req = request_dict(request)
            # Recorded before answering, so a call the server timed out on is still visible.
            log.add({"kind": kind, "request": req, "metadata": metadata_dict(context), "at": int(time.time() * 1000)})
            what, value = decide(req)
            if what == "abort":
                context.abort(value, f"backend {kind} failed on purpose")
            if what == "empty":
                return response_cls()
            if what == "result":
                return response_cls(result=build_result(result_cls, value))
            if what == "error":
                return response_cls(error=pb2.Error(**value))
            return response_cls(disconnect=pb2.Disconnect(**value))

        return handler

    body = {name: unary(*spec) for name, spec in methods.items()}
    body.update(make_stream_methods(pb2, log))
    return type("Backend", (pb2_grpc.CentrifugoProxyServicer,), body)()


# ---------------------------------------------------------------------------------------
# Subscribe streams
# ---------------------------------------------------------------------------------------

STREAM_GAP = 0.05  # seconds between a stream's publications
STREAM_PUBLICATIONS = 3  # {"n": 1} .. {"n": 3} on an ok stream
STREAM_SLOW_SECONDS = 2.0  # before a slow stream's first message: past the 500 ms timeout
# A fail stream breaks this long after its first message, so that the client is subscribed
# when it breaks (the case under test) rather than still waiting for its subscribe reply.
STREAM_FAIL_AFTER = 0.2


def stream_mode(channel: str) -> str:
    """What a stream does, from its channel: "streamed:ok-1a2b" -> "ok"."""
    return channel.split(":", 1)[-1].split("-", 1)[0]


class FailedOnce:
    """The client ids whose fail-* stream already broke. Their next stream behaves like an
    ok one: the SDK resubscribes by itself after 2500 and must then get a working stream."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = set()

    def first_time(self, client: str) -> bool:
        with self._lock:
            if client in self._ids:
                return False
            self._ids.add(client)
            return True


class StreamSession:
    """One subscribe stream: what the backend sends on it (by the channel's mode) and its
    records. `closed` is set when the RPC is over for any reason (grpc's add_callback), so
    a waiting stream wakes up when the server cancels it instead of holding its worker."""

    def __init__(self, pb2, log: CallLog, failed: FailedOnce, subscribe_request, direction: str, context):
        self.pb2 = pb2
        self.log = log
        self.failed = failed
        self.context = context
        self.request = request_dict(subscribe_request)
        self.metadata = metadata_dict(context)
        self.stream = {
            "channel": self.request.get("channel", ""),
            "client": self.request.get("client", ""),
            "user": self.request.get("user", ""),
            "direction": direction,
        }
        self.outbox = queue.Queue()  # echoes of the client's publications (bidirectional)
        self.closed = threading.Event()
        self.outcome = None  # "ended" / "aborted" once the backend itself finished the RPC
        self._record("stream_open", self.request)
        if not context.add_callback(self._on_rpc_done):
            self._on_rpc_done()  # the RPC is already over

    def _record(self, kind: str, request: dict, **extra) -> None:
        self.log.add({"kind": kind, "request": request, "stream": self.stream, "metadata": self.metadata,
                      "at": int(time.time() * 1000), **extra})

    def _on_rpc_done(self) -> None:
        self._record("stream_closed", self.request, outcome=self.outcome or "cancelled")
        self.closed.set()

    def _first(self, **answer):
        return self.pb2.StreamSubscribeResponse(subscribe_response=self.pb2.SubscribeResponse(**answer))

    def _publication(self, data):
        # The tag names the stream, so a test sees whose stream a publication came from.
        pub = self.pb2.Publication(data=json.dumps(data).encode(), tags={"stream": self.stream["client"]})
        return self.pb2.StreamSubscribeResponse(publication=pub)

    def _pause(self, seconds: float):
        """Wait `seconds` (less if the RPC ends), yielding the echoes due meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                yield self.outbox.get(timeout=min(left, 0.1))
            except queue.Empty:
                pass

    def messages(self):
        """The StreamSubscribeResponse messages of this stream, by the channel's mode."""
        mode = stream_mode(self.stream["channel"])
        if mode == "slow" and self.closed.wait(STREAM_SLOW_SECONDS):
            return  # the server stopped waiting (proxy timeout) and cancelled the stream
        if mode == "deny":
            yield self._first(error=self.pb2.Error(code=103, message="permission denied"))
            self.outcome = "ended"
            return
        if mode == "kick":
            yield self._first(disconnect=self.pb2.Disconnect(code=4502, reason="stream kick"))
            self.outcome = "ended"
            return
        yield self._first(result=self.pb2.SubscribeResult(data=json.dumps({"stream": "open"}).encode()))
        if mode == "end":
            yield from self._pause(STREAM_GAP)
            yield self._publication({"n": 1})
            self.outcome = "ended"  # returning ends the stream: the client gets 2000
            return
        if mode == "fail" and self.failed.first_time(self.stream["client"]):
            yield from self._pause(STREAM_FAIL_AFTER)
            if self.closed.is_set():
                return
            self.outcome = "aborted"
            self.context.abort(grpc.StatusCode.INTERNAL, "backend stream failed on purpose")
        # ok (and fail's second stream): three publications, then open until cancelled.
        for n in range(1, STREAM_PUBLICATIONS + 1):
            yield from self._pause(STREAM_GAP)
            if self.closed.is_set():
                return
            yield self._publication({"n": n})
        yield from self._pause(math.inf)

    def read_client_publications(self, requests) -> None:
        """Bidirectional: record each publication the client sent on the stream and echo it
        back on the same stream. Runs in its own thread while messages() sends."""
        try:
            for req in requests:
                if req.HasField("publication"):
                    pub = request_dict(req.publication)
                    self._record("stream_publication", pub)
                    self.outbox.put(self._publication({"echo": pub.get("data")}))
                else:  # only the first message may carry subscribe_request
                    self._record("stream_unexpected", request_dict(req))
        except Exception:  # noqa: BLE001 - grpc raises RpcError here once the RPC is over
            pass


def make_stream_methods(pb2, log: CallLog) -> dict:
    failed = FailedOnce()

    def subscribe_unidirectional(self, request, context):
        yield from StreamSession(pb2, log, failed, request, "unidirectional", context).messages()

    def subscribe_bidirectional(self, request_iterator, context):
        try:
            first = next(request_iterator, None)
        except Exception:  # noqa: BLE001 - cancelled before the first request arrived
            return
        if first is None:
            return
        session = StreamSession(pb2, log, failed, first.subscribe_request, "bidirectional", context)
        threading.Thread(target=session.read_client_publications, args=(request_iterator,), daemon=True).start()
        yield from session.messages()

    return {"SubscribeUnidirectional": subscribe_unidirectional, "SubscribeBidirectional": subscribe_bidirectional}


# ---------------------------------------------------------------------------------------
# Side HTTP server for the call log
# ---------------------------------------------------------------------------------------


def make_calls_server(log: CallLog, failures: Failures) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, value) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] == "/calls":
                self._send(200, log.snapshot())
            else:
                self._send(404, {"error": f"no such endpoint: GET {self.path}"})

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.split("?")[0] == "/reset":
                log.reset()
                self._send(200, {})
            elif self.path.split("?")[0] == "/lifecycle_fail":
                query = dict(part.split("=", 1) for part in self.path.partition("?")[2].split("&") if "=" in part)
                failures.set(int(query.get("n", "0")))
                self._send(200, {})
            else:
                self._send(404, {"error": f"no such endpoint: POST {self.path}"})

        def log_message(self, *args):  # quiet: stdout carries the port line only
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    args = parser.parse_args()

    stubs_dir = tempfile.TemporaryDirectory(prefix="spinwire-proxy-stubs-")
    pb2, pb2_grpc = load_stubs(stubs_dir.name)
    log = CallLog()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
    pb2_grpc.add_CentrifugoProxyServicer_to_server(make_servicer(pb2, pb2_grpc, log), server)
    failures = Failures()
    lifecycle, add_lifecycle = lifecycle_servicer(log, failures)
    add_lifecycle(lifecycle, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    if grpc_port == 0:
        raise SystemExit("could not bind a gRPC port on 127.0.0.1")
    server.start()

    calls_server = make_calls_server(log, failures)
    threading.Thread(target=calls_server.serve_forever, daemon=True).start()

    print(json.dumps({"port": grpc_port, "calls_port": calls_server.server_address[1]}), flush=True)

    # SIGTERM, SIGINT or (with --watch-stdin) the end of stdin stop the backend. The main
    # thread only waits: grpcio must not be stopped from inside a signal handler.
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    if args.watch_stdin:
        def watch():
            # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts
            # the interpreter at exit ("could not acquire lock for <stdin>").
            try:
                while os.read(sys.stdin.fileno(), 4096):
                    pass
            except OSError:
                pass
            stopping.set()

        threading.Thread(target=watch, daemon=True).start()
    while not stopping.wait(0.5):
        pass
    server.stop(0).wait(5)
    calls_server.shutdown()
    stubs_dir.cleanup()


if __name__ == "__main__":
    main()
