"""Prepare a training run directory: a new pipeline.config and initialisation, or a resume."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from detserve.training.checkpoints import checkpoint_step, latest_checkpoint
from detserve.training.initialisation import detection_checkpoint, resolve_backbone_weights
from detserve.training.pipeline_config import (
    TrainingOptions,
    load_pipeline_config,
    parse_pipeline_config,
    render_pipeline_config,
    write_pipeline_config,
)
from detserve.training.train import PIPELINE_CONFIG, TrainResult

PRETRAINED_BATCH_NORM_DECAY = 0.997  # the model zoo's
SCRATCH_BATCH_NORM_DECAY = 0.9


@dataclass
class TrainingRequest:
    data_dir: Path
    model_dir: Path
    steps: int
    batch_size: int = 8
    learning_rate: float = 0.04
    warmup_steps: int | None = None
    depth_multiplier: float = 0.5
    image_size: int = 320
    augmentations: list[str] | None = None
    backbone_weights: str | None = None
    backbone_weights_sha256: str | None = None  # None: the known one of the `imagenet` file, none for a path
    fine_tune_checkpoint: str | None = None
    batch_norm_decay: float | None = None  # None: 0.997 from pretrained weights, 0.9 from scratch

    def resolved_batch_norm_decay(self) -> float:
        if self.batch_norm_decay is not None:
            return self.batch_norm_decay
        # Measured on the synthetic demo (600 steps from scratch): decay 0.997 gave mAP 0.0003 because
        # inference's moving statistics had not caught up; 0.9 gave mAP 0.82.
        return SCRATCH_BATCH_NORM_DECAY if self.from_scratch else PRETRAINED_BATCH_NORM_DECAY

    @property
    def from_scratch(self) -> bool:
        return not (self.backbone_weights or self.fine_tune_checkpoint)

    def options(self) -> TrainingOptions:
        warmup = self.warmup_steps if self.warmup_steps is not None else min(300, self.steps // 10)
        return TrainingOptions(
            data_dir=self.data_dir, num_steps=self.steps, batch_size=self.batch_size,
            learning_rate=self.learning_rate, warmup_steps=warmup,
            # The zoo config warms up from a third of the peak rate.
            warmup_learning_rate=round(self.learning_rate / 3, 6),
            image_size=self.image_size, depth_multiplier=self.depth_multiplier,
            batch_norm_decay=self.resolved_batch_norm_decay(),
            augmentations=list(self.augmentations if self.augmentations is not None else ["flip", "crop"]),
        )


def prepare_run(request: TrainingRequest) -> Iterator[str]:
    """Write ``<model_dir>/pipeline.config`` (new run) or extend it (resume); yields what it did."""
    model_dir = Path(request.model_dir)
    config_path = model_dir / PIPELINE_CONFIG
    latest = latest_checkpoint(model_dir) if model_dir.is_dir() else None
    if latest and config_path.is_file():
        yield from _extend_run(config_path, latest, request.steps)
        return

    options = request.options()
    if request.fine_tune_checkpoint:
        options.fine_tune_checkpoint = detection_checkpoint(request.fine_tune_checkpoint)
        options.fine_tune_checkpoint_type = "detection"
        yield f"initialising from detection checkpoint {options.fine_tune_checkpoint}"
    elif request.backbone_weights:
        from detserve.training.backbone import import_backbone_weights

        h5_path = resolve_backbone_weights(request.backbone_weights, request.depth_multiplier,
                                           request.backbone_weights_sha256)
        model_config = parse_pipeline_config(render_pipeline_config(options)).model
        imported = import_backbone_weights(h5_path, model_config, model_dir / "backbone" / "imagenet")
        options.fine_tune_checkpoint = imported.checkpoint_prefix
        options.fine_tune_checkpoint_type = "classification"
        yield (
            f"initialising the backbone from {h5_path.name}: {imported.tensors} tensors in {imported.layers} layers"
            + (f" ({len(imported.truncated)} truncated to alpha {request.depth_multiplier}: Conv_1)" if imported.truncated else "")
        )
    else:
        yield (
            f"training from scratch (batch-norm decay {options.batch_norm_decay}): fine for simple data; real photos "
            "need --backbone-weights or --fine-tune-checkpoint"
        )
    write_pipeline_config(options, config_path)
    yield f"wrote {config_path}"


def _extend_run(config_path: Path, latest: str, steps: int) -> Iterator[str]:
    """Resume: the existing config stays (same model), only the step budget can grow."""
    from google.protobuf import text_format

    config = load_pipeline_config(config_path)
    step = checkpoint_step(latest)
    yield f"resuming from {latest} (step {step}); model options come from the existing {config_path}"
    train_config = config.train_config
    if steps != train_config.num_steps:
        train_config.num_steps = steps
        learning_rate = train_config.optimizer.momentum_optimizer.learning_rate
        if learning_rate.HasField("cosine_decay_learning_rate"):
            learning_rate.cosine_decay_learning_rate.total_steps = steps
        config_path.write_text(text_format.MessageToString(config))
        yield f"step budget set to {steps} in {config_path}"


def report_training(result: TrainResult) -> str:
    if not result.history:
        return f"nothing to do: {result.checkpoint} is already at step {result.final_step}"
    first, last = result.history[0], result.history[-1]
    return (
        f"trained steps {result.start_step}->{result.final_step} in {result.seconds:.0f}s; "
        f"total loss {first.total_loss:.3f} (step {first.step}) -> {last.total_loss:.3f} (step {last.step}); "
        f"{result.images_per_sec:.1f} images/s (median)\ncheckpoint: {result.checkpoint}\n"
        f"next: detserve evaluate --model-dir {result.model_dir}"
    )
