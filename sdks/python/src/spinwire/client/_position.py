"""Stream positions as the user may give them: a ``StreamPosition`` or ``(offset, epoch)``."""

from __future__ import annotations

from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2

Position = client_pb2.StreamPosition | tuple[int, str]


def split_position(position: Position) -> tuple[int, str]:
    """``(offset, epoch)`` of a position."""
    if isinstance(position, client_pb2.StreamPosition):
        return position.offset, position.epoch
    offset, epoch = position
    return offset, epoch
