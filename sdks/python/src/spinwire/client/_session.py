"""One established stream: its gRPC call, pending commands, helper tasks and how it ended.

A session lives from a successful connect reply to the end of the stream. Whatever ends it
(EOF, gRPC error, disconnect push, missing pings, subscribe timeout) calls :meth:`finish`
with the reason; the client's run loop waits on :attr:`ended`, then :meth:`close` fails
the pending commands and cancels every task that belonged to the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc.aio

from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2
from spinwire.errors import ClientDisconnectedError

log = logging.getLogger("spinwire")

ReplyHook = Callable[[client_pb2.Reply], Awaitable[None]]


@dataclass(frozen=True)
class SessionEnd:
    code: int
    reason: str
    reconnect: bool


@dataclass
class _Pending:
    future: asyncio.Future[client_pb2.Reply]
    # Runs inside the reader, before any later reply is read: subscribe results must be
    # applied (position, recovered publications) before the live publications behind them.
    on_reply: ReplyHook | None


class Session:
    def __init__(self, call: grpc.aio.StreamStreamCall, result: client_pb2.ConnectResult) -> None:
        self.call = call
        self.result = result
        self.pending: dict[int, _Pending] = {}
        self.ended: asyncio.Future[SessionEnd] = asyncio.get_running_loop().create_future()
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    async def write(self, cmd: client_pb2.Command) -> None:
        # grpc.aio allows one write in flight per call.
        async with self._write_lock:
            if self.closed or self.ended.done():
                raise ClientDisconnectedError("connection closed")
            try:
                await self.call.write(cmd)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as err:
                raise ClientDisconnectedError(f"connection lost: {err}") from err

    def expect(self, command_id: int, on_reply: ReplyHook | None) -> asyncio.Future[client_pb2.Reply]:
        future: asyncio.Future[client_pb2.Reply] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = _Pending(future, on_reply)
        return future

    async def resolve(self, reply: client_pb2.Reply) -> None:
        pending = self.pending.pop(reply.id, None)
        if pending is None:
            return  # the caller gave up (timeout); nothing waits for it any more
        if pending.on_reply is not None:
            await pending.on_reply(reply)
        if not pending.future.done():
            pending.future.set_result(reply)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run a helper task that dies with the session."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("spinwire: %s failed", task.get_name(), exc_info=task.exception())

    def finish(self, end: SessionEnd) -> None:
        """Record why the session ends; the first reason wins."""
        if not self.ended.done():
            self.ended.set_result(end)

    async def close(self) -> None:
        self.closed = True
        self.finish(SessionEnd(0, "closed", False))
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(ClientDisconnectedError("connection closed"))
                pending.future.exception()  # mark retrieved: the waiter may have timed out
        self.pending.clear()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.call.cancel()
