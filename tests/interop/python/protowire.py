"""A tiny protobuf wire-format codec for the interop tests: varints, tags, length-delimited
fields, and a decoder into field-number -> values. No schema, no generated code, no protobuf
library, so tests that use it check the server against field numbers typed from the spec
rather than against the server's own .proto files.

Only the wire types proto3 messages need here: VARINT (0), I64 (1), LEN (2), I32 (5).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

Scalar = Union[int, bytes]


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Base-128 varint. Negative numbers (int32/int64 fields) are encoded as their 64-bit
    two's complement, ten bytes long, as protoc does."""
    if value < 0:
        value += 1 << 64
    if value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def f_varint(number: int, value: int) -> bytes:
    """uint32/uint64/int32/int64/bool field. proto3 omits zero values, and so do we."""
    if not value:
        return b""
    return tag(number, VARINT) + varint(int(value))


def f_bytes(number: int, value: Union[bytes, str], keep_empty: bool = False) -> bytes:
    """bytes/string field; `keep_empty` writes a zero-length value (an empty sub-message
    that must still be present, like an empty PublishResult)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not value and not keep_empty:
        return b""
    return tag(number, LEN) + varint(len(value)) + value


def f_message(number: int, *parts: bytes) -> bytes:
    """Sub-message field built from already-encoded fields; always present, even if empty."""
    return f_bytes(number, b"".join(parts), keep_empty=True)


def f_repeated_string(number: int, values: Iterable[str]) -> bytes:
    return b"".join(f_bytes(number, v, keep_empty=True) for v in values)


def f_map_entry(number: int, key: bytes, value: bytes) -> bytes:
    """One entry of a map<K,V> field: a nested message with key = 1, value = 2."""
    return f_message(number, key, value)


def message(*parts: bytes) -> bytes:
    return b"".join(parts)


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


@dataclass
class Msg:
    """A decoded message: every field number maps to its values in wire order (repeated
    fields and duplicates keep all of them; proto3 says the last scalar wins)."""

    fields: dict[int, list[tuple[int, Scalar]]] = field(default_factory=dict)
    raw: bytes = b""

    def has(self, number: int) -> bool:
        return number in self.fields

    def numbers(self) -> list[int]:
        return sorted(self.fields)

    def _last(self, number: int, wire_type: int) -> Optional[Scalar]:
        values = self.fields.get(number)
        if not values:
            return None
        wt, value = values[-1]
        if wt != wire_type:
            raise WireError(f"field {number}: wire type {wt}, expected {wire_type}")
        return value

    def uint(self, number: int) -> int:
        """uint32/uint64/bool; 0 when absent (proto3 default)."""
        value = self._last(number, VARINT)
        return 0 if value is None else int(value)

    def int64(self, number: int) -> int:
        """int32/int64: the varint read back as 64-bit two's complement."""
        value = self.uint(number)
        return value - (1 << 64) if value >= 1 << 63 else value

    def bytes_(self, number: int) -> bytes:
        value = self._last(number, LEN)
        return b"" if value is None else bytes(value)

    def str_(self, number: int) -> str:
        return self.bytes_(number).decode("utf-8")

    def msg(self, number: int) -> Optional["Msg"]:
        """The sub-message, or None when the field is absent (proto3 keeps presence for
        message fields, unlike scalars)."""
        value = self._last(number, LEN)
        return None if value is None else decode(value)

    def msgs(self, number: int) -> list["Msg"]:
        out = []
        for wt, value in self.fields.get(number, []):
            if wt != LEN:
                raise WireError(f"field {number}: wire type {wt}, expected {LEN}")
            out.append(decode(value))
        return out

    def strs(self, number: int) -> list[str]:
        return [m.decode("utf-8") for wt, m in self.fields.get(number, []) if wt == LEN]

    def str_map(self, number: int) -> dict[str, str]:
        """map<string, string> field."""
        return {e.str_(1): e.str_(2) for e in self.msgs(number)}

    def map_(self, number: int) -> dict[bytes, "Msg"]:
        """map<string, Message> field: key bytes -> decoded value message."""
        out = {}
        for entry in self.msgs(number):
            value = entry.msg(2)
            out[entry.bytes_(1)] = value if value is not None else Msg()
        return out


def decode(buf: bytes) -> Msg:
    buf = bytes(buf)
    out = Msg(raw=buf)
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise WireError(f"field {number}: length {length} past the end")
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == I64:
            if pos + 8 > len(buf):
                raise WireError(f"field {number}: truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire_type == I32:
            if pos + 4 > len(buf):
                raise WireError(f"field {number}: truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise WireError(f"field {number}: unsupported wire type {wire_type}")
        out.fields.setdefault(number, []).append((wire_type, value))
    return out
