"""``ApiClient``: the server API over gRPC (``centrifugal.centrifugo.api.CentrifugoApi``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from spinwire._proto.centrifugal.centrifugo.api import api_pb2_grpc
from spinwire.api._methods import DEFAULT_TIMEOUT, ApiMethods
from spinwire.errors import AuthenticationError, TimeoutError, TransportError

R = TypeVar("R", bound=Message)


def _rpc_name(method: str) -> str:
    # API method names are snake_case ("presence_stats"); gRPC methods are PascalCase.
    return "".join(part.capitalize() for part in method.split("_"))


def _status_error(err: grpc.aio.AioRpcError, method: str) -> Exception:
    code = err.code()
    text = f"{method}: gRPC {code.name}: {err.details() or ''}".rstrip(": ")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(text)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(text, grpc_status=code)
    return TransportError(text, grpc_status=code)


class ApiClient(ApiMethods):
    """Async server API client over gRPC.

    ``target`` is ``host:port`` of the ``grpc_api`` listener; ``api_key`` is
    ``grpc_api.key`` (sent as ``authorization: apikey <key>``). Errors: ``ApiError`` for an
    API error reply, ``AuthenticationError`` for a rejected key, ``TimeoutError`` when the
    call exceeds its ``timeout``, ``TransportError`` for any other gRPC status.
    Use as ``async with ApiClient(...) as api:`` or call :meth:`close`.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout)
        self.target = target
        self._credentials = credentials
        self._options = list(options)
        self._metadata = (("authorization", f"apikey {api_key}"),) if api_key else None
        # Created on first use: a grpc.aio channel belongs to the running event loop.
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.CentrifugoApiStub | None = None

    def _get_stub(self) -> api_pb2_grpc.CentrifugoApiStub:
        if self._stub is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, self._options)
            self._stub = api_pb2_grpc.CentrifugoApiStub(self._channel)
        return self._stub

    async def _call(self, method: str, request: Message, response_type: type[R], timeout: float) -> R:
        rpc = getattr(self._get_stub(), _rpc_name(method))
        try:
            return await rpc(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise _status_error(err, method) from err

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
