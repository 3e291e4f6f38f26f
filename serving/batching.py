"""Server-side batching with TF Serving's BatchingParameters semantics.

The scheduler keeps one queue per (model version, signature, input shapes) and ``num_batch_threads`` threads that
run batches from all queues. As in TF Serving's shared batch scheduler:

- a request (task) joins the queue's open batch; a batch is closed when the next task would not fit
  (``max_batch_size``);
- a batch runs once closed, or once ``batch_timeout_micros`` have passed since its first task, whichever comes
  first; while every batch thread is busy the open batch keeps filling, which is where the throughput comes from;
- a queue holds at most ``max_enqueued_batches`` batches (the open one included); a task that needs one more is
  rejected with UNAVAILABLE "The batch scheduling queue to which this task was submitted is full", which is what
  TF Serving answers (HTTP 503), so clients back off or retry on another replica;
- a task larger than ``max_batch_size`` is rejected with INVALID_ARGUMENT;
- a batch is padded up to the next ``allowed_batch_sizes`` entry with copies of its last task's first row, and
  the padding is dropped from the outputs;
- a batch that fails fails every request in it, with the batch's error (one corrupt JPEG fails its batch).

One deliberate difference from TF Serving, so that a client's image size cannot fail another's request:
requests whose tensors differ beyond the batch dimension go to different queues (TF Serving merges them and,
with ``pad_variable_length_inputs: false``, fails the whole batch). Large-batch splitting and variable-length
padding are not implemented: ``config.load_batching_parameters`` rejects a file that turns them on.
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

from .config import BatchingOptions
from .errors import failed_precondition, from_exception, invalid_argument, unavailable
from .metrics import ServingMetrics

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


def shape_key(inputs: Mapping[str, np.ndarray]) -> tuple:
    """What must agree for two requests to share a batch: dtypes and dimensions beyond the batch dimension."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


class BatchScheduler:
    def __init__(self, options: BatchingOptions, metrics: ServingMetrics | None = None):
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
        if size > options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {options.max_batch_size}")
        self.metrics.input_batch_size.observe(size)
        now = time.monotonic()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise unavailable("the server is shutting down; no new requests are accepted")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key, run)
            batches = queue.batches
            if batches and batches[-1].size + size <= options.max_batch_size:
                batches[-1].add(_Task(inputs, size, future, now))
            else:
                if len(batches) >= options.max_enqueued_batches:
                    self._forget_if_empty(queue)
                    raise unavailable("The batch scheduling queue to which this task was submitted is full")
                batch = _Batch(created=now)
                batch.add(_Task(inputs, size, future, now))
                batches.append(batch)
            self._cv.notify()
        return future

    def _forget_if_empty(self, queue: _Queue) -> None:
        if not queue.batches:
            self._queues.pop(queue.key, None)

    # -- batch threads ------------------------------------------------------------------------------------

    def _next(self) -> tuple[_Queue, _Batch] | None:
        """The oldest runnable batch of any queue, waiting as needed; None once stopping and drained."""
        timeout, limit = self.options.batch_timeout_s, self.options.max_batch_size
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
        except Exception as error:  # as TF Serving: every request of a failed batch gets the batch's error
            failure = from_exception(error)
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
