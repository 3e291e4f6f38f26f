"""Generate TFOD2's ``pipeline.config`` for SSD MobileNetV2 FPN-Lite from a template.

The template is the model zoo's config; what a user tunes (classes, batch, steps, learning rate,
augmentation, initialisation) is filled in here, and the result is parsed with TFOD2's own protos
so that a bad value fails before training starts.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import detserve.training.tfod_compat  # noqa: F401, I001  (before object_detection)
from detserve.training.data.label_map import read_label_map
from detserve.training.data.tfrecord import split_pattern

TEMPLATE = "ssd_mobilenet_v2_fpnlite_320x320.config.template"

# The augmentations a user can switch on by name, as TFOD2 preprocessor steps.
AUGMENTATIONS = {
    "flip": "random_horizontal_flip {\n    }",
    "crop": (
        "random_crop_image {\n      min_object_covered: 0.0\n      min_aspect_ratio: 0.75\n"
        "      max_aspect_ratio: 3.0\n      min_area: 0.75\n      max_area: 1.0\n      overlap_thresh: 0.0\n    }"
    ),
    "brightness": "random_adjust_brightness {\n      max_delta: 0.2\n    }",
    "contrast": "random_adjust_contrast {\n      min_delta: 0.8\n      max_delta: 1.25\n    }",
}

INIT_TYPES = ("classification", "detection")


@dataclass
class TrainingOptions:
    """Everything in pipeline.config a user chooses. Defaults follow the measured CPU recipe."""

    data_dir: Path
    num_steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 0.04
    warmup_steps: int = 300
    warmup_learning_rate: float = 0.013333
    image_size: int = 320
    depth_multiplier: float = 0.5
    min_depth: int = 8
    predictor_depth: int = 128
    # Moving-average decay of every batch norm. The zoo's 0.997 suits fine-tuning from pretrained
    # statistics; a short run from scratch needs faster-moving statistics (e.g. 0.9) or inference,
    # which uses the moving averages, sees activations the averages never caught up with.
    batch_norm_decay: float = 0.997
    augmentations: list[str] = field(default_factory=lambda: ["flip", "crop"])
    # A TF2 checkpoint prefix to start from, and what it holds (a backbone or a whole detector).
    fine_tune_checkpoint: str | None = None
    fine_tune_checkpoint_type: str = "classification"
    train_split: str = "train"
    eval_split: str = "test"

    def validate(self) -> None:
        problems = []
        if self.num_steps < 1:
            problems.append(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.warmup_steps < self.num_steps:
            # TFOD2's cosine schedule rejects warmup_steps >= total_steps.
            problems.append(f"warmup_steps must be in [0, num_steps), got {self.warmup_steps} (num_steps {self.num_steps})")
        if not 0 < self.batch_norm_decay < 1:
            problems.append(f"batch_norm_decay must be in (0, 1), got {self.batch_norm_decay}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_learning_rate > self.learning_rate:
            problems.append(
                f"warmup_learning_rate {self.warmup_learning_rate} must not exceed learning_rate {self.learning_rate}"
            )
        if self.image_size < 64 or self.image_size % 32:
            problems.append(f"image_size must be a multiple of 32 and >= 64 (FPN levels 3-7), got {self.image_size}")
        unknown = sorted(set(self.augmentations) - AUGMENTATIONS.keys())
        if unknown:
            problems.append(f"unknown augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}")
        if self.fine_tune_checkpoint_type not in INIT_TYPES:
            problems.append(f"fine_tune_checkpoint_type must be one of {INIT_TYPES}, got {self.fine_tune_checkpoint_type!r}")
        if problems:
            raise ValueError("invalid training options: " + "; ".join(problems))


def render_pipeline_config(options: TrainingOptions) -> str:
    """Fill the template; raises ValueError naming the bad option or missing file."""
    options.validate()
    data_dir = Path(options.data_dir).resolve()
    label_map_path = data_dir / "label_map.pbtxt"
    if not label_map_path.is_file():
        raise FileNotFoundError(f"{label_map_path} not found: run `detserve data` first to write TFRecords and the label map")
    num_classes = len(read_label_map(label_map_path))

    fine_tune = ""
    if options.fine_tune_checkpoint:
        fine_tune = (
            f'  fine_tune_checkpoint: "{options.fine_tune_checkpoint}"\n'
            f'  fine_tune_checkpoint_type: "{options.fine_tune_checkpoint_type}"\n'
            "  fine_tune_checkpoint_version: V2\n"
        )
    augmentation = "".join(
        f"  data_augmentation_options {{\n    {AUGMENTATIONS[name]}\n  }}\n" for name in options.augmentations
    )
    template = string.Template(resources.files("detserve.training").joinpath("templates", TEMPLATE).read_text())
    return template.substitute(
        num_classes=num_classes,
        image_size=options.image_size,
        predictor_depth=options.predictor_depth,
        batch_norm_decay=options.batch_norm_decay,
        min_depth=options.min_depth,
        depth_multiplier=options.depth_multiplier,
        fine_tune=fine_tune,
        batch_size=options.batch_size,
        num_steps=options.num_steps,
        augmentation=augmentation,
        learning_rate=options.learning_rate,
        warmup_learning_rate=options.warmup_learning_rate,
        warmup_steps=options.warmup_steps,
        label_map_path=label_map_path,
        train_input_path=split_pattern(data_dir, options.train_split),
        eval_input_path=split_pattern(data_dir, options.eval_split),
    )


def parse_pipeline_config(text: str):
    """Parse with TFOD2's TrainEvalPipelineConfig proto (raises text_format.ParseError on a typo)."""
    from google.protobuf import text_format
    from object_detection.protos import pipeline_pb2

    return text_format.Parse(text, pipeline_pb2.TrainEvalPipelineConfig())


def write_pipeline_config(options: TrainingOptions, path: Path | str) -> Path:
    text = render_pipeline_config(options)
    parse_pipeline_config(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_pipeline_config(path: Path | str):
    """Read a pipeline.config into the proto (for the model builder and the exporter)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline config {path} not found")
    return parse_pipeline_config(path.read_text())
