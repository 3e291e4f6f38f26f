"""What a user chooses for a training run, with detserve's defaults: the one place they are stated.

`detserve train`'s options read their defaults here, and `make train` passes a flag only when its variable is
set, so a default changes in this module alone (docs/training.md lists them). Importable without TensorFlow:
the CLI reads it when the ``detserve`` command starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The augmentations a user can switch on by name, as TFOD2 preprocessing steps (PreprocessingStep text format).
AUGMENTATIONS = {
    "flip": "random_horizontal_flip {}",
    "crop": (
        "random_crop_image { min_object_covered: 0.0 min_aspect_ratio: 0.75 max_aspect_ratio: 3.0 "
        "min_area: 0.75 max_area: 1.0 overlap_thresh: 0.0 }"
    ),
    "brightness": "random_adjust_brightness { max_delta: 0.2 }",
    "contrast": "random_adjust_contrast { min_delta: 0.8 max_delta: 1.25 }",
}
DEFAULT_AUGMENTATIONS = ("flip", "crop")  # the zoo config's two

INIT_TYPES = ("classification", "detection")

# Linear warm-up over min(MAX_WARMUP_STEPS, num_steps // WARMUP_DIVISOR) steps, from a third of the peak rate
# as the zoo config does.
MAX_WARMUP_STEPS = 300
WARMUP_DIVISOR = 10
WARMUP_RATE_DIVISOR = 3

# Moving-average decay of every batch norm. The zoo's 0.997 suits fine-tuning from pretrained statistics. A
# short run from scratch needs faster-moving statistics, or inference, which uses the moving averages, sees
# activations they never caught up with: measured on the synthetic demo (600 steps from scratch), decay 0.997
# gave mAP 0.0003, 0.9 gave mAP 0.82.
PRETRAINED_BATCH_NORM_DECAY = 0.997
SCRATCH_BATCH_NORM_DECAY = 0.9

CHECKPOINT_EVERY = 500  # steps between the checkpoints train_loop saves (detserve also saves the last step)


def default_warmup_steps(num_steps: int) -> int:
    """The warm-up of a ``num_steps`` run when none is given (also refitted to a --time-budget's derived steps)."""
    return min(MAX_WARMUP_STEPS, num_steps // WARMUP_DIVISOR)


def default_batch_norm_decay(pretrained: bool) -> float:
    return PRETRAINED_BATCH_NORM_DECAY if pretrained else SCRATCH_BATCH_NORM_DECAY


@dataclass
class TrainingOptions:
    """Everything in pipeline.config a user chooses. Defaults follow the measured CPU recipe; ``None`` means
    "derived from the other options" (see the ``resolved_*`` methods)."""

    data_dir: Path
    num_steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 0.04  # the peak of the cosine schedule
    warmup_steps: int | None = None
    warmup_learning_rate: float | None = None
    image_size: int = 320
    # None: fitted to the train split's boxes (training/anchors.py); the zoo's is 4.0.
    anchor_scale: float | None = None
    depth_multiplier: float = 0.5  # MobileNetV2 alpha
    # 8 (the zoo: 16) so that ImageNet weights of width < 1.0 fit the backbone layer for layer.
    min_depth: int = 8
    predictor_depth: int = 128
    batch_norm_decay: float | None = None
    augmentations: list[str] = field(default_factory=lambda: list(DEFAULT_AUGMENTATIONS))
    # A TF2 checkpoint prefix to start from, and what it holds (a backbone or a whole detector).
    fine_tune_checkpoint: str | None = None
    fine_tune_checkpoint_type: str = "classification"
    train_split: str = "train"
    eval_split: str = "test"

    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return default_warmup_steps(self.num_steps)

    def resolved_warmup_learning_rate(self) -> float:
        if self.warmup_learning_rate is not None:
            return self.warmup_learning_rate
        return round(self.learning_rate / WARMUP_RATE_DIVISOR, 6)

    def resolved_batch_norm_decay(self) -> float:
        if self.batch_norm_decay is not None:
            return self.batch_norm_decay
        return default_batch_norm_decay(pretrained=bool(self.fine_tune_checkpoint))

    def validate(self) -> None:
        """Raise ValueError naming every bad option."""
        problems = []
        warmup_steps, warmup_rate = self.resolved_warmup_steps(), self.resolved_warmup_learning_rate()
        batch_norm_decay = self.resolved_batch_norm_decay()
        if self.num_steps < 1:
            problems.append(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= warmup_steps < self.num_steps:
            # TFOD2's cosine schedule rejects warmup_steps >= total_steps.
            problems.append(f"warmup_steps must be in [0, num_steps), got {warmup_steps} (num_steps {self.num_steps})")
        if not 0 < batch_norm_decay < 1:
            problems.append(f"batch_norm_decay must be in (0, 1), got {batch_norm_decay}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if warmup_rate > self.learning_rate:
            problems.append(f"warmup_learning_rate {warmup_rate} must not exceed learning_rate {self.learning_rate}")
        if self.anchor_scale is not None and not 0 < self.anchor_scale <= 16:
            problems.append(f"anchor_scale must be in (0, 16], got {self.anchor_scale}")
        if self.image_size < 64 or self.image_size % 32:
            problems.append(f"image_size must be a multiple of 32 and >= 64 (FPN levels 3-7), got {self.image_size}")
        unknown = sorted(set(self.augmentations) - AUGMENTATIONS.keys())
        if unknown:
            problems.append(f"unknown augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}")
        if self.fine_tune_checkpoint_type not in INIT_TYPES:
            problems.append(f"fine_tune_checkpoint_type must be one of {INIT_TYPES}, got {self.fine_tune_checkpoint_type!r}")
        if problems:
            raise ValueError("invalid training options: " + "; ".join(problems))
