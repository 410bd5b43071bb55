"""TLS on the gRPC listeners (`grpc_api.tls`, `uni_grpc.tls`; `grpc_stream` on the shared port
uses `uni_grpc.tls`), driven with grpcio's own TLS stack.

A throwaway CA (openssl CLI) signs the server certificate (IP 127.0.0.1) and a client
certificate. The API listener demands client certificates from that CA (`client_ca_pem`,
mutual TLS); the client-facing one only serves TLS. Covered: API calls and both streams
work over TLS, plaintext and certificate-less clients are refused, and a key that does not
match its certificate stops startup naming the key.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import grpc
import grpc.aio
import pytest

import grpc_wire_helpers as gw
import interop_helpers as h

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not on PATH")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=20)


def _extensions(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


class Pki:
    """A CA and two leaves it signed: the server's (serverAuth, IP 127.0.0.1) and a client's
    (clientAuth). Paths to PEM files; `read(name)` gives the bytes."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="spinwire-grpc-tls-"))
        d = self.dir
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=spinwire test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        )
        self._leaf("server", "/CN=127.0.0.1", ["extendedKeyUsage = serverAuth", "subjectAltName = IP:127.0.0.1"])
        self._leaf("client", "/CN=test backend", ["extendedKeyUsage = clientAuth"])
        # A second key, to pair with the server certificate in the mismatch test.
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(d / "other.key"))

    def _leaf(self, name: str, subject: str, extensions: list[str]) -> None:
        d = self.dir
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subject,
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
        )
        ext = _extensions(
            d / f"{name}.ext",
            ["basicConstraints = critical, CA:FALSE", "keyUsage = critical, digitalSignature", *extensions],
        )
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(d / f"{name}.pem"),
        )

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture(scope="module")
def tls_server(pki):
    def config(port, grpc_port, secret, api_key, grpc_key):
        cfg = gw.grpc_listeners_config(port, grpc_port, secret, api_key, grpc_key)
        server_tls = {"enabled": True, "cert_pem": pki.path("server.pem"), "key_pem": pki.path("server.key")}
        # PEM text inline for the CA, file paths for the rest: both sources are accepted.
        cfg["grpc_api"]["tls"] = {**server_tls, "client_ca_pem": pki.read("ca.pem").decode()}
        cfg["uni_grpc"]["tls"] = server_tls
        return cfg

    with gw.running_server(config) as srv:
        yield srv


def _mutual(pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read("client.key"),
        certificate_chain=pki.read("client.pem"),
    )


def _server_only(pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"))


def test_api_over_mutual_tls_publishes_and_reads_history(tls_server, pki):
    channel_name = f"chat:{h.uid('tls-')}"
    with grpc.secure_channel(tls_server.grpc_target, _mutual(pki)) as ch:
        reply = gw.call_api(ch, gw.PUBLISH, gw.publish_request(channel_name, b'{"over":"tls"}'), tls_server.grpc_key)
        assert gw.api_error(reply) is None, reply.raw
        history = gw.call_api(ch, gw.HISTORY, gw.history_request(channel_name, 10), tls_server.grpc_key)
        result = history.msg(gw.ApiResponse.RESULT)
        assert result is not None, history.raw
        publications = result.msgs(gw.HistoryResult.PUBLICATIONS)
        assert [p.bytes_(gw.ApiPublication.DATA) for p in publications] == [b'{"over":"tls"}']


def test_api_refuses_a_client_without_a_certificate(tls_server, pki):
    with grpc.secure_channel(tls_server.grpc_target, _server_only(pki)) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            gw.call_api(ch, gw.PUBLISH, gw.publish_request("chat:x", b"{}"), tls_server.grpc_key, timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value


def test_api_refuses_plaintext(tls_server):
    with grpc.insecure_channel(tls_server.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            gw.call_api(ch, gw.PUBLISH, gw.publish_request("chat:x", b"{}"), tls_server.grpc_key, timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
    tls_server.assert_alive("after a plaintext client on the TLS port")


async def test_uni_and_bidirectional_streams_over_tls(tls_server, pki):
    channel_name = f"chat:{h.uid('tls-stream-')}"
    token = tls_server.token(h.uid("tls-user-"))
    creds = _server_only(pki)
    async with grpc.aio.secure_channel(gw.stream_target(tls_server), creds) as ch:
        bidi = gw.BidiClient(ch, "bidi over TLS")
        await bidi.connect(token)
        await bidi.subscribe(channel_name)
        uni = gw.UniClient(ch, gw.connect_request(tls_server.token(h.uid("tls-uni-"), channels=[channel_name])))
        await uni.next_push(lambda push: push.has(gw.Push.CONNECT))
        async with grpc.aio.secure_channel(tls_server.grpc_target, _mutual(pki)) as api:
            await gw.publish_ok(api, tls_server, channel_name, b'{"n":1}')
        for client in (bidi, uni):
            push = await client.next_push(gw.is_pub(channel_name))
            assert push.msg(gw.Push.PUB).bytes_(gw.Publication.DATA) == b'{"n":1}'
            client.close()


def _startup_refusal(tmp_path, section: str, tls: dict) -> str:
    """Starts the server with `tls` as `section`'s TLS; returns its output, asserting it exited."""
    cfg = gw.grpc_listeners_config(h.free_port(), h.free_port(), "s", "k", "g")
    cfg[section]["tls"] = tls
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    res = subprocess.run([h.SPINWIRE_BIN, "--config", str(path)], capture_output=True, text=True, timeout=20)
    assert res.returncode != 0, f"started with {section}.tls = {tls}"
    return res.stderr + res.stdout


def test_a_key_that_does_not_match_its_certificate_stops_startup(pki, tmp_path):
    tls = {"enabled": True, "cert_pem": pki.path("server.pem"), "key_pem": pki.path("other.key")}
    assert "grpc_api.tls" in _startup_refusal(tmp_path, "grpc_api", tls)


def test_grpc_stream_tls_on_a_port_shared_with_plain_uni_grpc_is_refused(pki, tmp_path):
    tls = {"enabled": True, "cert_pem": pki.path("server.pem"), "key_pem": pki.path("server.key")}
    assert "grpc_stream.tls" in _startup_refusal(tmp_path, "grpc_stream", tls)
