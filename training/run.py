"""Prepare a training run directory: a new pipeline.config and initialisation, or a resume."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .anchors import ZOO_ANCHOR_SCALE, fit_anchor_scale_to_split
from .checkpoints import checkpoint_step, latest_checkpoint
from .initialisation import detection_checkpoint, resolve_backbone_weights
from .options import DEFAULT_AUGMENTATIONS, TrainingOptions, default_batch_norm_decay
from .pipeline_config import (
    PIPELINE_CONFIG,
    build_pipeline_config,
    load_pipeline_config,
    require_label_map,
    save_pipeline_config,
    set_fine_tune_checkpoint,
    set_step_budget,
)
from .train import TrainResult
from .validation import BEST_DIR, read_best

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig

Echo = Callable[[str], None]


@dataclass
class TrainingRequest:
    """`detserve train`'s options: the pipeline.config choices (defaults: TrainingOptions') and where the
    weights start from."""

    data_dir: Path
    model_dir: Path
    steps: int = TrainingOptions.num_steps
    batch_size: int = TrainingOptions.batch_size
    learning_rate: float = TrainingOptions.learning_rate
    warmup_steps: int | None = None  # None: TrainingOptions.resolved_warmup_steps
    depth_multiplier: float = TrainingOptions.depth_multiplier
    image_size: int = TrainingOptions.image_size
    anchor_scale: float | None = None  # None: fitted to the train boxes, or the zoo's for a detection checkpoint
    augmentations: list[str] = field(default_factory=lambda: list(DEFAULT_AUGMENTATIONS))
    backbone_weights: str | None = None
    backbone_weights_sha256: str | None = None  # None: the known one of the `imagenet` file, none for a path
    fine_tune_checkpoint: str | None = None
    batch_norm_decay: float | None = None  # None: options.default_batch_norm_decay

    @property
    def from_scratch(self) -> bool:
        return not (self.backbone_weights or self.fine_tune_checkpoint)

    def _anchor_scale(self) -> float | None:
        # A zoo detector's box head regresses against the zoo's anchors: keep them unless the user says otherwise.
        if self.anchor_scale is None and self.fine_tune_checkpoint:
            return ZOO_ANCHOR_SCALE
        return self.anchor_scale

    def options(self) -> TrainingOptions:
        # The decay follows the weights the run starts from, known here before the checkpoint is.
        decay = self.batch_norm_decay
        return TrainingOptions(
            data_dir=self.data_dir, num_steps=self.steps, batch_size=self.batch_size,
            learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
            image_size=self.image_size, depth_multiplier=self.depth_multiplier, anchor_scale=self._anchor_scale(),
            batch_norm_decay=decay if decay is not None else default_batch_norm_decay(pretrained=not self.from_scratch),
            augmentations=list(self.augmentations),
        )


def prepare_run(request: TrainingRequest, echo: Echo | None = print) -> TrainEvalPipelineConfig:
    """Write ``<model_dir>/pipeline.config`` (new run) or extend it (resume); says what it did through ``echo``.

    Returns the config the run trains with (``train`` takes it, so that nothing parses the file again)."""
    echo = echo or (lambda message: None)
    model_dir = Path(request.model_dir)
    config_path = model_dir / PIPELINE_CONFIG
    latest = latest_checkpoint(model_dir) if model_dir.is_dir() else None
    if latest and config_path.is_file():
        return _extend_run(config_path, latest, request.steps, echo)

    options = request.options()
    require_label_map(options.data_dir)
    _require_training_records(options)
    if options.anchor_scale is None:
        fit = fit_anchor_scale_to_split(options.data_dir, options.train_split, options.image_size)
        options.anchor_scale = fit.scale
        echo(fit.describe())
    config = build_pipeline_config(options)
    if request.fine_tune_checkpoint:
        prefix = detection_checkpoint(request.fine_tune_checkpoint)
        set_fine_tune_checkpoint(config, prefix, "detection")
        echo(f"initialising from detection checkpoint {prefix}")
    elif request.backbone_weights:
        from .backbone import import_backbone_weights

        h5_path = resolve_backbone_weights(request.backbone_weights, request.depth_multiplier,
                                           request.backbone_weights_sha256)
        imported = import_backbone_weights(h5_path, config.model, model_dir / "backbone" / "imagenet")
        set_fine_tune_checkpoint(config, imported.checkpoint_prefix, "classification")
        echo(
            f"initialising the backbone from {h5_path.name}: {imported.tensors} tensors in {imported.layers} layers"
            + (f" ({len(imported.truncated)} truncated to alpha {request.depth_multiplier}: Conv_1)" if imported.truncated else "")
        )
    else:
        echo(
            f"training from scratch (batch-norm decay {options.batch_norm_decay}): fine for simple data; real photos "
            "need --backbone-weights or --fine-tune-checkpoint"
        )
    save_pipeline_config(config, config_path)
    echo(f"wrote {config_path}")
    return config


def _require_training_records(options: TrainingOptions) -> None:
    """A data directory without train TFRecords (e.g. a test-only conversion, --split 0,0,1) fails here, naming
    the pattern, rather than deep inside TFOD2's input pipeline."""
    import glob

    from .data.tfrecord import split_pattern

    pattern = split_pattern(Path(options.data_dir).resolve(), options.train_split)
    if not glob.glob(pattern):
        raise FileNotFoundError(f"no training TFRecords: nothing matches {pattern} "
                                "(convert with a train fraction, e.g. detserve data --split 0.8,0.1,0.1)")


def _extend_run(config_path: Path, latest: str, steps: int, echo: Echo) -> TrainEvalPipelineConfig:
    """Resume: the existing config stays (same model), only the step budget can grow."""
    from google.protobuf import text_format

    try:
        config = load_pipeline_config(config_path)
    except text_format.ParseError as error:
        raise ValueError(f"cannot parse {config_path} (the run to resume): {error}") from error
    echo(f"resuming from {latest} (step {checkpoint_step(latest)}); model options come from the existing {config_path}")
    if steps != config.train_config.num_steps:
        set_step_budget(config, steps)
        save_pipeline_config(config, config_path)
        echo(f"step budget set to {steps} in {config_path}")
    return config


def report_training(result: TrainResult) -> str:
    if not result.history:
        return f"nothing to do: {result.checkpoint} is already at step {result.final_step}"
    first, last = result.history[0], result.history[-1]
    lines = [
        f"trained steps {result.start_step}->{result.final_step} in {result.seconds:.0f}s; "
        f"total loss {first.total_loss:.3f} (step {first.step}) -> {last.total_loss:.3f} (step {last.step}); "
        f"{result.images_per_sec:.1f} images/s (median)",
    ]
    if result.stopped:
        lines.append(f"stopped: {result.stopped}")
    lines.append(f"checkpoint: {result.checkpoint}")
    best = read_best(result.model_dir)
    if best is not None:
        lines.append(f"best val checkpoint: {result.model_dir / BEST_DIR} (step {best['step']}, "
                     f"mAP {best['metrics'].get('mAP') or 0:.3f}); evaluate and export use it by default")
    lines.append(f"next: detserve evaluate --model-dir {result.model_dir}")
    return "\n".join(lines)
