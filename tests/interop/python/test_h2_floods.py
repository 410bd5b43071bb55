"""S8: HTTP/2 floods against the gRPC API listener, from a raw HTTP/2 client (python `h2` and
`hyperframe`): rapid reset, a CONTINUATION flood, empty DATA frames and more streams than the
limit. For each: the server ends the abuse (GOAWAY, RST_STREAM or a closed connection), its CPU
stays bounded, and a healthy gRPC client calling at the same time keeps its latency."""

import os
import socket
import statistics
import threading
import time

import grpc
import h2.config
import h2.connection
import h2.events
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame

import grpc_wire_helpers as gw
import interop_helpers as h

PUBLISH = "/centrifugal.centrifugo.api.CentrifugoApi/Publish"
# Generous for a noisy 2-core VM: the point is "not starved", not a benchmark.
HEALTHY_P99_MS = 500
FLOOD_CPU_SECONDS = 3.0


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Healthy:
    """Calls Publish every 20 ms on its own connection, recording latencies and failures."""

    def __init__(self, server):
        self.server, self.latencies, self.failures = server, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    gw.call_api(channel, PUBLISH, gw.publish_request("news:healthy", b'{"a":1}'), self.server.grpc_key)
                    self.latencies.append((time.monotonic() - started) * 1000)
                except grpc.RpcError as error:
                    self.failures.append(error.code())
                time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)

    def p99(self):
        return statistics.quantiles(self.latencies, n=100)[98] if len(self.latencies) >= 10 else 0.0


def _connection(server):
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _headers(server):
    return [
        (":method", "POST"), (":scheme", "http"), (":path", PUBLISH),
        (":authority", f"127.0.0.1:{server.grpc_port}"), ("content-type", "application/grpc"),
        ("te", "trailers"), ("authorization", f"apikey {server.grpc_key}"),
    ]


def _receive(sock, seconds):
    """What the server sends for a while, and whether it closed the connection."""
    raw, closed = b"", False
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            closed = True
            break
        if not data:
            closed = True
            break
        raw += data
    return raw, closed


def _drain(sock, conn, seconds):
    """The server's answer as h2 events, and whether it closed."""
    raw, closed = _receive(sock, seconds)
    try:
        events = conn.receive_data(raw)
    except Exception:  # the server's frames after our own abuse may confuse the client state
        events = []
    return events, closed


def _rapid_reset(server):
    sock, conn = _connection(server)
    try:
        for _ in range(5000):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, _headers(server))
            conn.reset_stream(stream)
            sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass  # the server gave up on us first
    return _drain(sock, conn, 2)


def _continuation_flood(server):
    sock, conn = _connection(server)
    encoded = conn.encoder.encode(_headers(server))
    frames = [HeadersFrame(1, data=encoded[:8]).serialize()]  # no END_HEADERS
    junk = ContinuationFrame(1, data=b"\x00" * 1024).serialize()
    try:
        for _ in range(20000):
            frames.append(junk)
            if len(frames) >= 256:
                sock.sendall(b"".join(frames))
                frames = []
    except OSError:
        pass
    return _drain(sock, conn, 2)


def _empty_data(server):
    sock, conn = _connection(server)
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, _headers(server))
    sock.sendall(conn.data_to_send())
    empty = DataFrame(stream, data=b"").serialize()
    try:
        for _ in range(200):
            sock.sendall(empty * 500)
    except OSError:
        pass
    return _drain(sock, conn, 2)


def _too_many_streams(server):
    sock, conn = _connection(server)
    _drain(sock, conn, 0.5)  # the server's SETTINGS (its stream limit, which we ignore on purpose)
    # Raw frames: the h2 client library would refuse to exceed the server's limit itself.
    frames = [
        HeadersFrame(stream, data=conn.encoder.encode(_headers(server)), flags=["END_HEADERS"]).serialize()
        for stream in range(1, 1200, 2)
    ]
    try:
        sock.sendall(b"".join(frames))
    except OSError:
        pass
    raw, closed = _receive(sock, 2)
    # RST_STREAM (type 3) or GOAWAY (type 7) frames in what the server sent back.
    refused = any(kind in (3, 7) for kind in _frame_types(raw))
    return (["refused by RST_STREAM or GOAWAY"] if refused else []), closed


def _frame_types(raw):
    at = 0
    while at + 9 <= len(raw):
        length = int.from_bytes(raw[at:at + 3], "big")
        yield raw[at + 3]
        at += 9 + length


def _ended(events, closed):
    cut_off = (h2.events.ConnectionTerminated, h2.events.StreamReset, str)
    return closed or any(isinstance(e, cut_off) for e in events)


def test_h2_floods_are_cut_off_with_bounded_cpu_and_healthy_clients_served():
    with gw.running_server(h.python_suite_config) as server:
        pid = server.proc.pid
        report = []
        for name, flood in [("rapid reset", _rapid_reset), ("CONTINUATION flood", _continuation_flood),
                            ("empty DATA frames", _empty_data), ("streams over the limit", _too_many_streams)]:
            with _Healthy(server) as healthy:
                cpu_before = _cpu_seconds(pid)
                events, closed = flood(server)
                cpu = _cpu_seconds(pid) - cpu_before
                time.sleep(0.3)
            assert _ended(events, closed), f"{name}: the server let it run ({[type(e).__name__ for e in events][:10]})"
            assert cpu < FLOOD_CPU_SECONDS, f"{name}: {cpu:.2f} s of server CPU"
            assert not healthy.failures, f"{name}: the healthy client failed {healthy.failures[:3]}"
            assert healthy.p99() < HEALTHY_P99_MS, f"{name}: healthy p99 {healthy.p99():.0f} ms"
            report.append(f"{name}: server CPU {cpu:.2f} s, healthy p99 {healthy.p99():.1f} ms over {len(healthy.latencies)} calls")
        print("\n# S8 " + "\n# S8 ".join(report))
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = gw.call_api(channel, PUBLISH, gw.publish_request("news:after", b'{"a":1}'), server.grpc_key)
            assert gw.api_error(reply) is None, "still serving after the floods"
