"""What a sans-I/O operation asks its driver to do.

An operation (``DetectorCore.detect_batch``, ``retry.retrying``, ...) is a generator: it yields steps and is sent
each step's result back, or has the step's exception thrown in (so ``try``/``except`` around a ``yield`` works as
around a call). It never does I/O itself: ``drivers.BlockingDriver`` performs the steps for :class:`Detector`,
``drivers.AsyncDriver`` for :class:`AsyncDetector`, and that is all the two classes do differently.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .wire import Request

__all__ = ["Send", "Sleep", "Offload", "Together", "Exclusive", "Step", "Operation"]

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """One request over the transport; the result is the transport's raw answer (``request.parse`` reads it)."""

    request: Request
    timeout: float | None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Offload:
    """CPU work (decoding, resizing): a worker thread under asyncio, so the event loop keeps running."""

    function: Callable[[], Any]


@dataclass(frozen=True)
class Together:
    """Operations that may run concurrently (asyncio.gather; one after another when blocking); the result
    is the list of their results."""

    operations: Sequence[Operation]


@dataclass(frozen=True)
class Exclusive:
    """An operation no other Exclusive operation of the same driver runs alongside (not re-entrant)."""

    operation: Operation


Step = Send | Sleep | Offload | Together | Exclusive
Operation = Generator[Step, Any, T]
