"""Validation during training: COCO mAP of fresh checkpoints on the val split, and the best one kept apart.

``train`` calls a :class:`Validator` right after it has saved a checkpoint at an evaluation step. The evaluation is
training/evaluation's ``evaluate`` with ``checkpoint_predictor`` (the one evaluator of the kit); its metrics go to
``train_history.jsonl`` (records with ``"split": "val"``), to TensorBoard (``<model_dir>/eval``, as TFOD2's own
evaluation names its directory) and, when mAP improved, into ``<model_dir>/best/`` (the checkpoint files and
``best.json``), which `detserve evaluate` and `detserve export` then use by default.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import checkpoint_step

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig

VAL_SPLIT = "val"
BEST_DIR = "best"
BEST_FILE = "best.json"
EVAL_DIR = "eval"  # TensorBoard logs of the evaluations (TFOD2's name), beside train/
EVALS_PER_RUN = 5  # --eval-every's default: the run's step count / this
MAP_KEY = "DetectionBoxes_Precision/mAP"

Echo = Callable[[str], None]


def default_eval_every(num_steps: int) -> int:
    """Steps between evaluations when --eval-every is not given: a fifth of the run."""
    return max(1, num_steps // EVALS_PER_RUN)


def short_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """TFOD2's summary metric names -> the short ones of the history (``mAP``, ``mAP@.50``, ``AR@100``...);
    NaN (no ground truth of that size) -> None, which JSON can hold."""
    short = {}
    for name, value in metrics.items():
        if not name.startswith(("DetectionBoxes_Precision/", "DetectionBoxes_Recall/")):
            continue  # per-class values stay in metrics.json
        key = name.split("/", 1)[1].replace("IOU", "")
        short[key] = None if value is None or math.isnan(value) else float(value)
    return short


@dataclass
class BestTracker:
    """The best mAP so far and how many evaluations have not beaten it (early stopping counts these)."""

    best_step: int | None = None
    best_map: float = -math.inf
    evals_since_best: int = 0

    def update(self, step: int, value: float | None) -> bool:
        """Record one evaluation; True when it is a new best (strictly higher mAP)."""
        if value is not None and value > self.best_map:
            self.best_step, self.best_map, self.evals_since_best = step, value, 0
            return True
        self.evals_since_best += 1
        return False

    def should_stop(self, patience: int | None) -> bool:
        return bool(patience) and self.evals_since_best >= patience


def read_best(model_dir: Path | str) -> dict[str, Any] | None:
    """``<model_dir>/best/best.json``, or None when there is no kept best checkpoint."""
    path = Path(model_dir) / BEST_DIR / BEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete {path.parent} to start the best over") from error


def keep_best(model_dir: Path | str, prefix: str, step: int, metrics: Mapping[str, Any]) -> Path:
    """Copy checkpoint ``prefix``'s files and a best.json into ``<model_dir>/best/``, replacing the previous best.

    Written into a temporary directory beside it and renamed into place, so that a reader (or a killed run)
    never sees half a checkpoint: at worst, for the instant between the two renames, no best/ at all.
    """
    model_dir = Path(model_dir)
    source = Path(prefix)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{BEST_DIR}-"))
    for path in source.parent.glob(source.name + ".*"):  # ckpt-N.index, ckpt-N.data-00000-of-00001
        shutil.copy2(path, staging / path.name)
    document = {"step": step, "checkpoint": source.name, "copied_from": str(source), "metrics": dict(metrics)}
    (staging / BEST_FILE).write_text(json.dumps(document, indent=2) + "\n")
    best = model_dir / BEST_DIR
    # os.replace cannot replace a non-empty directory: move the old best aside first, then drop it.
    retired = None
    if best.exists():
        retired = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{BEST_DIR}-old-"))
        os.replace(best, retired / BEST_DIR)
    os.replace(staging, best)
    if retired is not None:
        shutil.rmtree(retired)
    return best


def val_records_missing(data_dir: Path | str, split: str = VAL_SPLIT) -> str | None:
    """Why ``split`` of ``data_dir`` cannot validate (no shards, or only empty ones), or None when it can."""
    from .data.tfrecord import split_pattern

    pattern = split_pattern(data_dir, split)
    shards = sorted(Path(data_dir).glob(Path(pattern).name))
    if not shards:
        return f"no {split} split in {data_dir} (nothing matches {pattern})"
    if all(shard.stat().st_size == 0 for shard in shards):
        return f"the {split} split in {data_dir} is empty ({len(shards)} shard(s) without a record)"
    return None


@dataclass
class Validator:
    """Evaluates checkpoints on the val split every ``every`` steps; ``patience``: early stop after that many
    evaluations without a better mAP (None: never)."""

    model_dir: Path
    config: TrainEvalPipelineConfig
    data_dir: Path
    label_map: dict[int, str]
    every: int
    patience: int | None = None
    echo: Echo = print
    tracker: BestTracker = field(default_factory=BestTracker)
    last_step: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    setup_seconds: float = 0.0  # of the last evaluation, building and tracing the model (the first one only)
    _writer: Any = None
    _model: Any = None
    _detect: Any = None

    @classmethod
    def create(cls, model_dir: Path | str, config: TrainEvalPipelineConfig, every: int,
               patience: int | None = None, echo: Echo = print) -> Validator | None:
        """A validator for the data ``config`` trains on, or None (after saying why) when it has no val records."""
        from .data.label_map import read_label_map

        model_dir = Path(model_dir)
        reader = config.train_input_reader
        data_dir = Path(reader.tf_record_input_reader.input_path[0]).parent
        missing = val_records_missing(data_dir)
        if missing:
            echo(f"validation off: {missing}; training continues without it (`detserve data` writes a val split)")
            return None
        tracker = BestTracker()
        best = read_best(model_dir)
        if best is not None:  # a resumed run: beat the best it already kept
            tracker = BestTracker(best_step=best["step"], best_map=best["metrics"].get("mAP") or -math.inf)
        return cls(model_dir, config, data_dir, read_label_map(reader.label_map_path), every, patience, echo, tracker)

    def due(self, previous_step: int, step: int, num_steps: int) -> bool:
        """Whether training from ``previous_step`` to ``step`` calls for an evaluation: on crossing a multiple of
        ``every``, and at the end."""
        return step >= num_steps or step // self.every > previous_step // self.every

    def evaluate(self, prefix: str, step: int | None = None) -> dict[str, Any]:
        """Evaluate checkpoint ``prefix`` on the val split; log it, keep it in best/ when it is the best so far.

        Returns the history record."""
        import tensorflow as tf

        from .evaluation.evaluate import evaluate

        step = checkpoint_step(prefix) if step is None else step
        started = time.monotonic()
        predictor = self._predictor(prefix)
        self.setup_seconds = time.monotonic() - started
        metrics = evaluate(predictor, self.data_dir, self.label_map, self.model_dir / EVAL_DIR / VAL_SPLIT,
                           split=VAL_SPLIT, grid_images=0, progress=False,
                           model_info={"kind": "checkpoint", "checkpoint": prefix, "step": step})
        record = {"step": step, "split": VAL_SPLIT, **short_metrics(metrics),
                  "seconds": round(time.monotonic() - started, 2)}
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.model_dir / EVAL_DIR))
        with self._writer.as_default():
            for name, value in metrics.items():
                if value is not None and not math.isnan(value):
                    tf.summary.scalar(name, value, step=step)
        self._writer.flush()
        improved = self.tracker.update(step, record.get("mAP"))
        if improved:
            keep_best(self.model_dir, prefix, step, record)
        self.last_step = step
        self.records.append(record)
        self.echo(self._line(record, improved))
        return record

    def _predictor(self, prefix: str):
        """checkpoint_predictor's model, built and traced once, then given each new checkpoint's weights: an
        evaluation costs its images, not another model build and trace."""
        import tensorflow as tf

        from .evaluation.predictors import checkpoint_mismatch, exporter_path_detect, restore_detection_model
        from .pipeline_config import PIPELINE_CONFIG

        if self._detect is None:
            config_path = self.model_dir / PIPELINE_CONFIG
            model, status, _ = restore_detection_model(config_path, prefix, self.config)
            detect = exporter_path_detect(model)
            try:  # creates the variables, restoring them (deferred restoration), and traces once
                detect(tf.zeros([1, 32, 32, 3], tf.uint8))
                status.assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
                raise checkpoint_mismatch(prefix, config_path, error) from error
            self._model, self._detect = model, detect
        else:
            tf.train.Checkpoint(model=self._model).restore(prefix).expect_partial().assert_existing_objects_matched()
        detect = self._detect
        return lambda images: {key: value.numpy() for key, value in detect(tf.constant(images)).items()}

    def should_stop(self) -> bool:
        return self.tracker.should_stop(self.patience)

    def _line(self, record: Mapping[str, Any], improved: bool) -> str:
        def show(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        best = (f"new best, kept in {self.model_dir / BEST_DIR}" if improved else
                f"best {show(self.tracker.best_map)} at step {self.tracker.best_step}, "
                f"{self.tracker.evals_since_best} evaluation(s) without improvement")
        return (f"val step {record['step']}: mAP {show(record.get('mAP'))}, mAP@.50 {show(record.get('mAP@.50'))} "
                f"({record['seconds']:.0f}s); {best}")


def model_dir_checkpoint(model_dir: Path | str) -> tuple[Path, str]:
    """What `detserve evaluate/export --model-dir` use without --checkpoint: ``best/`` when validation kept one,
    else the model dir (its latest checkpoint); and a sentence saying which, for their output."""
    model_dir = Path(model_dir)
    best = model_dir / BEST_DIR
    if any(best.glob("ckpt-*.index")):
        document = read_best(model_dir) or {}
        mAP = (document.get("metrics") or {}).get("mAP")
        shown = f"{mAP:.3f}" if isinstance(mAP, (int, float)) else "n/a"
        return best, (f"using the best val checkpoint {best} (step {document.get('step')}, mAP {shown}); "
                      "--checkpoint picks another")
    return model_dir, f"using the latest checkpoint in {model_dir} (no {BEST_DIR}/: trained without validation)"
