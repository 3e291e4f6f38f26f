"""Server-side batching with TF Serving's BatchingParameters semantics.

The scheduler keeps one queue per (model version, signature, input shapes) and ``num_batch_threads`` threads that
run batches from all queues. As in TF Serving's shared batch scheduler:

- a request (task) joins the queue's open batch; a batch is closed when the next task would not fit
  (``max_batch_size``, or ``max_execution_batch_size`` with ``enable_large_batch_splitting``);
- a batch runs once closed, or once ``batch_timeout_micros`` have passed since its first task, whichever comes
  first; while every batch thread is busy the open batch keeps filling, which is where the throughput comes from;
- a queue holds at most ``max_enqueued_batches`` batches (the open one included); a task that needs one more is
  rejected with UNAVAILABLE "The batch scheduling queue to which this task was submitted is full", which is what
  TF Serving answers (HTTP 503), so clients back off or retry on another replica;
- a task larger than ``max_batch_size`` is rejected with INVALID_ARGUMENT, unless large-batch splitting is on:
  then it is split across batches of at most ``max_execution_batch_size`` and reassembled;
- a batch is padded up to the next ``allowed_batch_sizes`` entry with copies of its last task's first row, and
  the padding is dropped from the outputs.

Two deliberate differences from TF Serving, both so one client's request cannot fail another's:
requests whose tensors differ beyond the batch dimension go to different queues (TF Serving merges them and,
with ``pad_variable_length_inputs: false``, fails the whole batch); and when a merged batch fails with
INVALID_ARGUMENT (say, one corrupt JPEG), its tasks are re-run one by one so only the bad request fails.
With ``pad_variable_length_inputs: true`` differently shaped requests do share a queue and are zero-padded to
the largest shape in the batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from detserve.serving.config import BatchingOptions
from detserve.serving.errors import (
    Code,
    ServingError,
    failed_precondition,
    from_exception,
    invalid_argument,
    unavailable,
)
from detserve.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    size: int
    future: concurrent.futures.Future
    enqueued: float


@dataclass
class _Batch:
    created: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0

    def add(self, task: _Task) -> None:
        self.tasks.append(task)
        self.size += task.size


@dataclass
class _Queue:
    key: Hashable
    run: RunFn
    batches: deque = field(default_factory=deque)


def shape_key(inputs: Mapping[str, np.ndarray], pad_variable_length_inputs: bool) -> tuple:
    """What must agree for two requests to share a batch: dtypes and dimensions beyond the batch dimension
    (only the ranks when variable-length inputs are padded)."""
    if pad_variable_length_inputs:
        return tuple((name, a.dtype.str, a.ndim) for name, a in sorted(inputs.items()))
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


def _slice_inputs(inputs: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: array[start:stop] for name, array in inputs.items()}


class BatchScheduler:
    def __init__(self, options: BatchingOptions, metrics: ServingMetrics | None = None):
        options.check()
        self.options = options
        self.metrics = metrics or ServingMetrics()
        self._cv = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{options.thread_pool_name}-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    # -- scheduling ---------------------------------------------------------------------------------------

    def submit(self, key: Hashable, run: RunFn, inputs: Mapping[str, np.ndarray], size: int) -> concurrent.futures.Future:
        """Queue one request of ``size`` rows; the future gets its outputs (or a ServingError).

        Raises ServingError at once when the request cannot be queued (too large, queue full, stopping).
        ``run`` must be the same for every submission with the same ``key``.
        """
        options = self.options
        if size < 1:
            raise invalid_argument("Batching: a request must have at least one row (batch size 0)")
        if size > options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {options.max_batch_size}")
        self.metrics.input_batch_size.observe(size)
        now = time.monotonic()
        future: concurrent.futures.Future = concurrent.futures.Future()
        limit = options.execution_batch_size
        with self._cv:
            if self._stopping:
                raise unavailable("the server is shutting down; no new requests are accepted")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key, run)
            batches = queue.batches
            room = limit - batches[-1].size if batches else 0
            if size <= room:
                batches[-1].add(_Task(inputs, size, future, now))
            elif not options.enable_large_batch_splitting or (room == 0 and size <= limit):
                if len(batches) >= options.max_enqueued_batches:
                    self._forget_if_empty(queue)
                    raise unavailable("The batch scheduling queue to which this task was submitted is full")
                batch = _Batch(created=now)
                batch.add(_Task(inputs, size, future, now))
                batches.append(batch)
            else:
                self._submit_split(queue, inputs, size, future, now)
            self._cv.notify()
        return future

    def _submit_split(self, queue: _Queue, inputs, size: int, future, now: float) -> None:
        """Large-batch splitting (called with the lock held): fill the open batch, then new batches."""
        options, batches = self.options, queue.batches
        limit = options.execution_batch_size
        room = limit - batches[-1].size if batches else 0
        capacity = room + (options.max_enqueued_batches - len(batches)) * limit
        if size > capacity:
            self._forget_if_empty(queue)
            raise unavailable(f"The batch scheduling queue to which this task was submitted is full; task size is "
                              f"{size} but scheduling capacity is only {capacity}")
        parts: list[concurrent.futures.Future] = []
        start = 0
        while start < size:
            if not batches or batches[-1].size >= limit:
                batches.append(_Batch(created=now))
            batch = batches[-1]
            stop = min(size, start + limit - batch.size)
            part: concurrent.futures.Future = concurrent.futures.Future()
            batch.add(_Task(_slice_inputs(inputs, start, stop), stop - start, part, now))
            parts.append(part)
            start = stop
        _gather(parts, future)

    def _forget_if_empty(self, queue: _Queue) -> None:
        if not queue.batches:
            self._queues.pop(queue.key, None)

    # -- batch threads ------------------------------------------------------------------------------------

    def _next(self) -> tuple[_Queue, _Batch] | None:
        """The oldest runnable batch of any queue, waiting as needed; None once stopping and drained."""
        timeout, limit = self.options.batch_timeout_s, self.options.execution_batch_size
        while True:
            now = time.monotonic()
            best: _Queue | None = None
            wait: float | None = None
            for queue in self._queues.values():
                if not queue.batches:
                    continue
                first = queue.batches[0]
                ready = (len(queue.batches) > 1 or first.size >= limit or self._stopping
                         or now - first.created >= timeout)
                if ready:
                    if best is None or first.created < best.batches[0].created:
                        best = queue
                else:
                    remaining = timeout - (now - first.created)
                    wait = remaining if wait is None else min(wait, remaining)
            if best is not None:
                batch = best.batches.popleft()
                self._forget_if_empty(best)
                return best, batch
            if self._stopping and not self._queues:
                return None
            self._cv.wait(wait)

    def _work(self) -> None:
        while True:
            with self._cv:
                item = self._next()
            if item is None:
                return
            queue, batch = item
            try:
                self._process(queue, batch)
            except BaseException as error:  # never let a batch thread die with futures pending
                log.exception("batch processing failed")
                for task in batch.tasks:
                    if not task.future.done():
                        task.future.set_exception(from_exception(error))

    def _merge(self, tasks: list[_Task]) -> tuple[dict[str, np.ndarray], int]:
        size = sum(task.size for task in tasks)
        padded = self.options.padded_size(size)
        if len(tasks) == 1 and padded == size:
            return dict(tasks[0].inputs), size
        merged = {}
        for name in tasks[0].inputs:
            arrays = [task.inputs[name] for task in tasks]
            if self.options.pad_variable_length_inputs:
                arrays = _pad_to_common_shape(arrays)
            if padded > size:
                arrays.append(np.repeat(arrays[-1][:1], padded - size, axis=0))
            merged[name] = np.concatenate(arrays, axis=0)
        return merged, padded

    def _run(self, queue: _Queue, tasks: list[_Task]) -> None:
        merged, padded = self._merge(tasks)
        size = sum(task.size for task in tasks)
        self.metrics.processed_batch_size.observe(padded)
        self.metrics.padding_size.observe(str(padded), padded - size)
        self.metrics.wrapped_run_count.inc()
        outputs = queue.run(merged)
        for name, array in outputs.items():
            if np.ndim(array) == 0 or array.shape[0] != padded:
                raise failed_precondition(
                    f"Batched output tensor {name!r} has shape {list(np.shape(array))}: its 0th dimension does not "
                    f"equal the sum of the 0th dimension sizes of the input tensors ({padded}); this signature "
                    "cannot be batched")
        offset = 0
        for task in tasks:
            task.future.set_result({name: array[offset:offset + task.size] for name, array in outputs.items()})
            offset += task.size

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        started = time.monotonic()
        for task in batch.tasks:
            self.metrics.queuing_latency.observe(self.options.thread_pool_name, (started - task.enqueued) * 1e6)
        try:
            self._run(queue, batch.tasks)
        except Exception as error:
            failure = from_exception(error)
            if failure.code == Code.INVALID_ARGUMENT and len(batch.tasks) > 1:
                # One bad request (a corrupt image, say) must not fail the others merged with it.
                for task in batch.tasks:
                    try:
                        self._run(queue, [task])
                    except Exception as single:
                        task.future.set_exception(from_exception(single))
                return
            for task in batch.tasks:
                task.future.set_exception(failure)

    # -- shutdown -----------------------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, run everything queued (without waiting for timeouts), join the threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def queued_tasks(self) -> int:
        with self._cv:
            return sum(len(b.tasks) for q in self._queues.values() for b in q.batches)


def _pad_to_common_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    target = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays), strict=True))
    out = []
    for array in arrays:
        if array.shape[1:] == target:
            out.append(array)
            continue
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(array.shape[1:], target, strict=True)]
        if array.dtype == object:
            padded = np.full((array.shape[0], *target), b"", dtype=object)
            padded[tuple(slice(0, s) for s in array.shape)] = array
            out.append(padded)
        else:
            out.append(np.pad(array, widths))
    return out


def _gather(parts: list[concurrent.futures.Future], future: concurrent.futures.Future) -> None:
    """Complete ``future`` with the row-wise concatenation of the parts' outputs (or the first error)."""
    remaining = [len(parts)]
    lock = threading.Lock()

    def done(_):
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        errors = [p.exception() for p in parts if p.exception() is not None]
        if errors:
            future.set_exception(errors[0])
            return
        results = [p.result() for p in parts]
        future.set_result({name: np.concatenate([r[name] for r in results], axis=0) for name in results[0]})

    for part in parts:
        part.add_done_callback(done)


__all__ = ["BatchScheduler", "ServingError", "shape_key"]
