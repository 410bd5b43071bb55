"""Protobuf messages <-> Centrifugo's JSON, for the HTTP server API.

Centrifugo's JSON differs from protobuf's canonical JSON mapping in ways that matter here:
keys are the proto field names, 64-bit integers are JSON numbers, and ``bytes`` fields
(``data``, ``info``, ``conn_info`` ...) hold *embedded raw JSON* rather than base64. Binary
payloads go in the ``b64<name>`` companion field where the message has one. So instead of
``google.protobuf.json_format`` this walks the descriptors itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_INT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def message_to_json(msg: Message) -> dict[str, Any]:
    """The JSON object Centrifugo expects for ``msg`` (unset fields omitted)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _single_to_json(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_single_to_json(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_BYTES:
            try:
                out[field.name] = json.loads(value.decode("utf-8"))
            except ValueError:
                companion = "b64" + field.name
                if companion not in msg.DESCRIPTOR.fields_by_name:
                    raise ValueError(f"{field.full_name} must be JSON over the HTTP API") from None
                out[companion] = base64.b64encode(value).decode("ascii")
        else:
            out[field.name] = _single_to_json(field, value)
    return out


def _single_to_json(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return json.loads(value.decode("utf-8"))
    return value


def json_to_message(obj: dict[str, Any], msg: M) -> M:
    """Fill ``msg`` from a Centrifugo JSON object; unknown keys are ignored."""
    for key, value in obj.items():
        field = msg.DESCRIPTOR.fields_by_name.get(key)
        if field is None or value is None:
            continue  # newer server fields, or explicit nulls
        target = getattr(msg, key)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.message_type is not None:
                    json_to_message(v, target[k])
                else:
                    target[k] = _scalar_from_json(value_field, v)
        elif field.is_repeated:
            for item in value:
                if field.message_type is not None:
                    json_to_message(item, target.add())
                else:
                    target.append(_scalar_from_json(field, item))
        elif field.message_type is not None:
            target.SetInParent()  # an empty object still marks the field as present
            json_to_message(value, target)
        else:
            setattr(msg, key, _scalar_from_json(field, value))
    return msg


def _scalar_from_json(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if field.type in _INT_TYPES:
        return int(value)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(value)
    return value
