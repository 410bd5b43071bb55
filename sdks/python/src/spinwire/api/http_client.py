"""``HttpApiClient``: the same server API over HTTP JSON (``POST {base}/api/<method>``).

Standard library only: the blocking ``urllib`` request runs in a worker thread
(``asyncio.to_thread``) so it does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import ssl
import urllib.error
import urllib.request
from typing import TypeVar

from google.protobuf.message import Message

from spinwire.api._json import json_to_message, message_to_json
from spinwire.api._methods import DEFAULT_TIMEOUT, ApiMethods
from spinwire.errors import AuthenticationError, TimeoutError, TransportError

R = TypeVar("R", bound=Message)


class HttpApiClient(ApiMethods):
    """Async server API client over HTTP.

    ``base_url`` is the server root (``http://127.0.0.1:8000``); requests go to
    ``{base_url}/api/<method>`` with ``X-API-Key: <http_api.key>``. Errors mirror
    :class:`~spinwire.api.ApiClient`: ``ApiError`` for an API error reply,
    ``AuthenticationError`` for HTTP 401, ``TimeoutError``, ``TransportError`` (with
    ``http_status``) for any other failure.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(timeout)
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._ssl_context = ssl_context

    async def _call(self, method: str, request: Message, response_type: type[R], timeout: float) -> R:
        body = json.dumps(message_to_json(request), separators=(",", ":")).encode("utf-8")
        try:
            # urllib's own timeout is per socket operation; wait_for bounds the whole call.
            raw = await asyncio.wait_for(asyncio.to_thread(self._post, method, body, timeout), timeout)
        except TimeoutError:
            raise
        except builtins.TimeoutError:
            raise TimeoutError(f"{method}: no response within {timeout} s") from None
        try:
            obj = json.loads(raw)
        except ValueError as err:
            raise TransportError(f"{method}: response is not JSON: {raw[:200]!r}", http_status=200) from err
        return json_to_message(obj, response_type())

    def _post(self, method: str, body: bytes, timeout: float) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["X-API-Key"] = self._api_key
        req = urllib.request.Request(f"{self.base_url}/api/{method}", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            text = f"{method}: HTTP {err.code} {err.reason}"
            if err.code == 401:
                raise AuthenticationError(text, http_status=err.code) from None
            raise TransportError(text, http_status=err.code) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, builtins.TimeoutError):
                raise TimeoutError(f"{method}: {err.reason}") from None
            raise TransportError(f"{method}: {err.reason}") from None
        except OSError as err:  # socket timeout while reading, connection reset ...
            if isinstance(err, builtins.TimeoutError):
                raise TimeoutError(f"{method}: {err}") from None
            raise TransportError(f"{method}: {err}") from None

    async def close(self) -> None:
        """Nothing to release (one connection per request); kept for symmetry."""

    async def __aenter__(self) -> HttpApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
