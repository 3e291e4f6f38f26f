"""Train with TFOD2's ``model_lib_v2.train_loop``, adding what it lacks for interactive use.

``train_loop`` has no callback, so two of the objects it looks up at call time are instrumented
for the duration of the call (and restored afterwards):

- ``tf.compat.v2.summary.scalar``: the loop writes ``Loss/total_loss`` and ``steps_per_sec`` eagerly
  after every iteration; we forward those to a progress bar and keep the loss history.
- ``tf.compat.v2.train.CheckpointManager``: the loop saves every ``checkpoint_every_n`` steps but not
  at the end, so with a step count that is not a multiple the last steps would be lost; we keep a
  handle on the manager and save the final step.

Resuming is ``train_loop``'s own behaviour: it restores the latest checkpoint in ``model_dir``.

Validation (training/validation.py) and the stop on time run in the same hook, after an iteration's scalars: a
checkpoint is saved there, evaluated, and an early stop or the deadline ends ``train_loop`` by raising
``_StopTraining`` out of it (the loop has no other way out), after which the last step is saved as usual.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import tfod_compat  # noqa: F401  (before object_detection)
from .checkpoints import HISTORY_FILE, checkpoint_step, latest_checkpoint
from .options import CHECKPOINT_EVERY
from .pipeline_config import PIPELINE_CONFIG, load_pipeline_config

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig

    from .validation import Validator

LOSS_KEY = "Loss/total_loss"


@dataclass
class StepRecord:
    step: int
    total_loss: float
    steps_per_sec: float
    losses: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    model_dir: Path
    start_step: int
    final_step: int
    checkpoint: str
    history: list[StepRecord]
    seconds: float
    batch_size: int
    evaluations: list[dict] = field(default_factory=list)
    stopped: str | None = None  # why training ended before the step budget (early stop, time), None if it did not

    @property
    def images_per_sec(self) -> float:
        """Median throughput after the first iteration (which includes tracing)."""
        rates = sorted(r.steps_per_sec for r in self.history[1:]) or [r.steps_per_sec for r in self.history]
        return rates[len(rates) // 2] * self.batch_size if rates else float("nan")


class _Instrumentation:
    """Collects per-iteration scalars and the CheckpointManager while ``train_loop`` runs."""

    def __init__(self, on_iteration: Callable[[StepRecord], None], saved_step: int):
        self.on_iteration = on_iteration
        self.manager = None
        self.saved_step = saved_step  # of the last checkpoint: the one the run starts from, then each save
        self.history: list[StepRecord] = []
        self._pending: dict[str, float] = {}
        self.paused = False  # while the validation writes its own scalars

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import tensorflow as tf

        summary = tf.compat.v2.summary
        train = tf.compat.v2.train
        original_scalar, original_manager = summary.scalar, train.CheckpointManager
        instrumentation = self

        def scalar(name, data, step=None, description=None):
            result = original_scalar(name, data, step=step, description=description)
            if tf.executing_eagerly() and not instrumentation.paused:  # train_loop's per-iteration calls only
                instrumentation._record(name, data, step)
            return result

        class RecordingManager(original_manager):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                instrumentation.manager = self

            def save(self, *args, **kwargs):
                # The step of the last save, known without reading a file: a non-chief worker's checkpoints are
                # in a temporary directory train_loop deletes when it ends.
                path = super().save(*args, **kwargs)
                instrumentation.saved_step = int(self.checkpoint.step.numpy())
                return path

        summary.scalar, train.CheckpointManager = scalar, RecordingManager
        try:
            yield
        finally:
            summary.scalar, train.CheckpointManager = original_scalar, original_manager

    def _record(self, name: str, data, step) -> None:
        value = float(data.numpy() if hasattr(data, "numpy") else data)
        # train_loop writes steps_per_sec first, then every loss, then learning_rate (last).
        self._pending[name] = value
        if name == "learning_rate" and LOSS_KEY in self._pending:
            record = StepRecord(
                step=int(step.numpy() if hasattr(step, "numpy") else step),
                total_loss=self._pending[LOSS_KEY],
                steps_per_sec=self._pending.get("steps_per_sec", float("nan")),
                losses=dict(self._pending),
            )
            self.history.append(record)
            self.on_iteration(record)
            self._pending = {}


class _StopTraining(Exception):
    """Raised from the per-iteration hook to end train_loop early; the message says why."""


class _History:
    """Appends the step records, and the evaluation records at their place among them, to train_history.jsonl
    as the run goes (an evaluation flushes the steps before it)."""

    def __init__(self, path: Path, records: list[StepRecord], write: bool = True):
        self.path, self.records, self.written, self.write = path, records, 0, write

    def flush(self, evaluation: dict | None = None) -> None:
        if not self.write:  # a non-chief worker: the chief writes the run's history
            return
        with open(self.path, "a") as history_file:
            for record in self.records[self.written:]:
                history_file.write(json.dumps(record.__dict__) + "\n")
            self.written = len(self.records)
            if evaluation is not None:
                history_file.write(json.dumps(evaluation) + "\n")


def _remove_worker_directories(strategy, model_dir: Path, manager) -> None:
    """A non-chief worker's temporary checkpoint and TensorBoard directories (TFOD2's get_filepath): train_loop
    deletes them only when it runs to its end, and our last saves make the checkpoint one again."""
    import tensorflow as tf
    from object_detection.model_lib_v2 import get_filepath

    directories = [get_filepath(strategy, str(model_dir / "train"))]
    if manager is not None:
        directories.append(manager.directory)
    for directory in directories:
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)


def steps_per_loop(remaining_steps: int, preferred: int) -> int:
    """Steps per ``tf.function`` call: as many as ``preferred`` but dividing the remaining steps exactly
    (train_loop overshoots otherwise)."""
    return max(1, math.gcd(max(remaining_steps, 1), max(preferred, 1)))


def train(
    model_dir: Path | str,
    num_steps: int,
    checkpoint_every: int = CHECKPOINT_EVERY,
    preferred_steps_per_loop: int = 10,
    checkpoint_max_to_keep: int = 5,
    progress: bool = True,
    seed: int | None = None,
    pipeline_config: TrainEvalPipelineConfig | None = None,
    validator: Validator | None = None,
    deadline: float | None = None,
    strategy: str = "auto",
) -> TrainResult:
    """Train the model described by ``<model_dir>/pipeline.config`` up to ``num_steps`` total steps.

    Resumes from the latest checkpoint in ``model_dir``; saves the final step; appends the history
    to ``<model_dir>/train_history.jsonl`` (TensorBoard logs go to ``<model_dir>/train``). ``seed`` seeds Python,
    NumPy and TensorFlow (weight initialisation, shuffling, augmentation); multi-threaded CPU kernels still make
    runs differ slightly. ``pipeline_config``: the file's content when the caller has it (``prepare_run``
    returns it), so that it is not parsed again; train_loop itself reads the file. ``validator``: evaluate on the
    val split when it is due (and at the end), and stop early when it says so. ``deadline``: a ``time.time()``
    after which training stops (saving and evaluating the step it reached). ``strategy``: the devices and workers
    (training/distribution.py); the config's batch is the global batch, split across the replicas, and only the
    chief writes the history and evaluates, while every worker saves and stops at the same steps.
    """
    import tensorflow as tf
    from object_detection import model_lib_v2
    from tqdm import tqdm

    from .distribution import distribution

    dist = distribution(strategy)
    model_dir = Path(model_dir)
    config_path = model_dir / PIPELINE_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; `detserve train` writes it from the options")
    pipeline_config = pipeline_config or load_pipeline_config(config_path)
    batch_size = pipeline_config.train_config.batch_size
    dist.check_batch(batch_size)
    dist.check_input_files(len(tf.io.gfile.glob(list(pipeline_config.train_input_reader.tf_record_input_reader.input_path))))
    latest = latest_checkpoint(model_dir)
    start_step = checkpoint_step(latest)
    if start_step >= num_steps:
        return TrainResult(model_dir, start_step, start_step, latest, [], 0.0, batch_size)

    per_loop = steps_per_loop(num_steps - start_step, preferred_steps_per_loop)
    bar = tqdm(total=num_steps, initial=start_step, unit="step", disable=not (progress and dist.is_chief),
               dynamic_ncols=True)

    instrumentation: _Instrumentation
    history = _History(model_dir / HISTORY_FILE, [], write=dist.is_chief)
    previous_step = start_step

    def save_and_validate(step: int) -> None:
        manager = instrumentation.manager
        prefix = manager.latest_checkpoint
        if instrumentation.saved_step != step:
            prefix = manager.save()  # on every worker: saving reads sync-on-read variables (a collective)
        validator.last_step = step  # (the chief's evaluate sets it too)
        instrumentation.paused = True
        try:  # the chief evaluates its own checkpoint (the others' are temporary) while they wait
            dist.on_chief(lambda: history.flush(dist.outside(lambda: validator.evaluate(prefix, step))))
        finally:
            instrumentation.paused = False

    def on_iteration(record: StepRecord) -> None:
        nonlocal previous_step
        bar.update(record.step - bar.n)
        bar.set_postfix(loss=f"{record.total_loss:.3f}", img_s=f"{record.steps_per_sec * batch_size:.1f}")
        step, last, previous_step = record.step, previous_step, record.step
        reason = None
        if validator is not None and validator.due(last, step, num_steps):
            save_and_validate(step)
            if dist.is_chief and validator.should_stop():
                reason = (f"early stop at step {step}: no better val mAP in {validator.patience} "
                          f"evaluation(s) (best at step {validator.tracker.best_step})")
        if reason is None and deadline is not None and time.time() >= deadline and step < num_steps:
            reason = f"time budget reached at step {step}"
        # Workers stop together: one that left the loop alone would leave the others waiting in a collective.
        if dist.any_worker(reason is not None):
            raise _StopTraining(reason or f"stopped with the other workers at step {step}")

    seed = dist.agreed_seed(seed)
    if seed is not None:
        # TFOD2 creates its random ops without seeds; a global seed makes their op-level seeds repeatable.
        tf.keras.utils.set_random_seed(seed)
    instrumentation = _Instrumentation(on_iteration, saved_step=start_step)
    history.records = instrumentation.history
    stopped = None
    started = time.time()
    with instrumentation.installed(), bar, dist.strategy.scope():
        try:
            model_lib_v2.train_loop(
                pipeline_config_path=str(config_path),
                model_dir=str(model_dir),
                train_steps=num_steps,
                checkpoint_every_n=checkpoint_every,
                checkpoint_max_to_keep=checkpoint_max_to_keep,
                num_steps_per_iteration=per_loop,
            )
        except _StopTraining as stop:
            stopped = str(stop)
        manager = instrumentation.manager
        reached = instrumentation.history[-1].step if instrumentation.history else start_step
        if manager is not None and instrumentation.saved_step < reached:
            manager.save()
        if validator is not None and manager is not None and validator.last_step != reached and stopped is not None:
            save_and_validate(reached)  # stopped on time between two evaluations: the step it reached counts too
        if not dist.is_chief:
            _remove_worker_directories(dist.strategy, model_dir, manager)
    seconds = time.time() - started
    history.flush()
    final = latest_checkpoint(model_dir)
    tf.get_logger().info("training finished at %s", final)
    # Another worker may not see the chief's last checkpoint yet: it reports the step it reached itself.
    final_step = checkpoint_step(final) if dist.is_chief else reached
    return TrainResult(model_dir, start_step, final_step, final, instrumentation.history, seconds, batch_size,
                       evaluations=list(validator.records) if validator is not None else [], stopped=stopped)
