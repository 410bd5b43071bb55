"""Test helpers: recording SDK events and waiting for them with a deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from spinwire.client._events import Emitter


def unique(prefix: str) -> str:
    """A name no other test uses (users and channels must not collide across tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Recorder:
    """Records ``(event, ctx)`` pairs from emitters and lets a test await a condition."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Condition()

    def attach(self, emitter: Emitter, *events: str) -> Recorder:
        for event in events or emitter.EVENTS:
            emitter.on(event, self._handler(event))
        return self

    def _handler(self, event: str) -> Callable[[Any], Any]:
        async def record(ctx: Any) -> None:
            async with self._changed:
                self.events.append((event, ctx))
                self._changed.notify_all()

        return record

    def of(self, event: str) -> list[Any]:
        return [ctx for name, ctx in self.events if name == event]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; events: {[n for n, _ in self.events]}"
                ) from None

    async def wait_count(self, event: str, count: int, timeout: float = 5.0) -> list[Any]:
        await self.wait(lambda: len(self.of(event)) >= count, timeout, f"{count} x {event}")
        return self.of(event)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
