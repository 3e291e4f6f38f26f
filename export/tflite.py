"""``detserve export --format tflite``: a TFOD2 SSD checkpoint -> one .tflite for phones and edge boxes.

The graph is TFOD2's own TFLite graph (object_detection/export_tflite_graph_lib_tf2.SSDModule: the model without
its preprocessing, ending in TFLite's TFLite_Detection_PostProcess op), traced from the checkpoint that
``restore_detection_model`` restores (the one evaluation and the SavedModel export use), saved to a scratch
SavedModel and converted by ``tf.lite.TFLiteConverter``:

- ``float16``: weights stored as float16 (half the size; XNNPACK computes in float32), float32 input.
- ``int8``: weights and activations int8, calibrated on images of the training data's TFRecords (pipeline.config's
  train_input_reader, or ``calibration_data``); the input and the post-processing op stay float32.

It writes, into ``out_dir`` (never into a TF Serving repository: TF Serving cannot load a .tflite):
``<name>-<quantize>.tflite``, its sidecar ``<name>-<quantize>.json`` (input size, resize and normalisation, output
names: what an app must do around the graph; training.evaluation.tflite_predictor reads it) and
``<name>-label_map.pbtxt``. The .tflite is run once before it is renamed into place, so a file that is there loads.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TFOD2 (the model builder) needs this before TensorFlow's first import.
import detserve.training.tfod_compat  # noqa: F401, I001

# isort: split
from detserve.training.evaluation.tflite_predictor import (
    TFLiteMetadata,
    TFLiteModelError,
    detection_runner,
    load_interpreter,
    metadata_path,
    prepare_input,
)

from .errors import ExportError
from .labels import load_label_map
from .pipeline import PipelineConfig, read_pipeline_config

Echo = Callable[[str], None]
QUANTIZATIONS = ("float16", "int8")
DEFAULT_QUANTIZE = "float16"
CALIBRATION_IMAGES = 100  # TFLite's guide: ~100-500 representative samples
CALIBRATION_SPLIT = "train"
DEFAULT_OUT = Path("tflite")


@dataclass
class TFLiteResult:
    """What ``export_tflite`` wrote."""

    path: Path
    metadata_path: Path
    label_map_path: Path
    quantize: str
    size_bytes: int
    input_size: tuple[int, int]
    source: str
    seconds: float
    int8_tensors: int  # int8 tensors in the file (0 for float16)
    calibration: str | None = None
    notes: list[str] = field(default_factory=list)


def tflite_paths(out_dir: Path | str, name: str, quantize: str) -> tuple[Path, Path, Path]:
    """(<out>/<name>-<quantize>.tflite, its sidecar .json, <out>/<name>-label_map.pbtxt)."""
    tflite = Path(out_dir) / f"{name}-{quantize}.tflite"
    return tflite, metadata_path(tflite), Path(out_dir) / f"{name}-label_map.pbtxt"


def check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize {quantize!r} is not supported: use {' or '.join(QUANTIZATIONS)}")


def calibration_pattern(pipeline: PipelineConfig, calibration_data: Path | str | None) -> str:
    """The TFRecords int8 calibration reads: ``calibration_data`` (a `detserve data` directory -> its train split,
    or a glob), else pipeline.config's train input. ExportError naming the pattern when nothing matches."""
    import tensorflow as tf

    from detserve.training.evaluation.evaluate import data_pattern

    if calibration_data is not None:
        pattern, where = data_pattern(calibration_data, CALIBRATION_SPLIT), "--calibration-data"
    else:
        paths = pipeline.proto.train_input_reader.tf_record_input_reader.input_path
        if not paths:
            raise ExportError(f"{pipeline.path} has no train_input_reader input_path to calibrate int8 on; "
                              "pass --calibration-data DIR")
        pattern, where = paths[0], f"{pipeline.path} train_input_reader"
    if not tf.io.gfile.glob(pattern):
        raise ExportError(f"int8 calibration data not found: no TFRecord matches {pattern} ({where}); "
                          "pass --calibration-data DIR (a `detserve data` directory)")
    return pattern


