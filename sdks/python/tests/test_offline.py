"""Unit tests that need no server: the JSON bridge, payload encoding, backoff, codes."""

from __future__ import annotations

import pytest

from spinwire._payload import encode_payload
from spinwire._proto.centrifugal.centrifugo.api import api_pb2
from spinwire.api import requests
from spinwire.api._json import json_to_message, message_to_json
from spinwire.client import codes
from spinwire.client._backoff import Backoff


def test_payloads() -> None:
    assert encode_payload({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert encode_payload("text") == b'"text"'
    assert encode_payload(b"\x00raw") == b"\x00raw"
    assert encode_payload(None) == b"null"


def test_request_json_embeds_raw_json_and_numbers() -> None:
    req = requests.history("chat:a", limit=5, since=(2**63 + 1, "ep"))
    assert message_to_json(req) == {"channel": "chat:a", "limit": 5, "since": {"offset": 2**63 + 1, "epoch": "ep"}}
    pub = requests.publish("chat:a", {"x": 1}, tags={"k": "v"})
    assert message_to_json(pub) == {"channel": "chat:a", "data": {"x": 1}, "tags": {"k": "v"}}


def test_binary_payload_moves_to_b64_companion() -> None:
    assert message_to_json(requests.publish("c", b"\xff\x00")) == {"channel": "c", "b64data": "/wA="}
    with pytest.raises(ValueError):
        message_to_json(api_pb2.RPCResult(data=b"\xff"))  # no b64 companion field


def test_response_json_to_message() -> None:
    obj = {
        "result": {
            "publications": [{"data": {"t": "hi"}, "offset": 3, "info": {"user": "u", "client": "c"}}],
            "epoch": "E",
            "offset": 3,
            "future_field": 1,
        }
    }
    resp = json_to_message(obj, api_pb2.HistoryResponse())
    assert not resp.HasField("error")
    assert resp.result.publications[0].data == b'{"t":"hi"}'
    assert resp.result.publications[0].info.user == "u"
    assert (resp.result.epoch, resp.result.offset) == ("E", 3)
    empty = json_to_message({"result": {}}, api_pb2.PublishResponse())
    assert empty.HasField("result") and not empty.HasField("error")
    err = json_to_message({"error": {"code": 102, "message": "unknown channel"}}, api_pb2.PublishResponse())
    assert (err.error.code, err.error.message) == (102, "unknown channel")


def test_batch_command_wrapping() -> None:
    cmd = requests.command(requests.disconnect("u", code=4001, reason="r"))
    assert cmd.disconnect.user == "u" and cmd.disconnect.disconnect.code == 4001
    with pytest.raises(TypeError):
        requests.command(api_pb2.PublishResult())  # type: ignore[arg-type]


def test_backoff_grows_within_bounds_and_resets() -> None:
    backoff = Backoff(0.2, 2.0)
    delays = [backoff.next() for _ in range(12)]
    assert delays[0] == pytest.approx(0.2)
    assert all(0.2 <= d <= 2.0 for d in delays)
    backoff.reset()
    assert backoff.next() == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [(3001, True), (3012, True), (4001, True), (4499, True), (3500, False), (3999, False), (4501, False), (5000, True)],
)
def test_disconnect_code_ranges(code: int, reconnect: bool) -> None:
    assert codes.reconnects(code) is reconnect


def test_unsubscribe_code_ranges() -> None:
    assert codes.resubscribes(2500) and not codes.resubscribes(2000)
