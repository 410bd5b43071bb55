"""The gRPC API fails closed like the HTTP API: with `grpc_api.key` empty every call is
UNAUTHENTICATED, unless `grpc_api.insecure` (a Spinwire key) opens it deliberately. Centrifugo
leaves a keyless gRPC API open; a deployment relying on that sets `insecure: true`."""

import grpc
import pytest

import grpc_wire_helpers as gw
import interop_helpers as h

PUBLISH = "/centrifugal.centrifugo.api.CentrifugoApi/Publish"


def _keyless(insecure):
    def factory(port, grpc_port, secret, api_key, grpc_key):
        config = h.python_suite_config(port, grpc_port, secret, api_key, grpc_key)
        config["grpc_api"]["key"] = ""
        if insecure:
            config["grpc_api"]["insecure"] = True
        return config

    return factory


def _publish(server, key):
    with grpc.insecure_channel(server.grpc_target) as channel:
        return gw.call_api(channel, PUBLISH, gw.publish_request("news:keyless", b'{"a":1}'), key)


def test_an_empty_key_refuses_every_call():
    with gw.running_server(_keyless(False)) as server:
        for key in ["", "anything"]:
            with pytest.raises(grpc.RpcError) as refused:
                _publish(server, key)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, key
        assert "grpc_api.key is empty" in server.log_tail(), "the refusal is explained at startup"


def test_insecure_serves_without_a_key():
    with gw.running_server(_keyless(True)) as server:
        reply = _publish(server, "")
        assert gw.api_error(reply) is None, reply