def _check_tflite_model(pipeline: PipelineConfig) -> None:
    """TFOD2's TFLite graph exists for SSD models with a fixed-shape bilinear resizer only."""
    from object_detection.protos import image_resizer_pb2

    kind = pipeline.proto.model.WhichOneof("model")
    if kind != "ssd":
        raise ExportError(f"--format tflite exports SSD models; {pipeline.path} defines a {kind} model")
    resizer = pipeline.proto.model.ssd.image_resizer
    if resizer.WhichOneof("image_resizer_oneof") != "fixed_shape_resizer":
        raise ExportError(f"--format tflite needs a fixed_shape_resizer (a fixed input size); {pipeline.path} uses "
                          f"{resizer.WhichOneof('image_resizer_oneof')}")
    if resizer.fixed_shape_resizer.resize_method != image_resizer_pb2.BILINEAR:
        method = image_resizer_pb2.ResizeType.Name(resizer.fixed_shape_resizer.resize_method)
        raise ExportError(f"{pipeline.path}: fixed_shape_resizer resize_method {method} is not supported by the "
                          "TFLite predictor (BILINEAR only)")
    if resizer.fixed_shape_resizer.convert_to_grayscale:
        raise ExportError(f"{pipeline.path}: convert_to_grayscale models are not supported by --format tflite")


def _normalisation(model, input_size: tuple[int, int]) -> tuple[float, float]:
    """(mean, std) with model.preprocess(x) == (x - mean) / std, measured on the model (its feature extractor
    decides; MobileNet's is 127.5, 127.5) and checked to be that affine map."""
    import tensorflow as tf

    probe = tf.constant(np.array([0.0, 127.0, 255.0], np.float32).reshape(3, 1, 1, 1)
                        * np.ones((1, *input_size, 3), np.float32))
    preprocessed, _ = model.preprocess(probe)
    low, mid, high = (float(preprocessed[i, 0, 0, 0]) for i in range(3))
    std = 255.0 / (high - low)
    mean = -low * std
    if not np.isclose((127.0 - mean) / std, mid, atol=1e-4):
        raise ExportError(f"the model's preprocessing is not (x - mean) / std (0 -> {low}, 127 -> {mid}, "
                          f"255 -> {high}): the TFLite graph's input cannot be described")
    return mean, std


def _calibration_images(pattern: str, count: int, metadata: TFLiteMetadata) -> Callable[[], Iterator[list]]:
    """TFLiteConverter's representative_dataset: the first ``count`` images of ``pattern``, prepared exactly as
    the predictor prepares an image (resize, normalise)."""
    from detserve.training.data.tfrecord import read_examples

    def representative() -> Iterator[list]:
        for index, example in enumerate(read_examples(pattern)):
            if index == count:
                break
            yield [prepare_input(example.image, metadata)]

    return representative


def _convert(saved_model: Path, quantize: str, representative) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    else:
        converter.representative_dataset = representative
        # int8 wherever TFLite has an int8 kernel; the rest (the post-processing op) stays float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _smoke_test(content: bytes, metadata: TFLiteMetadata, image: np.ndarray) -> int:
    """Run the converted model once (it must load and answer in the expected layout); its int8 tensor count."""
    interpreter = load_interpreter(content, num_threads=1)
    try:
        outputs = detection_runner(interpreter, "the converted model")(prepare_input(image, metadata))
    except TFLiteModelError as error:
        raise ExportError(f"the converted .tflite does not answer as expected: {error}") from error
    if not np.isfinite(outputs["detection_scores"]).all():
        raise ExportError("the converted .tflite returns non-finite scores")
    return sum(1 for tensor in interpreter.get_tensor_details() if tensor["dtype"] == np.int8)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


