"""Which devices and machines a training run uses: a ``tf.distribute`` strategy for TFOD2's ``train_loop``.

``train_loop`` trains under whatever strategy is in scope (``model_main_tf2`` enters a MirroredStrategy): the
global batch of pipeline.config is split across the replicas (``input_context.get_per_replica_batch_size``), each
replica's losses are divided by the replica count and summed, and a non-chief worker checkpoints into a temporary
directory it deletes. What detserve adds around the loop (validation, the time budget, history, the final save)
must follow the same rules, and this module gives it the means:

- ``Distribution.is_chief``: only the chief writes the history, the best checkpoint, plans and evaluations.
- ``Distribution.any_worker`` / ``min_over_workers``: decisions taken in one process (the deadline, an early
  stop, the planned step count) are agreed by all workers, or one stops while the others wait in a collective.
- ``Distribution.on_chief``: work only the chief does (preparing the run, an evaluation, the report) with the
  others waiting for it, and failing with it when it fails.
- ``Distribution.outside``: an evaluation builds its own model; run inside the strategy's scope its variables would
  be mirrored (and, with several workers, initialised by a collective only the chief joins).

The strategy is created once per process: MultiWorkerMirroredStrategy must exist before other TensorFlow work and
cannot be created twice, and a --time-budget run calls train_loop twice.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

STRATEGIES = ("auto", "one", "mirrored", "multi-worker")
# Logical CPU devices to split the one CPU into for --strategy mirrored on a machine without GPUs: the way to run
# (and test) a mirrored run here. It changes how the work is split, not how fast it goes.
CPU_DEVICES_ENV = "DETSERVE_CPU_DEVICES"

# An Indexed Job's Pods build TF_CONFIG from these (k8s/jobs/train-multinode): the worker count, the address
# template with {index}, and the completion index Kubernetes gives each Pod.
WORKERS_ENV = "DETSERVE_WORKERS"
ADDRESS_ENV = "DETSERVE_WORKER_ADDRESS"
INDEX_ENV = "JOB_COMPLETION_INDEX"

T = TypeVar("T")


def indexed_job_tf_config(environ: dict[str, str] | None = None) -> str | None:
    """The TF_CONFIG of Pod JOB_COMPLETION_INDEX in an Indexed Job of DETSERVE_WORKERS workers, worker i at
    DETSERVE_WORKER_ADDRESS with {index} = i; None without DETSERVE_WORKERS. Raises ValueError naming a bad value."""
    environ = os.environ if environ is None else environ
    if not environ.get(WORKERS_ENV):
        return None
    values = {name: environ.get(name, "") for name in (WORKERS_ENV, INDEX_ENV)}
    try:
        workers, index = (int(values[name]) for name in (WORKERS_ENV, INDEX_ENV))
    except ValueError:
        raise ValueError(f"{WORKERS_ENV} and {INDEX_ENV} must be integers, got {values} (an Indexed Job sets "
                         f"{INDEX_ENV})") from None
    template = environ.get(ADDRESS_ENV, "")
    if "{index}" not in template:
        raise ValueError(f"{ADDRESS_ENV} must name the workers with {{index}}, e.g. job-{{index}}.service:2222; "
                         f"got {template!r}")
    if not 0 <= index < workers:
        raise ValueError(f"{INDEX_ENV} {index} is outside the {workers} workers of {WORKERS_ENV}")
    cluster = {"worker": [template.replace("{index}", str(i)) for i in range(workers)]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def tf_config_workers(environ: dict[str, str] | None = None) -> int:
    """How many tasks (chief + workers) ``TF_CONFIG``'s cluster names; 0 without TF_CONFIG."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not a JSON object with a cluster: {error}") from error
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


