"""Turning user payloads into wire bytes and back.

Payloads (``data``, ``info``) are opaque bytes on gRPC and raw JSON on JSON transports.
The SDK accepts ``bytes`` as the finished payload and anything else as a value to be
encoded as compact JSON, so ``{"a": 1}``, ``[1, 2]``, ``"text"`` and ``42`` all work.
"""

from __future__ import annotations

import json
from typing import Any

Payload = Any
"""``bytes`` (sent verbatim) or any JSON-serialisable value (encoded as compact JSON)."""


def encode_payload(value: Payload) -> bytes:
    """Wire bytes for a user payload."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_json(data: bytes) -> Any:
    """The JSON value carried by payload bytes (raises ``ValueError`` when not JSON)."""
    return json.loads(data.decode("utf-8"))
