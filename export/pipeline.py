"""What an export reads from a TFOD2 pipeline.config, parsed once per export and passed along.

The file is parsed as TFOD2's config_util parses it (``detserve.training.pipeline_config``); everything the
export needs from it (classes, input size, NMS settings, label map and evaluation data, and the proto that
TFOD2's model builder takes) comes from that one parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

# TFOD2's protos come with TensorFlow, which must see tfod_compat's settings first.
import detserve.training.tfod_compat  # noqa: F401, I001

# isort: split
from .errors import ExportError

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig


class Nms(NamedTuple):
    """The model's non-max suppression, as ``detserve.export.parity.measure_tolerance`` takes it."""

    iou_threshold: float | None  # None: the comparison assumes TFOD2's SSD 0.6
    class_agnostic: bool
    score_threshold: float


NO_NMS = Nms(None, False, 0.0)  # no pipeline.config, or one naming no batch_non_max_suppression


@dataclass(frozen=True)
class PipelineConfig:
    """The parts of one pipeline.config an export uses."""

    path: Path
    num_classes: int
    input_size: tuple[int, int] | None  # (height, width) every image is resized to
    nms: Nms
    label_map_path: str | None
    eval_pattern: str | None  # the first evaluation TFRecord pattern, for sample images
    proto: TrainEvalPipelineConfig = field(repr=False, compare=False)  # for TFOD2's model builder


def read_pipeline_config(path: Path | str) -> PipelineConfig:
    """Parse ``path`` once; ExportError naming the file if it is missing, does not parse or has no model."""
    from google.protobuf import text_format

    from detserve.training.pipeline_config import load_pipeline_config

    path = Path(path)
    try:
        config = load_pipeline_config(path)
    except FileNotFoundError as error:
        raise ExportError(f"pipeline config not found: {path}") from error
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise ExportError(f"cannot parse pipeline config {path}: {error}") from error
    kind = config.model.WhichOneof("model")
    if kind is None:
        raise ExportError(f"pipeline config {path} defines no model")
    model = getattr(config.model, kind)
    return PipelineConfig(path=path, num_classes=int(model.num_classes), input_size=_input_size(model),
                          nms=_nms(model), label_map_path=_label_map_path(config), eval_pattern=_eval_pattern(config),
                          proto=config)


def _input_size(model) -> tuple[int, int] | None:
    resizer = model.image_resizer
    kind = resizer.WhichOneof("image_resizer_oneof")
    if kind == "fixed_shape_resizer":
        return int(resizer.fixed_shape_resizer.height), int(resizer.fixed_shape_resizer.width)
    if kind == "keep_aspect_ratio_resizer" and resizer.keep_aspect_ratio_resizer.pad_to_max_dimension:
        size = int(resizer.keep_aspect_ratio_resizer.max_dimension)
        return size, size
    return None


def _nms(model) -> Nms:
    # SSD configs name it post_processing, Faster R-CNN second_stage_post_processing.
    post = getattr(model, "post_processing", None) or getattr(model, "second_stage_post_processing", None)
    if post is None or not post.HasField("batch_non_max_suppression"):
        return NO_NMS
    nms = post.batch_non_max_suppression
    return Nms(float(nms.iou_threshold), bool(nms.use_class_agnostic_nms), float(nms.score_threshold))


def _label_map_path(config) -> str | None:
    readers = [*config.eval_input_reader, config.train_input_reader]
    return next((reader.label_map_path for reader in readers if reader.label_map_path), None)


def _eval_pattern(config) -> str | None:
    paths = (reader.tf_record_input_reader.input_path for reader in config.eval_input_reader)
    return next((path[0] for path in paths if path), None)
