"""`grpc.compression` of a proxy: calls to a gRPC backend go gzip-compressed. A byte-counting
TCP relay sits between Spinwire and the gRPC test backend (tests/interop/backends), so the
test sees what crossed the wire: a 60 kB compressible RPC payload takes a few kilobytes with
compression on and all of it with compression off, and the backend's answer arrives intact
either way."""

import asyncio

import pytest

import interop_helpers as h
import proxy_helpers as ph
from grpc_wire_helpers import running_server


class Relay:
    """Forwards TCP connections to `target_port`, counting the bytes sent towards it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.upstream_bytes = 0
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src, dst, count):
            try:
                while data := await src.read(65536):
                    if count:
                        self.upstream_bytes += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def close(self):
        self.server.close()


@pytest.fixture(scope="module")
def grpc_backend():
    with ph.running_backend("grpc") as backend:
        yield backend


def _config(relay_port: int, compression: bool):
    proxy = {"name": "rpc", "endpoint": f"grpc://127.0.0.1:{relay_port}", "timeout": "5s", "grpc": {"compression": compression}}
    return {"proxies": [proxy], "rpc": {"without_namespace": {"proxy_enabled": True, "proxy_name": "rpc"}}}


@pytest.mark.parametrize("compression", [True, False], ids=["gzip", "plain"])
async def test_rpc_payload_crosses_the_wire_compressed_only_with_compression(grpc_backend, compression):
    relay = Relay(grpc_backend.port)
    relay_port = await relay.start()
    try:
        with running_server(ph.config_factory(_config(relay_port, compression))) as server:
            client, _ = await h.connect(server)
            try:
                payload = {"text": "spinwire " * 6_500}  # about 60 kB, very compressible
                result = await client.rpc("echo", payload)
                assert result.data == {"echo": payload}
            finally:
                await client.disconnect()
    finally:
        relay.close()
    if compression:
        assert relay.upstream_bytes < 10_000, f"{relay.upstream_bytes} bytes went to the backend"
    else:
        assert relay.upstream_bytes > 58_000, f"{relay.upstream_bytes} bytes went to the backend"
