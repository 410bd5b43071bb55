"""OpenTelemetry (issue 17): spans for the server API (HTTP and gRPC) and for proxy calls,
exported over OTLP to a real receiver that this module runs (the opentelemetry-proto message
types served over OTLP/HTTP and OTLP/gRPC), and W3C trace context carried through: an API
request's `traceparent` parents its span; a connection's `traceparent` parents the spans of
the proxy calls made for it, and each call hands the backend its own `traceparent`."""

import asyncio
import json
import os
import secrets
import threading
import time
import urllib.request
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import websockets
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import interop_helpers as h
import proxy_helpers as ph
from grpc_wire_helpers import running_server

SERVER, CLIENT = 2, 3  # OTLP SpanKind
STATUS_ERROR = 2


def _attrs(key_values):
    out = {}
    for kv in key_values:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


class Receiver:
    """An OTLP trace receiver on both transports; keeps every span it is sent, flattened."""

    def __init__(self):
        self.spans = []
        self.requests = {"http": 0, "grpc": 0}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                ok = self.path == "/v1/traces" and self.headers.get("content-type") == "application/x-protobuf"
                if ok:
                    receiver._take("http", trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._take("grpc", request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.grpc)
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()

    def env(self, protocol):
        endpoint = f"http://127.0.0.1:{self.http.server_port}" if protocol == "http/protobuf" else f"http://127.0.0.1:{self.grpc_port}"
        return {"OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}

    def _take(self, transport, request):
        with self._lock:
            self.requests[transport] += 1
            for resource_spans in request.resource_spans:
                resource = _attrs(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append({
                            "transport": transport,
                            "resource": resource,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "flags": span.flags,
                            "attributes": _attrs(span.attributes),
                            "status": (span.status.code, span.status.message),
                        })

    def wait_for(self, pred, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [s for s in self.spans if pred(s)]
            if found:
                return found[0]
            time.sleep(0.05)
        with self._lock:
            names = [(s["name"], s["trace_id"]) for s in self.spans]
        raise AssertionError(f"no span {what} within {timeout}s; received: {names}")

    def close(self):
        self.http.shutdown()
        self.grpc.stop(None)


def traceparent():
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def api_publish(server, channel, header=None):
    headers = {"X-API-Key": server.api_key, "Content-Type": "application/json"}
    if header:
        headers["traceparent"] = header
    body = json.dumps({"channel": channel, "data": {"otel": 1}}).encode()
    request = urllib.request.Request(f"{server.api_url}/publish", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


# The exporter's transport and the proxy backend's are independent; each pairing runs once.
PAIRINGS = [
    pytest.param(("http/protobuf", "http"), id="otlp-http+http-proxy"),
    pytest.param(("grpc", "grpc"), id="otlp-grpc+grpc-proxy"),
]


@contextmanager
def environment(variables):
    """The process environment with `variables` set (the server inherits it at spawn)."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module", params=PAIRINGS)
def traced(request, receiver):
    protocol, backend_kind = request.param
    with ph.running_backend(backend_kind) as backend:
        config = ph.proxy_config(backend)
        config["opentelemetry"] = {"enabled": True, "api": True}
        with environment(receiver.env(protocol)), running_server(ph.config_factory(config)) as server:
            yield protocol, backend, server


def test_http_api_span_continues_the_callers_trace(traced, receiver):
    protocol, _, server = traced
    transport = "http" if protocol == "http/protobuf" else "grpc"
    trace_id, parent_id, header = traceparent()
    channel = h.uid('otel-')
    assert "result" in api_publish(server, channel, header)
    span = receiver.wait_for(lambda s: s["trace_id"] == trace_id, f"for trace {trace_id}")
    assert span["transport"] == transport
    assert span["name"] == "POST /api/publish"
    assert span["kind"] == SERVER
    assert span["parent_span_id"] == parent_id
    assert span["flags"] & 0x3FF == 0x301, "sampled, with a remote parent"
    assert span["attributes"]["centrifugo.channel"] == channel
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["status"][0] != STATUS_ERROR
    assert span["resource"]["service.name"] == "centrifugo"
    info = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{server.api_url}/info", data=b"{}", headers={"X-API-Key": server.api_key}, method="POST"), timeout=5).read())
    assert span["resource"]["service.instance.id"] == info["result"]["nodes"][0]["uid"]


def test_an_api_error_fails_the_span_with_its_code(traced, receiver):
    _, _, server = traced
    trace_id, _, header = traceparent()
    assert api_publish(server, "", header)["error"]["code"] == 107
    span = receiver.wait_for(lambda s: s["trace_id"] == trace_id, "for the failed publish")
    assert span["status"] == (STATUS_ERROR, "107: bad request")


def test_grpc_api_span_continues_the_callers_trace(traced, receiver, grpc_api):
    _, _, server = traced
    pb2, pb2_grpc = grpc_api
    trace_id, parent_id, header = traceparent()
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb2_grpc.CentrifugoApiStub(channel)
        metadata = (("authorization", f"apikey {server.grpc_key}"), ("traceparent", header))
        stub.Info(pb2.InfoRequest(), metadata=metadata, timeout=5)
    span = receiver.wait_for(lambda s: s["trace_id"] == trace_id, "for the gRPC Info call")
    assert span["name"] == "centrifugal.centrifugo.api.CentrifugoApi/Info"
    assert span["kind"] == SERVER and span["parent_span_id"] == parent_id
    assert span["attributes"]["rpc.system.name"] == "grpc"
    assert span["attributes"]["rpc.response.status_code"] == "OK"


async def _connect_and_rpc(server, header, user):
    async with websockets.connect(server.ws_url, additional_headers={"traceparent": header}, proxy=None, open_timeout=5) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"data": {"user": user}}}))
        reply = json.loads((await asyncio.wait_for(ws.recv(), 5)).splitlines()[0])
        assert reply.get("connect", {}).get("client"), reply
        await ws.send(json.dumps({"id": 2, "rpc": {"method": "echo", "data": {"n": 1}}}))
        reply = json.loads((await asyncio.wait_for(ws.recv(), 5)).splitlines()[0])
        assert "rpc" in reply, reply


def _backend_traceparent(call):
    headers = {k.lower(): v for k, v in call["headers"].items()}
    value = headers.get("traceparent")
    assert value, f"the backend got no traceparent: {headers}"
    if isinstance(value, list):
        value = value[0]
    version, trace_id, span_id, flags = value.split("-")
    return trace_id, span_id, flags


@pytest.mark.asyncio
async def test_proxy_calls_carry_the_connections_trace_to_the_backend(traced, receiver):
    _, backend, server = traced
    trace_id, parent_id, header = traceparent()
    user = h.uid("otel-user-")
    await _connect_and_rpc(server, header, user)
    spans = {}
    for kind in ("connect", "rpc"):
        call = next(c for c in backend.calls(kind) if user in json.dumps(c["body"]))
        backend_trace, backend_parent, flags = _backend_traceparent(call)
        assert backend_trace == trace_id, f"{kind}: the backend continues the client's trace"
        assert flags == "01"
        span = receiver.wait_for(lambda s, p=backend_parent: s["span_id"] == p, f"for the {kind} proxy call")
        assert span["kind"] == CLIENT
        assert span["trace_id"] == trace_id and span["parent_span_id"] == parent_id
        assert span["attributes"]["spinwire.proxy.type"] == kind
        spans[kind] = span
    if backend.kind == "http":
        assert spans["connect"]["name"] == "POST /connect"
        assert spans["connect"]["attributes"]["http.response.status_code"] == 200
    else:
        assert spans["connect"]["name"] == "centrifugal.centrifugo.proxy.CentrifugoProxy/Connect"
        assert spans["rpc"]["attributes"]["rpc.response.status_code"] == "OK"


@pytest.mark.asyncio
async def test_a_subscribe_stream_carries_the_connections_trace(receiver):
    """A subscribe stream proxy (gRPC): its span covers the opening, and the stream's
    metadata hands the backend its traceparent."""
    with ph.running_backend("grpc") as backend:
        config = ph.stream_proxy_config(backend)
        config["opentelemetry"] = {"enabled": True}
        with environment(receiver.env("http/protobuf")), running_server(ph.config_factory(config)) as server:
            trace_id, parent_id, header = traceparent()
            user = h.uid("otel-stream-")
            channel = f"streamed:ok-{h.uid()}"
            async with websockets.connect(server.ws_url, additional_headers={"traceparent": header}, proxy=None, open_timeout=5) as ws:
                await ws.send(json.dumps({"id": 1, "connect": {"data": {"user": user}}}))
                assert "connect" in json.loads((await asyncio.wait_for(ws.recv(), 5)).splitlines()[0])
                await ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
                reply = json.loads((await asyncio.wait_for(ws.recv(), 5)).splitlines()[0])
                assert "subscribe" in reply, reply
            opened = next(c for c in backend.calls() if c["kind"] == "stream_open" and c["body"].get("channel") == channel)
            backend_trace, backend_parent, _ = _backend_traceparent(opened)
            assert backend_trace == trace_id
            span = receiver.wait_for(lambda s: s["span_id"] == backend_parent, "for the stream's opening")
            assert span["name"] == "centrifugal.centrifugo.proxy.CentrifugoProxy/SubscribeUnidirectional"
            assert span["kind"] == CLIENT and span["parent_span_id"] == parent_id
            assert span["attributes"]["spinwire.proxy.type"] == "subscribe_stream"
