"""The two ways to run a sans-I/O operation (:mod:`detserve.client.steps`): blocking, and asyncio.

Each driver performs the steps an operation yields with its own I/O calls (``time.sleep`` or ``asyncio.sleep``,
a blocking or an asyncio transport, a thread lock or an asyncio lock) and sends the results back in; this is the
only code that differs between :class:`~detserve.client.Detector` and :class:`~detserve.client.AsyncDetector`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .steps import Exclusive, Offload, Operation, Send, Sleep, Step, Together
from .transport import AsyncTransport, Transport

__all__ = ["BlockingDriver", "AsyncDriver"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: Exception | None = None


@dataclass(frozen=True)
class _Done:
    value: Any


def _advance(operation: Operation, outcome: _Outcome = _Outcome()) -> Step | _Done:
    """Resume ``operation`` with the last step's outcome: its next step, or _Done with its result."""
    try:
        return operation.send(outcome.value) if outcome.error is None else operation.throw(outcome.error)
    except StopIteration as stop:
        return _Done(stop.value)


class BlockingDriver:
    """Runs operations in the calling thread; thread-safe (the transport is, and Exclusive takes a lock)."""

    def __init__(self, transport: Transport | None):
        self.transport = transport  # None: a driver for operations that send nothing (tests)
        self._lock = threading.Lock()

    def run(self, operation: Operation[T]) -> T:
        step = _advance(operation)
        while not isinstance(step, _Done):
            step = _advance(operation, self._outcome(step))
        return step.value

    def _outcome(self, step: Step) -> _Outcome:
        try:
            return _Outcome(self._perform(step))
        except Exception as error:  # noqa: BLE001 - thrown into the operation, which decides
            return _Outcome(error=error)

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Send):
            return self.transport.send(step.request, step.timeout)
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, Offload):
            return step.function()
        if isinstance(step, Together):
            return [self.run(operation) for operation in step.operations]
        if isinstance(step, Exclusive):
            with self._lock:
                return self.run(step.operation)
        raise TypeError(f"not a step: {step!r}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AsyncDriver:
    """Runs operations as coroutines. The transport is opened on first use, inside the running event loop
    (grpc.aio channels belong to the loop they are made in)."""

    def __init__(self, open_transport: Callable[[], AsyncTransport]):
        self._open_transport = open_transport
        self._transport: AsyncTransport | None = None
        self._lock = asyncio.Lock()  # bound to a loop only when first contended

    async def run(self, operation: Operation[T]) -> T:
        step = _advance(operation)
        while not isinstance(step, _Done):
            step = _advance(operation, await self._outcome(step))
        return step.value

    async def _outcome(self, step: Step) -> _Outcome:
        try:
            return _Outcome(await self._perform(step))
        except Exception as error:  # noqa: BLE001 - thrown into the operation, which decides
            return _Outcome(error=error)

    async def _perform(self, step: Step) -> Any:
        if isinstance(step, Send):
            if self._transport is None:
                self._transport = self._open_transport()
            return await self._transport.send(step.request, step.timeout)
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, Offload):
            return await asyncio.to_thread(step.function)
        if isinstance(step, Together):
            return list(await asyncio.gather(*(self.run(operation) for operation in step.operations)))
        if isinstance(step, Exclusive):
            async with self._lock:
                return await self.run(step.operation)
        raise TypeError(f"not a step: {step!r}")

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
