"""TFOD2's ``pipeline.config`` for SSD MobileNetV2 FPN-Lite, built and edited as a proto.

The base is the model zoo's config (templates/, text format: the architecture and TFOD2's settings); what a
user chooses (TrainingOptions: classes, batch, steps, learning rate, augmentation, initialisation) is set on the
parsed ``TrainEvalPipelineConfig``, and TFOD2's ``config_util`` writes it. A command reads a pipeline.config
once (``load_pipeline_config``) and passes the proto along; a bad value fails before training starts.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.client.contract import LABEL_MAP_FILENAME

from .data.label_map import read_label_map
from .options import AUGMENTATIONS, TrainingOptions

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig

TEMPLATE = "ssd_mobilenet_v2_fpnlite_320x320.config.template"
PIPELINE_CONFIG = "pipeline.config"  # the name TFOD2's config_util.save_pipeline_config writes, and train_loop reads

__all__ = [
    "PIPELINE_CONFIG", "TrainingOptions", "build_pipeline_config", "load_pipeline_config",
    "parse_pipeline_config", "render_pipeline_config", "require_label_map", "resolved_anchor_scale",
    "save_pipeline_config", "set_fine_tune_checkpoint", "set_step_budget", "write_pipeline_config",
]


def build_pipeline_config(options: TrainingOptions) -> TrainEvalPipelineConfig:
    """The zoo's base config with ``options`` set on it.

    Raises ValueError naming each bad option, FileNotFoundError when the data has no label map.
    """
    from google.protobuf import text_format

    from .data.tfrecord import split_pattern

    options.validate()
    data_dir = Path(options.data_dir).resolve()
    label_map_path = require_label_map(data_dir)
    config = parse_pipeline_config(resources.files(__package__).joinpath("templates", TEMPLATE).read_text())

    ssd = config.model.ssd
    ssd.num_classes = len(read_label_map(label_map_path))
    ssd.image_resizer.fixed_shape_resizer.height = options.image_size
    ssd.image_resizer.fixed_shape_resizer.width = options.image_size
    ssd.anchor_generator.multiscale_anchor_generator.anchor_scale = resolved_anchor_scale(options)
    ssd.feature_extractor.min_depth = options.min_depth
    ssd.feature_extractor.depth_multiplier = options.depth_multiplier
    predictor = ssd.box_predictor.weight_shared_convolutional_box_predictor
    predictor.depth = options.predictor_depth
    for hyperparams in (predictor.conv_hyperparams, ssd.feature_extractor.conv_hyperparams):
        hyperparams.batch_norm.decay = options.resolved_batch_norm_decay()

    train = config.train_config
    if options.fine_tune_checkpoint:
        set_fine_tune_checkpoint(config, options.fine_tune_checkpoint, options.fine_tune_checkpoint_type)
    train.batch_size = options.batch_size
    for name in options.augmentations:
        text_format.Parse(AUGMENTATIONS[name], train.data_augmentation_options.add())
    cosine = train.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    cosine.learning_rate_base = options.learning_rate
    cosine.warmup_learning_rate = options.resolved_warmup_learning_rate()
    cosine.warmup_steps = options.resolved_warmup_steps()
    set_step_budget(config, options.num_steps)

    readers = [(config.train_input_reader, options.train_split)]
    readers += [(reader, options.eval_split) for reader in config.eval_input_reader]
    for reader, split in readers:
        reader.label_map_path = str(label_map_path)
        reader.tf_record_input_reader.input_path[:] = [split_pattern(data_dir, split)]
    return config


def require_label_map(data_dir: Path | str) -> Path:
    """``<data_dir>/label_map.pbtxt``; FileNotFoundError saying how to make it when it is missing."""
    label_map_path = Path(data_dir).resolve() / LABEL_MAP_FILENAME
    if not label_map_path.is_file():
        raise FileNotFoundError(f"{label_map_path} not found: run `detserve data` first to write TFRecords and the label map")
    return label_map_path


def resolved_anchor_scale(options: TrainingOptions) -> float:
    """``options.anchor_scale``, or the scale fitted to the train split's boxes when it is None."""
    from .anchors import fit_anchor_scale_to_split

    if options.anchor_scale is not None:
        return options.anchor_scale
    return fit_anchor_scale_to_split(options.data_dir, options.train_split, options.image_size).scale


def set_fine_tune_checkpoint(config: TrainEvalPipelineConfig, prefix: str, checkpoint_type: str) -> None:
    """Start training from a TF2 checkpoint: ``classification`` (a backbone) or ``detection`` (a whole detector)."""
    from object_detection.protos import train_pb2

    train = config.train_config
    train.fine_tune_checkpoint = prefix
    train.fine_tune_checkpoint_type = checkpoint_type
    train.fine_tune_checkpoint_version = train_pb2.CheckpointVersion.V2


def set_step_budget(config: TrainEvalPipelineConfig, steps: int) -> None:
    """Train to ``steps`` in total: ``num_steps``, and a cosine schedule's ``total_steps`` (it stretches to it)."""
    train = config.train_config
    train.num_steps = steps
    learning_rate = train.optimizer.momentum_optimizer.learning_rate
    if learning_rate.HasField("cosine_decay_learning_rate"):
        learning_rate.cosine_decay_learning_rate.total_steps = steps


def render_pipeline_config(options: TrainingOptions) -> str:
    """``build_pipeline_config`` as text (what ``write_pipeline_config`` writes)."""
    from google.protobuf import text_format

    return text_format.MessageToString(build_pipeline_config(options))


def write_pipeline_config(options: TrainingOptions, path: Path | str) -> Path:
    return save_pipeline_config(build_pipeline_config(options), path)


def save_pipeline_config(config: TrainEvalPipelineConfig, path: Path | str) -> Path:
    """Write ``config`` to ``path`` with config_util, atomically: a resumed run rewrites the file it trains from."""
    from object_detection.utils import config_util

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # config_util writes <directory>/pipeline.config: into a fresh directory beside ``path``, then renamed over it.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        config_util.save_pipeline_config(config, staging)
        os.replace(Path(staging) / PIPELINE_CONFIG, path)
    return path


def parse_pipeline_config(text: str) -> TrainEvalPipelineConfig:
    """Parse as TFOD2's config_util does (text_format.Merge into TrainEvalPipelineConfig); raises
    text_format.ParseError on a typo."""
    from . import tfod_compat  # noqa: F401  (before object_detection)

    # isort: split
    from google.protobuf import text_format
    from object_detection.protos import pipeline_pb2

    return text_format.Merge(text, pipeline_pb2.TrainEvalPipelineConfig())


def load_pipeline_config(path: Path | str) -> TrainEvalPipelineConfig:
    """Read a pipeline.config into the proto (for the model builder, the evaluation and the exporter); raises
    FileNotFoundError, or text_format.ParseError (which does not name the file: the caller does)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline config {path} not found")
    return parse_pipeline_config(path.read_text())
