"""The README's example program runs as documented against a real server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import GRPC_KEY, SECRET, Server
from tests.support import unique

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "publish_subscribe.py"


async def test_publish_subscribe_example(server: Server) -> None:
    channel = unique("chat:example")
    env = {
        **os.environ,
        "SPINWIRE_STREAM": server.stream_target,
        "SPINWIRE_GRPC_API": server.grpc_api_target,
        "SPINWIRE_GRPC_KEY": GRPC_KEY,
        "SPINWIRE_SECRET": SECRET,
        "SPINWIRE_CHANNEL": channel,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    assert proc.returncode == 0, text
    assert f"subscribed to {channel} (offset 0)" in text
    for n in range(3):
        assert f"received {{'text': 'hello {n}'}} at offset {n + 1}" in text
    assert "disconnected: 0 disconnect called" in text
