"""Event handler registration and the single ordered dispatch queue.

Every event of a client and its subscriptions goes through one bounded queue consumed by
one task, so handlers see events in protocol order and a slow handler never runs
concurrently with the next one. When the queue is full the stream reader waits
(back-pressure) instead of dropping events or growing without bound.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("spinwire")

Handler = Callable[[Any], Any]
"""An event handler: a plain function or a coroutine function taking the event context."""


class Emitter:
    """Handler registry; subclasses list their event names in ``EVENTS``."""

    EVENTS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {name: [] for name in self.EVENTS}

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for ``event``; without ``handler`` acts as a decorator."""
        if event not in self._handlers:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(self.EVENTS)}")
        if handler is None:
            def decorator(fn: Handler) -> Handler:
                self._handlers[event].append(fn)
                return fn
            return decorator
        self._handlers[event].append(handler)
        return handler

    def off(self, event: str, handler: Handler) -> None:
        self._handlers[event].remove(handler)

    async def _deliver(self, event: str, ctx: Any) -> None:
        for handler in list(self._handlers[event]):
            try:
                result = handler(ctx)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a broken handler must not stop event delivery
                log.exception("spinwire: %s handler failed", event)


class Dispatcher:
    """One bounded queue and the task that delivers its events in order."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[tuple[Emitter, str, Any]] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None
        self._stop_requested = False

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spinwire-events")

    async def emit(self, emitter: Emitter, event: str, ctx: Any) -> None:
        await self._queue.put((emitter, event, ctx))

    def in_dispatcher(self) -> bool:
        return self._task is not None and asyncio.current_task() is self._task

    async def _run(self) -> None:
        while not self._stop_requested:
            emitter, event, ctx = await self._queue.get()
            try:
                await emitter._deliver(event, ctx)
            finally:
                self._queue.task_done()

    async def stop(self, drain_timeout: float) -> None:
        """Deliver what is queued (bounded by ``drain_timeout``), then stop the task."""
        if self._task is None:
            return
        if not self.in_dispatcher():
            try:
                await asyncio.wait_for(self._queue.join(), drain_timeout)
            except TimeoutError:
                log.warning("spinwire: dropped %d undelivered events on close", self._queue.qsize())
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        else:
            # Called from a handler: the task cannot wait for itself (nor be cancelled under
            # the caller's feet); it ends once this handler returns.
            self._stop_requested = True
        self._task = None
