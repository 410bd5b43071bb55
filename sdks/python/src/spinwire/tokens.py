"""Minting connection and subscription JWTs (HMAC: HS256/HS384/HS512), standard library only.

Claims follow Centrifugo v6: ``sub`` (user), ``exp``, ``iat``, ``info``, ``channels``,
``subs``, ``meta``, ``expire_at`` for connection tokens; ``sub``, ``channel``, ``client``,
``info``, ``data``, ``override`` for subscription tokens. Tokens are compact JSON,
base64url without padding, as RFC 7515 requires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}

Duration = float | int | timedelta


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_hs(claims: Mapping[str, Any], secret: str | bytes, algorithm: str = "HS256") -> str:
    """Sign ``claims`` as a JWT with an HMAC ``algorithm`` (HS256, HS384 or HS512)."""
    digest = _HASHES.get(algorithm)
    if digest is None:
        raise ValueError(f"unsupported algorithm {algorithm!r}; use one of {sorted(_HASHES)}")
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    header = _compact_json({"alg": algorithm, "typ": "JWT"})
    signing_input = _b64url(header) + "." + _b64url(_compact_json(dict(claims)))
    signature = hmac.new(key, signing_input.encode("ascii"), digest).digest()
    return signing_input + "." + _b64url(signature)


def _times(now: int, ttl: Duration | None, exp: int | None) -> dict[str, int]:
    if ttl is not None and exp is not None:
        raise ValueError("give ttl or exp, not both")
    claims = {"iat": now}
    if ttl is not None:
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        claims["exp"] = now + int(seconds)
    elif exp is not None:
        claims["exp"] = int(exp)
    return claims


def connection_token(
    secret: str | bytes,
    user: str,
    *,
    ttl: Duration | None = None,
    exp: int | None = None,
    info: Any = None,
    channels: Iterable[str] | None = None,
    subs: Mapping[str, Mapping[str, Any]] | None = None,
    meta: Any = None,
    expire_at: int | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A connection JWT for ``user``.

    ``ttl`` (seconds or timedelta) or an absolute ``exp`` (unix seconds) set the expiry;
    neither means the token never expires. ``channels`` / ``subs`` are server-side
    subscriptions (``subs`` maps channel to ``{"info", "data", "override"}`` options).
    """
    claims: dict[str, Any] = {"sub": user, **_times(int(time.time()), ttl, exp)}
    if info is not None:
        claims["info"] = info
    if channels is not None:
        claims["channels"] = list(channels)
    if subs is not None:
        claims["subs"] = {ch: dict(opts) for ch, opts in subs.items()}
    if meta is not None:
        claims["meta"] = meta
    if expire_at is not None:
        claims["expire_at"] = expire_at
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return encode_hs(claims, secret, algorithm)


def subscription_token(
    secret: str | bytes,
    user: str,
    channel: str,
    *,
    ttl: Duration | None = None,
    exp: int | None = None,
    info: Any = None,
    data: Any = None,
    client: str | None = None,
    override: Mapping[str, bool] | None = None,
    expire_at: int | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A subscription JWT granting ``user`` access to ``channel`` (required for ``$`` channels).

    ``override`` maps option names (``presence``, ``join_leave``, ``force_recovery`` ...)
    to booleans; they are wrapped as ``{"value": bool}`` as the server expects.
    """
    claims: dict[str, Any] = {"sub": user, "channel": channel, **_times(int(time.time()), ttl, exp)}
    if info is not None:
        claims["info"] = info
    if data is not None:
        claims["data"] = data
    if client is not None:
        claims["client"] = client
    if override is not None:
        claims["override"] = {name: {"value": bool(v)} for name, v in override.items()}
    if expire_at is not None:
        claims["expire_at"] = expire_at
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return encode_hs(claims, secret, algorithm)
