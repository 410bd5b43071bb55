"""Publish with the server API and receive over the real-time gRPC stream.

Start Spinwire with the config from sdks/python/README.md, then:

    python examples/publish_subscribe.py

Addresses and keys come from the environment (defaults match the README config):
SPINWIRE_STREAM (127.0.0.1:11000), SPINWIRE_GRPC_API (127.0.0.1:10000),
SPINWIRE_GRPC_KEY, SPINWIRE_SECRET, SPINWIRE_CHANNEL (chat:index).
"""

from __future__ import annotations

import asyncio
import os

from spinwire import ApiClient, Client, connection_token

STREAM = os.environ.get("SPINWIRE_STREAM", "127.0.0.1:11000")
GRPC_API = os.environ.get("SPINWIRE_GRPC_API", "127.0.0.1:10000")
GRPC_KEY = os.environ.get("SPINWIRE_GRPC_KEY", "my-grpc-api-key")
SECRET = os.environ.get("SPINWIRE_SECRET", "my-token-secret")
CHANNEL = os.environ.get("SPINWIRE_CHANNEL", "chat:index")


async def main() -> None:
    # Your backend mints the connection token; here the example does it itself.
    token = connection_token(SECRET, "user-42", ttl=3600, info={"name": "Example"})

    async with Client(STREAM, token=token) as client:
        client.on("disconnected", lambda ctx: print(f"disconnected: {ctx.code} {ctx.reason}"))
        sub = client.new_subscription(CHANNEL)
        sub.on("subscribed", lambda ctx: print(f"subscribed to {ctx.channel} (offset {ctx.offset})"))
        publications = sub.publications()
        await sub.subscribe()

        async with ApiClient(GRPC_API, api_key=GRPC_KEY) as api:
            for n in range(3):
                result = await api.publish(CHANNEL, {"text": f"hello {n}"})
                print(f"published at offset {result.offset}")

        received = 0
        async for pub in publications:
            print(f"received {pub.json()} at offset {pub.offset}")
            received += 1
            if received == 3:
                break


if __name__ == "__main__":
    asyncio.run(main())