def export_tflite(
    pipeline_config: Path | str,
    checkpoint: Path | str | None = None,
    out_dir: Path | str = DEFAULT_OUT,
    name: str = "detector",
    quantize: str = DEFAULT_QUANTIZE,
    *,
    label_map: Path | str | None = None,
    calibration_data: Path | str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    max_detections: int | None = None,
    regular_nms: bool = False,
    echo: Echo | None = None,
) -> TFLiteResult:
    """Export a TFOD2 SSD checkpoint (prefix or directory: its latest; default: pipeline.config's directory) as
    ``<out_dir>/<name>-<quantize>.tflite`` with its sidecar and label map.

    ``max_detections``: default the pipeline's max_total_detections (the SavedModel's, so metrics compare).
    ``regular_nms``: TFLite's per-class NMS (slower) instead of its fast NMS (one class per box, TFOD2's default).
    Raises ExportError (nothing written) on any failure.
    """
    import tensorflow as tf
    from object_detection import export_tflite_graph_lib_tf2

    from detserve.training.evaluation.predictors import checkpoint_mismatch, restore_detection_model

    from .exporter import _NAME
    from .images import sample_images

    echo = echo or (lambda message: None)
    started = time.monotonic()
    check_quantize(quantize)
    if not _NAME.fullmatch(name):
        raise ExportError(f"model name {name!r} must be a plain file name (letters, digits, _ . -)")
    if calibration_images < 1:
        raise ExportError(f"--calibration-images must be at least 1, got {calibration_images}")
    pipeline = read_pipeline_config(pipeline_config)
    _check_tflite_model(pipeline)
    input_size = pipeline.input_size
    chosen = Path(label_map) if label_map else (Path(pipeline.label_map_path) if pipeline.label_map_path else None)
    if chosen is None:
        raise ExportError(f"{pipeline.path} names no label_map_path; pass --label-map")
    _, label_map_text = load_label_map(chosen, pipeline.num_classes)
    pattern = calibration_pattern(pipeline, calibration_data) if quantize == "int8" else None
    max_detections = max_detections or int(pipeline.proto.model.ssd.post_processing
                                            .batch_non_max_suppression.max_total_detections) or 100

    checkpoint = checkpoint if checkpoint is not None else pipeline.path.parent
    try:
        model, status, prefix = restore_detection_model(pipeline.path, checkpoint, config=pipeline.proto)
    except FileNotFoundError as error:
        raise ExportError(str(error)) from error
    echo(f"building TFOD2's TFLite graph of {pipeline.path} with {prefix}, input {input_size[0]}x{input_size[1]}")
    module = export_tflite_graph_lib_tf2.SSDModule(pipeline.proto, model, max_detections, regular_nms)
    try:
        concrete = module.inference_fn.get_concrete_function(
            tf.TensorSpec(module.input_shape(), tf.float32, name="input"))
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
        raise ExportError(str(checkpoint_mismatch(prefix, pipeline.path, error))) from error
    mean, std = _normalisation(model, input_size)
    metadata = TFLiteMetadata(input_size=input_size, mean=mean, std=std, resize="bilinear_legacy", quantize=quantize,
                              label_map=tflite_paths(out_dir, name, quantize)[2].name, max_detections=max_detections,
                              regular_nms=regular_nms, source=f"checkpoint {prefix} + {pipeline.path}",
                              calibration=f"{calibration_images} images of {pattern}" if pattern else None)

    with tempfile.TemporaryDirectory(prefix="detserve-tflite-") as scratch:
        echo("saving the TFLite-ready SavedModel")
        tf.saved_model.save(module, scratch, signatures=concrete)
        echo(f"converting to TFLite ({quantize}" + (f", calibrating on {metadata.calibration})" if pattern else ")"))
        representative = _calibration_images(pattern, calibration_images, metadata) if pattern else None
        try:
            content = _convert(Path(scratch), quantize, representative)
        except Exception as error:  # the converter raises ConverterError and plain RuntimeErrors alike
            raise ExportError(f"TFLite conversion ({quantize}) failed: {str(error).splitlines()[0][:300]}") from error

    samples, _ = sample_images(pattern or pipeline.eval_pattern, count=1)
    int8_tensors = _smoke_test(content, metadata, samples[0])
    if quantize == "int8" and int8_tensors == 0:
        raise ExportError("the int8 conversion produced no int8 tensors")

    tflite, sidecar, label_file = tflite_paths(out_dir, name, quantize)
    notes = [f"replaced {tflite}"] if tflite.exists() else []
    try:
        tflite.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(label_file, lambda path: path.write_text(label_map_text))
        _write_atomically(sidecar, metadata.write)
        _write_atomically(tflite, lambda path: path.write_bytes(content))
    except OSError as error:
        raise ExportError(f"cannot write into {tflite.parent}: {error}") from error
    return TFLiteResult(path=tflite, metadata_path=sidecar, label_map_path=label_file, quantize=quantize,
                        size_bytes=len(content), input_size=input_size, source=metadata.source,
                        seconds=time.monotonic() - started, int8_tensors=int8_tensors,
                        calibration=metadata.calibration, notes=notes)


def format_tflite_summary(result: TFLiteResult) -> str:
    """The lines `detserve export --format tflite` prints."""
    lines = [f"exported {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.quantize}) in {result.seconds:.0f} s",
             f"  source      {result.source}",
             f"  input       float32 [1, {result.input_size[0]}, {result.input_size[1]}, 3], resized and normalised "
             f"as {result.metadata_path.name} says",
             f"  labels      {result.label_map_path}"]
    if result.calibration:
        lines.append(f"  calibration {result.calibration} ({result.int8_tensors} int8 tensors)")
    lines.extend(f"  note        {note}" for note in result.notes)
    return "\n".join(lines)
