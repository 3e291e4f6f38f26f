"""Predictors: anything that turns one image into detections, so one evaluation serves every model form.

A predictor takes a uint8 batch of one image ``[1, H, W, 3]`` and returns numpy arrays in the
layout of TFOD2's exported ``serving_default`` signature:

- ``detection_boxes``   float [1, N, 4], normalised (ymin, xmin, ymax, xmax)
- ``detection_scores``  float [1, N]
- ``detection_classes`` float or int [1, N], label-map ids (1-based)
- ``num_detections``    float or int [1]

``served_predictor`` asks a served model (TF Serving or ``detserve serve``) through the client, a batch per
request: a :class:`Batched` predictor, which takes a list of images.

``checkpoint_predictor`` runs a TFOD2 training checkpoint exactly the way TFOD2's exporter wraps the
model (object_detection/exporter_lib_v2.py, DetectionFromImageModule), so an exported SavedModel
and its checkpoint give the same detections. ``saved_model_predictor`` uses plain TensorFlow and
never imports ``object_detection``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detserve.client.contract import (
    DEFAULT_SIGNATURE,
    DETECTION_CLASSES,
    DETECTION_OUTPUTS,
    LABEL_ID_OFFSET,
    NUMERIC_OUTPUTS,
)

from ..checkpoints import resolve_checkpoint

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig

    from detserve.client import Detector

Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Batched:
    """A predictor of several images at once: ``predict([image, ...])`` -> one output dict per image (in the
    layout above, each with a batch dimension of one); evaluation hands it up to ``batch_size`` images, as
    HxWx3 uint8 pixels or, with ``encoded=True``, as the JPEG/PNG bytes the data stores."""

    predict: Callable[[Sequence[np.ndarray | bytes]], list[dict[str, np.ndarray]]]
    batch_size: int
    encoded: bool = False


def batched(predictor: Predictor | Batched) -> Batched:
    """``predictor`` as a :class:`Batched` one (a one-image predictor gets one image at a time)."""
    if isinstance(predictor, Batched):
        return predictor
    return Batched(lambda images: [predictor(image[np.newaxis]) for image in images], batch_size=1)


def served_predictor(detector: Detector, batch_size: int = 8, encoded: bool = False) -> Batched:
    """A served model's detections through ``detector`` (every detection: no score threshold), ``batch_size``
    images per Predict request, as the contract's arrays so that evaluation reads them like any model's.

    ``encoded``: send the data's stored JPEG/PNG bytes as they are (the client's passthrough), decoded by the
    server (TensorFlow's fast IDCT: a few levels from the Pillow decode an in-process evaluation sees); else
    decoded pixels, which the client resizes and rounds to uint8 (raw) or re-encodes (png, jpeg)."""

    def predict(images: Sequence[np.ndarray | bytes]) -> list[dict[str, np.ndarray]]:
        answers = detector.detect_batch(list(images), score_threshold=0.0)
        return [_contract_arrays(detections) for detections in answers]

    return Batched(predict, batch_size, encoded)


def _contract_arrays(detections) -> dict[str, np.ndarray]:
    """The client's Detection objects back into serving_default's layout: normalised (ymin, xmin, ymax, xmax)."""
    boxes = np.array([[d.box_normalized.ymin, d.box_normalized.xmin, d.box_normalized.ymax, d.box_normalized.xmax]
                      for d in detections], dtype=np.float64).reshape(1, -1, 4)
    return {"detection_boxes": boxes,
            "detection_scores": np.array([[d.score for d in detections]], dtype=np.float64).reshape(1, -1),
            "detection_classes": np.array([[d.class_id for d in detections]], dtype=np.int64).reshape(1, -1),
            "num_detections": np.array([len(detections)])}


def _check_image(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != 1 or images.shape[-1] != 3:
        raise ValueError(f"a predictor takes one image as [1, H, W, 3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"a predictor takes uint8 pixels, got {images.dtype}")
    return images


def restore_detection_model(pipeline_config_path: Path | str, checkpoint_path: Path | str,
                            config: TrainEvalPipelineConfig | None = None):
    """(TFOD2 inference model built from ``pipeline.config``, restore status, checkpoint prefix).

    ``config``: the file already parsed (``load_pipeline_config``), so that it is not parsed again.
    ``checkpoint_path`` is a prefix or a directory (its latest checkpoint is used). Restoration is
    deferred: the variables exist (and are restored) once the model has been traced, after which
    ``restore_status.assert_existing_objects_matched()`` tells whether the checkpoint fits (see
    ``checkpoint_mismatch``). Shared by ``checkpoint_predictor`` and ``detserve export``.
    """
    from .. import tfod_compat  # noqa: F401  (before object_detection and TensorFlow)

    # isort: split
    import tensorflow as tf
    from object_detection.builders import model_builder

    from ..pipeline_config import load_pipeline_config

    prefix = resolve_checkpoint(checkpoint_path)
    config = config if config is not None else load_pipeline_config(pipeline_config_path)
    model = model_builder.build(model_config=config.model, is_training=False)
    # A training checkpoint also holds the step and optimizer; only the model is needed here.
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    return model, status, prefix


def detections_from_preprocessed(model, preprocessed, true_shapes) -> dict:
    """TFOD2's exporter path after ``model.preprocess`` (exporter_lib_v2._run_inference_on_images):
    predict -> postprocess -> label-map class ids; the contract's outputs as float32 with a batch dimension."""
    import tensorflow as tf

    predictions = model.predict(preprocessed, true_shapes)
    detections = model.postprocess(predictions, true_shapes)
    # Every postprocess output the contract lists (DETECTION_OUTPUTS), cast as the exporter casts them.
    outputs = {key: tf.cast(detections[key], tf.float32) for key in DETECTION_OUTPUTS if key in detections}
    outputs[DETECTION_CLASSES] += LABEL_ID_OFFSET
    return outputs


def exporter_path_detect(model):
    """A tf.function uint8 [B, H, W, 3] -> detections running ``model`` the way TFOD2's exporter wraps it
    (float pixels -> model.preprocess (resize, normalise) -> predict -> postprocess). Evaluation uses it, and
    the export computes its reference detections with it (independently of detserve's signatures)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def detect(images):
        preprocessed, true_shapes = model.preprocess(tf.cast(images, tf.float32))
        return detections_from_preprocessed(model, preprocessed, true_shapes)

    return detect


def checkpoint_mismatch(prefix: str, pipeline_config_path: Path | str, error: Exception) -> ValueError:
    """The error for a checkpoint that does not fit the model of a pipeline.config."""
    return ValueError(
        f"checkpoint {prefix} does not fit the model of {pipeline_config_path} "
        f"(trained with another pipeline.config?): {_error_summary(error)[:300]}"
    )


def checkpoint_predictor(pipeline_config_path: Path | str, checkpoint_path: Path | str,
                         config: TrainEvalPipelineConfig | None = None) -> Predictor:
    """A TFOD2 model built from ``pipeline.config`` (or ``config``, the file already parsed) with the weights
    of a checkpoint.

    ``checkpoint_path`` is a prefix or a directory (its latest checkpoint is used). Raises
    ValueError when the checkpoint does not fit the model the config describes (e.g. another
    num_classes or backbone), which would otherwise silently evaluate random weights.
    """
    import tensorflow as tf

    model, status, prefix = restore_detection_model(pipeline_config_path, checkpoint_path, config)
    detect = exporter_path_detect(model)

    verified = False

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal verified
        images = tf.constant(_check_image(images))
        if verified:
            return _numeric(detect(images))
        # The first call creates the variables and restores them (deferred restoration): a checkpoint
        # of another architecture fails here with a shape error or leaves variables unrestored.
        try:
            outputs = detect(images)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
            raise checkpoint_mismatch(prefix, pipeline_config_path, error) from error
        verified = True
        return _numeric(outputs)

    return predict


def _numeric(outputs) -> dict[str, np.ndarray]:
    """The contract's numeric outputs as numpy arrays: what evaluation reads of a model's outputs."""
    return {key: outputs[key].numpy() for key in NUMERIC_OUTPUTS}


def _error_summary(error: Exception) -> str:
    """The informative line of a (long, multi-line) TensorFlow error: the one about shapes or unbound objects."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if re.search(r"incompatible tensor with shape|input to reshape|requested shape|not bound to checkpointed", line, re.IGNORECASE):
            return line
    return lines[0] if lines else type(error).__name__


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def saved_model_predictor(path: Path | str, signature: str = DEFAULT_SIGNATURE) -> Predictor:
    """An exported SavedModel's signature, with plain TensorFlow (no object_detection import).

    The signature's single input is fed whatever its name: the uint8 image as is (TFOD2's
    ``image_tensor`` export), cast to float32 (``float_image_tensor``), or PNG-encoded
    (``encoded_image_string_tensor``).
    """
    import tensorflow as tf

    path = Path(path)
    if not (path / "saved_model.pb").exists():
        raise FileNotFoundError(f"no SavedModel at {path} (missing saved_model.pb)")
    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise ValueError(f"SavedModel {path} has no signature {signature!r}; it has {sorted(loaded.signatures)}")
    function = loaded.signatures[signature]
    _, input_specs = function.structured_input_signature
    if len(input_specs) != 1:
        raise ValueError(f"signature {signature!r} of {path} takes {len(input_specs)} inputs {sorted(input_specs)}; expected one image")
    (input_name, spec), = input_specs.items()
    if spec.dtype not in (tf.uint8, tf.float32, tf.string):
        raise ValueError(f"signature {signature!r} of {path} takes {spec.dtype.name} input {input_name!r}; expected uint8, float32 or string")

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        images = _check_image(images)
        if spec.dtype == tf.string:
            value = tf.constant([_encode_png(images[0])])
        else:
            value = tf.constant(images, dtype=spec.dtype)
        # `loaded` is referenced here so the restored variables outlive this function's creation.
        outputs = loaded.signatures[signature](**{input_name: value})
        missing = [key for key in NUMERIC_OUTPUTS if key not in outputs]
        if missing:
            raise ValueError(f"signature {signature!r} of {path} returns {sorted(outputs)}; missing {missing}")
        return _numeric(outputs)

    return predict