@dataclass
class Distribution:
    """A created strategy and what detserve needs to know about it."""

    strategy: Any  # tf.distribute.Strategy
    name: str  # one, mirrored, multi-worker (auto resolved)
    devices: tuple[str, ...]
    workers: int = 1
    is_chief: bool = True
    _thread: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> str:
        where = f"{self.workers} workers; this one: " if self.workers > 1 else ""
        return f"strategy {self.name}: {self.replicas} replica(s) ({where}{', '.join(self.devices)})"

    def check_batch(self, batch_size: int) -> None:
        """The global batch must split evenly across the replicas (TFOD2's input pipeline fails deep inside)."""
        if batch_size % self.replicas:
            raise ValueError(f"batch_size {batch_size} does not split across the {self.replicas} replicas of "
                             f"--strategy {self.name}: give a multiple of {self.replicas} (it is the global batch)")

    def check_input_files(self, train_files: int) -> None:
        """TFOD2 gives each worker whole TFRecord files (``dataset.shard`` over the file names): a worker left
        without one would wait forever for its first batch."""
        if train_files < self.workers:
            raise ValueError(f"{self.workers} workers need at least {self.workers} train TFRecord files, one each at "
                             f"least; the data has {train_files}: convert it with `detserve data --shards "
                             f"{self.workers}` (or a multiple)")

    def any_worker(self, flag: bool) -> bool:
        """True when ``flag`` is true on any worker. Every worker must call it at the same point (a collective)."""
        if self.workers == 1:
            return flag
        return bool(self._gather(1.0 if flag else 0.0).max() > 0)

    def on_chief(self, function: Callable[[], T]) -> T | None:
        """Run ``function`` on the chief alone; the others wait for it (a barrier) and get None. When it fails, every
        worker raises: the chief its error, the others WorkerFailed, instead of waiting for it in a collective."""
        result, error = None, None
        if self.is_chief:
            try:
                result = function()
            except Exception as caught:  # noqa: BLE001  (re-raised below, after the workers agree)
                error = caught
        if self.any_worker(error is not None):
            if error is not None:
                raise error
            raise WorkerFailed("the chief failed (its log says why); this worker stops with it")
        return result

    def agreed_seed(self, seed: int | None) -> int | None:
        """``seed``, or with several workers and no seed one seed for all of them: TFOD2 shuffles the TFRecord file
        names unseeded before giving each worker its share, so workers shuffling differently would read
        overlapping files and skip others."""
        if seed is not None or self.workers == 1:
            return seed
        import random

        return int(self.min_over_workers(random.randrange(2**31)))

    def min_over_workers(self, value: float) -> float:
        """The smallest ``value`` among the workers (all of them must call it)."""
        return value if self.workers == 1 else float(self._gather(float(value)).min())

    def _gather(self, value: float):
        """Every replica's ``value`` (ReduceOp has only SUM and MEAN, so MIN and MAX are taken from a gather)."""
        import tensorflow as tf

        per_replica = self.strategy.run(lambda: tf.constant([value], tf.float64))
        return self.strategy.gather(per_replica, axis=0).numpy()

    def outside(self, function: Callable[[], T]) -> T:
        """Run ``function`` outside the strategy's scope: on a thread of its own, since a strategy's scope is
        thread-local. The same thread every time, so that what the function builds stays with it."""
        if self.name == "one":
            return function()
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="detserve-outside")
        return self._thread.submit(function).result()


class WorkerFailed(RuntimeError):
    """Another worker (the chief) failed in work the others waited for."""


_created: Distribution | None = None


def distribution(name: str = "auto") -> Distribution:
    """The process's strategy for ``name`` (STRATEGIES), created on the first call.

    auto: multi-worker when TF_CONFIG names several tasks, mirrored when more than one GPU is visible, else one.
    Raises ValueError naming the problem (unknown name, multi-worker without TF_CONFIG, a second different one)."""
    global _created
    from . import tfod_compat  # noqa: F401  (TFOD2's Keras must be chosen before TensorFlow starts)

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if not os.environ.get("TF_CONFIG"):
        tf_config = indexed_job_tf_config()
        if tf_config is not None:
            os.environ["TF_CONFIG"] = tf_config  # read by MultiWorkerMirroredStrategy's cluster resolver
    resolved = _resolve(name)
    if resolved == "multi-worker" and tf_config_workers() < 1:
        raise ValueError(f"--strategy multi-worker needs TF_CONFIG (the cluster and this task's index), or "
                         f"{WORKERS_ENV} and {ADDRESS_ENV} in an Indexed Job (k8s/jobs/train-multinode)")
    if _created is not None:
        if _created.name != resolved:
            raise ValueError(f"this process already trains with strategy {_created.name}; it cannot switch to {resolved}")
        return _created
    _created = _create(resolved)
    return _created


def _resolve(name: str) -> str:
    if name != "auto":
        return name
    import tensorflow as tf

    if tf_config_workers() > 1:
        return "multi-worker"
    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"


def _split_cpu() -> None:
    import tensorflow as tf

    count = int(os.environ.get(CPU_DEVICES_ENV, "0") or 0)
    if count > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def _create(name: str) -> Distribution:
    import tensorflow as tf

    if name == "multi-worker":
        workers = tf_config_workers()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        devices = tuple(strategy.extended.worker_devices)
        return Distribution(strategy, name, devices, workers=workers,
                            is_chief=bool(strategy.extended.should_checkpoint))
    if name == "mirrored":
        _split_cpu()
        gpus = tf.config.list_logical_devices("GPU")
        devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
        return Distribution(tf.distribute.MirroredStrategy(devices=list(devices)), name, devices)
    gpus = tf.config.list_logical_devices("GPU")
    return Distribution(tf.distribute.get_strategy(), "one", (gpus[0].name if gpus else "/device:CPU:0",))
