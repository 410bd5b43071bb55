"""Builders for server API request messages from plain Python arguments.

Both API clients use these, and they are public so that a :meth:`batch` can be assembled
from the same calls: ``await api.batch([requests.publish("chat:a", {"x": 1}),
requests.disconnect("42")])``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spinwire._payload import Payload, encode_payload
from spinwire._proto.centrifugal.centrifugo.api import api_pb2

Position = api_pb2.StreamPosition | tuple[int, str]
"""A stream position: a ``StreamPosition`` message or ``(offset, epoch)``."""

Request = (
    api_pb2.PublishRequest
    | api_pb2.BroadcastRequest
    | api_pb2.SubscribeRequest
    | api_pb2.UnsubscribeRequest
    | api_pb2.DisconnectRequest
    | api_pb2.PresenceRequest
    | api_pb2.PresenceStatsRequest
    | api_pb2.HistoryRequest
    | api_pb2.HistoryRemoveRequest
    | api_pb2.InfoRequest
    | api_pb2.RefreshRequest
    | api_pb2.ChannelsRequest
)


def _position(since: Position) -> api_pb2.StreamPosition:
    if isinstance(since, api_pb2.StreamPosition):
        return since
    offset, epoch = since
    return api_pb2.StreamPosition(offset=offset, epoch=epoch)


def publish(
    channel: str,
    data: Payload,
    *,
    skip_history: bool = False,
    tags: Mapping[str, str] | None = None,
    idempotency_key: str = "",
    delta: bool = False,
) -> api_pb2.PublishRequest:
    return api_pb2.PublishRequest(
        channel=channel,
        data=encode_payload(data),
        skip_history=skip_history,
        tags=dict(tags or {}),
        idempotency_key=idempotency_key,
        delta=delta,
    )


def broadcast(
    channels: Iterable[str],
    data: Payload,
    *,
    skip_history: bool = False,
    tags: Mapping[str, str] | None = None,
    idempotency_key: str = "",
    delta: bool = False,
) -> api_pb2.BroadcastRequest:
    return api_pb2.BroadcastRequest(
        channels=list(channels),
        data=encode_payload(data),
        skip_history=skip_history,
        tags=dict(tags or {}),
        idempotency_key=idempotency_key,
        delta=delta,
    )


def subscribe(
    user: str,
    channel: str,
    *,
    client: str = "",
    session: str = "",
    info: Payload | None = None,
    data: Payload | None = None,
    expire_at: int = 0,
    recover_since: Position | None = None,
    override: Mapping[str, bool] | None = None,
) -> api_pb2.SubscribeRequest:
    """``override`` maps option names (``presence``, ``join_leave``, ``force_recovery``,
    ``force_positioning``, ``force_push_join_leave``) to their forced value."""
    req = api_pb2.SubscribeRequest(
        user=user, channel=channel, client=client, session=session, expire_at=expire_at
    )
    if info is not None:
        req.info = encode_payload(info)
    if data is not None:
        req.data = encode_payload(data)
    if recover_since is not None:
        req.recover_since.CopyFrom(_position(recover_since))
    for name, value in (override or {}).items():
        getattr(req.override, name).value = value
    return req


def unsubscribe(user: str, channel: str, *, client: str = "", session: str = "") -> api_pb2.UnsubscribeRequest:
    return api_pb2.UnsubscribeRequest(user=user, channel=channel, client=client, session=session)


def disconnect(
    user: str,
    *,
    code: int = 0,
    reason: str = "",
    client: str = "",
    session: str = "",
    whitelist: Iterable[str] = (),
) -> api_pb2.DisconnectRequest:
    """Without ``code`` the server uses 3503 "force disconnect" (terminal)."""
    req = api_pb2.DisconnectRequest(user=user, client=client, session=session, whitelist=list(whitelist))
    if code:
        req.disconnect.code = code
        req.disconnect.reason = reason
    return req


def refresh(
    user: str,
    *,
    client: str = "",
    session: str = "",
    expired: bool = False,
    expire_at: int = 0,
    info: Payload | None = None,
) -> api_pb2.RefreshRequest:
    req = api_pb2.RefreshRequest(user=user, client=client, session=session, expired=expired, expire_at=expire_at)
    if info is not None:
        req.info = encode_payload(info)
    return req


def presence(channel: str) -> api_pb2.PresenceRequest:
    return api_pb2.PresenceRequest(channel=channel)


def presence_stats(channel: str) -> api_pb2.PresenceStatsRequest:
    return api_pb2.PresenceStatsRequest(channel=channel)


def history(
    channel: str, *, limit: int = -1, since: Position | None = None, reverse: bool = False
) -> api_pb2.HistoryRequest:
    """``limit``: -1 (the default) returns every stored publication, 0 only the position."""
    req = api_pb2.HistoryRequest(channel=channel, limit=limit, reverse=reverse)
    if since is not None:
        req.since.CopyFrom(_position(since))
    return req


def history_remove(channel: str) -> api_pb2.HistoryRemoveRequest:
    return api_pb2.HistoryRemoveRequest(channel=channel)


def channels(pattern: str = "") -> api_pb2.ChannelsRequest:
    return api_pb2.ChannelsRequest(pattern=pattern)


def info() -> api_pb2.InfoRequest:
    return api_pb2.InfoRequest()


# Command field name for each request type, read from the descriptor so it cannot drift.
_COMMAND_FIELD = {
    f.message_type.full_name: f.name for f in api_pb2.Command.DESCRIPTOR.fields if f.message_type is not None
}


def command(request: Request) -> api_pb2.Command:
    """Wrap one request message into a batch ``Command``."""
    name = _COMMAND_FIELD.get(request.DESCRIPTOR.full_name)
    if name is None:
        raise TypeError(f"{type(request).__name__} cannot be part of a batch")
    cmd = api_pb2.Command()
    getattr(cmd, name).CopyFrom(request)
    return cmd
