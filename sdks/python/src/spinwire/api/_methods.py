"""The typed server API methods, shared by the gRPC and the HTTP client.

A subclass supplies only ``_call`` (send one request, return the decoded response
message); everything else — building requests, the per-call timeout default, turning
``response.error`` into :class:`~spinwire.errors.ApiError` — lives here once.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import TypeVar

from google.protobuf.message import Message

from spinwire._payload import Payload
from spinwire._proto.centrifugal.centrifugo.api import api_pb2
from spinwire.api import requests
from spinwire.api.requests import Position, Request
from spinwire.errors import ApiError

R = TypeVar("R", bound=Message)

DEFAULT_TIMEOUT = 5.0


class ApiMethods(abc.ABC):
    """Server API methods; every one takes ``timeout`` (seconds, default: the client's)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

    @abc.abstractmethod
    async def _call(self, method: str, request: Message, response_type: type[R], timeout: float) -> R:
        """Send ``request`` to API ``method`` (snake_case name) and decode the response."""

    async def _result(self, method: str, request: Message, response_type: type[Message], timeout: float | None):
        response = await self._call(method, request, response_type, self.timeout if timeout is None else timeout)
        if response.HasField("error"):
            raise ApiError(response.error.code, response.error.message)
        return response.result

    async def publish(
        self,
        channel: str,
        data: Payload,
        *,
        skip_history: bool = False,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str = "",
        delta: bool = False,
        timeout: float | None = None,
    ) -> api_pb2.PublishResult:
        """Publish ``data`` into ``channel``; the result has the stream ``offset``/``epoch``."""
        req = requests.publish(
            channel, data, skip_history=skip_history, tags=tags, idempotency_key=idempotency_key, delta=delta
        )
        return await self._result("publish", req, api_pb2.PublishResponse, timeout)

    async def broadcast(
        self,
        channels: Iterable[str],
        data: Payload,
        *,
        skip_history: bool = False,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str = "",
        delta: bool = False,
        timeout: float | None = None,
    ) -> api_pb2.BroadcastResult:
        """Publish into several channels; ``result.responses[i]`` carries each channel's
        own ``error``/``result`` (a failed channel does not raise)."""
        req = requests.broadcast(
            channels, data, skip_history=skip_history, tags=tags, idempotency_key=idempotency_key, delta=delta
        )
        return await self._result("broadcast", req, api_pb2.BroadcastResponse, timeout)

    async def subscribe(
        self,
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
        timeout: float | None = None,
    ) -> api_pb2.SubscribeResult:
        """Subscribe the connections of ``user`` to ``channel`` from the server side."""
        req = requests.subscribe(
            user,
            channel,
            client=client,
            session=session,
            info=info,
            data=data,
            expire_at=expire_at,
            recover_since=recover_since,
            override=override,
        )
        return await self._result("subscribe", req, api_pb2.SubscribeResponse, timeout)

    async def unsubscribe(
        self, user: str, channel: str, *, client: str = "", session: str = "", timeout: float | None = None
    ) -> api_pb2.UnsubscribeResult:
        req = requests.unsubscribe(user, channel, client=client, session=session)
        return await self._result("unsubscribe", req, api_pb2.UnsubscribeResponse, timeout)

    async def disconnect(
        self,
        user: str,
        *,
        code: int = 0,
        reason: str = "",
        client: str = "",
        session: str = "",
        whitelist: Iterable[str] = (),
        timeout: float | None = None,
    ) -> api_pb2.DisconnectResult:
        """Disconnect ``user``; without ``code`` the server sends 3503 (no reconnect)."""
        req = requests.disconnect(user, code=code, reason=reason, client=client, session=session, whitelist=whitelist)
        return await self._result("disconnect", req, api_pb2.DisconnectResponse, timeout)

    async def refresh(
        self,
        user: str,
        *,
        client: str = "",
        session: str = "",
        expired: bool = False,
        expire_at: int = 0,
        info: Payload | None = None,
        timeout: float | None = None,
    ) -> api_pb2.RefreshResult:
        req = requests.refresh(user, client=client, session=session, expired=expired, expire_at=expire_at, info=info)
        return await self._result("refresh", req, api_pb2.RefreshResponse, timeout)

    async def presence(self, channel: str, *, timeout: float | None = None) -> api_pb2.PresenceResult:
        """``result.presence`` maps client id to ``ClientInfo``."""
        return await self._result("presence", requests.presence(channel), api_pb2.PresenceResponse, timeout)

    async def presence_stats(self, channel: str, *, timeout: float | None = None) -> api_pb2.PresenceStatsResult:
        req = requests.presence_stats(channel)
        return await self._result("presence_stats", req, api_pb2.PresenceStatsResponse, timeout)

    async def history(
        self,
        channel: str,
        *,
        limit: int = -1,
        since: Position | None = None,
        reverse: bool = False,
        timeout: float | None = None,
    ) -> api_pb2.HistoryResult:
        """Stored publications (all by default; ``limit=0`` for the position only)."""
        req = requests.history(channel, limit=limit, since=since, reverse=reverse)
        return await self._result("history", req, api_pb2.HistoryResponse, timeout)

    async def history_remove(self, channel: str, *, timeout: float | None = None) -> api_pb2.HistoryRemoveResult:
        req = requests.history_remove(channel)
        return await self._result("history_remove", req, api_pb2.HistoryRemoveResponse, timeout)

    async def channels(self, pattern: str = "", *, timeout: float | None = None) -> api_pb2.ChannelsResult:
        """Active channels matching the glob ``pattern`` (all when empty)."""
        return await self._result("channels", requests.channels(pattern), api_pb2.ChannelsResponse, timeout)

    async def info(self, *, timeout: float | None = None) -> api_pb2.InfoResult:
        return await self._result("info", requests.info(), api_pb2.InfoResponse, timeout)

    async def batch(
        self,
        commands: Iterable[Request | api_pb2.Command],
        *,
        parallel: bool = False,
        timeout: float | None = None,
    ) -> list[api_pb2.Reply]:
        """Run several requests in one round trip; replies keep their order and carry
        their own ``error`` (nothing is raised for a failed command)."""
        req = api_pb2.BatchRequest(
            commands=[c if isinstance(c, api_pb2.Command) else requests.command(c) for c in commands],
            parallel=parallel,
        )
        response = await self._call(
            "batch", req, api_pb2.BatchResponse, self.timeout if timeout is None else timeout
        )
        return list(response.replies)
