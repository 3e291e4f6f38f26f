"""The export's combined NMS (detserve.export.combined_nms): when it replaces TFOD2's default batch NMS, and that
it selects the same detections on a trained model."""

from __future__ import annotations

import detserve.training.tfod_compat  # noqa: F401  (before TensorFlow, so TFOD2 works in this process)

# isort: split
import numpy as np
import pytest
from google.protobuf import text_format
from object_detection.protos import pipeline_pb2

from detserve.export.combined_nms import combined_nms, nms_replaced
from detserve.export.parity import Tolerance, compare_detections

SSD = """model { ssd {
  num_classes: 2
  image_resizer { %s }
  post_processing {
    batch_non_max_suppression { score_threshold: 1e-8 iou_threshold: 0.6 max_detections_per_class: 100
                                max_total_detections: 100 %s }
    score_converter: SIGMOID
  }
} }"""
FIXED = "fixed_shape_resizer { height: 320 width: 320 }"
KEEP_ASPECT = "keep_aspect_ratio_resizer { min_dimension: 320 max_dimension: 320 pad_to_max_dimension: true }"


def config(resizer: str = FIXED, nms: str = "") -> pipeline_pb2.TrainEvalPipelineConfig:
    return text_format.Parse(SSD % (resizer, nms), pipeline_pb2.TrainEvalPipelineConfig())


def test_tfod2_ssd_default_gets_tfod2s_combined_nms_with_the_configured_thresholds():
    chosen = combined_nms(config())
    assert chosen.function is not None, chosen.reason
    settings = chosen.function.keywords  # the functools.partial post_processing_builder returns
    assert settings["use_combined_nms"] is True
    # The default change_coordinate_frame is a no-op with the whole-image window of a fixed-shape resizer.
    assert settings["change_coordinate_frame"] is False
    assert (settings["score_thresh"], settings["iou_thresh"]) == (pytest.approx(1e-8), pytest.approx(0.6))
    assert (settings["max_size_per_class"], settings["max_total_size"]) == (100, 100)


@pytest.mark.parametrize(("resizer", "nms", "reason"), [
    (FIXED, "use_class_agnostic_nms: true", "use_class_agnostic_nms"),
    (FIXED, "soft_nms_sigma: 0.5", "soft_nms_sigma"),
    (FIXED, "use_static_shapes: true", "use_static_shapes"),
    (FIXED, "use_combined_nms: true", "already sets use_combined_nms"),
    (KEEP_ASPECT, "", "a keep_aspect_ratio_resizer (its clip window is not always the whole image)"),
    (KEEP_ASPECT, "change_coordinate_frame: false", "keep_aspect_ratio_resizer"),
])
def test_settings_the_combined_kernel_would_answer_differently_keep_the_models_nms(resizer, nms, reason):
    chosen = combined_nms(config(resizer, nms))
    assert chosen.function is None
    assert reason in chosen.reason


def test_models_other_than_ssd_keep_their_nms():
    faster_rcnn = text_format.Parse("model { faster_rcnn { num_classes: 2 } }", pipeline_pb2.TrainEvalPipelineConfig())
    chosen = combined_nms(faster_rcnn)
    assert chosen.function is None and "faster_rcnn" in chosen.reason
    no_nms = text_format.Parse("model { ssd { num_classes: 2 post_processing { score_converter: SIGMOID } } }",
                               pipeline_pb2.TrainEvalPipelineConfig())
    assert "no batch_non_max_suppression" in combined_nms(no_nms).reason


class _Model:
    _non_max_suppression_fn = "configured"


def test_nms_replaced_restores_the_models_nms_even_when_tracing_fails():
    model = _Model()
    with pytest.raises(RuntimeError), nms_replaced(model, "combined"):
        assert model._non_max_suppression_fn == "combined"
        raise RuntimeError("trace failed")
    assert model._non_max_suppression_fn == "configured"
    with nms_replaced(model, None):
        assert model._non_max_suppression_fn == "configured"


@pytest.mark.slow
def test_combined_nms_selects_the_same_detections_as_tfod2s_default_on_a_trained_model(trained_model):
    """Every image of the test split, alone and as one batch: the same detections (float rounding only: the
    selection runs on the same boxes and scores), not one NMS decision different."""
    import tensorflow as tf

    from detserve.training.data.tfrecord import read_examples, split_pattern
    from detserve.training.evaluation.predictors import detections_from_preprocessed, restore_detection_model
    from detserve.training.pipeline_config import load_pipeline_config

    pipeline = trained_model.model_dir / "pipeline.config"
    parsed = load_pipeline_config(pipeline)
    model, status, _ = restore_detection_model(pipeline, trained_model.model_dir, config=parsed)
    chosen = combined_nms(parsed)
    assert chosen.function is not None, chosen.reason

    def detect(nms):
        @tf.function
        def run(images):
            preprocessed, shapes = model.preprocess(tf.cast(images, tf.float32))
            return detections_from_preprocessed(model, preprocessed, shapes)

        def call(batch):
            with nms_replaced(model, nms):
                return {key: value.numpy() for key, value in run(tf.constant(batch)).items()}
        return call

    default, combined = detect(None), detect(chosen.function)
    images = [example.image for example in read_examples(split_pattern(trained_model.data_dir, "test"))]
    status.assert_existing_objects_matched()
    exact = Tolerance(score=1e-6, box=1e-6)
    compared = 0
    same_size = [image for image in images if image.shape == images[0].shape]
    batches = [image[np.newaxis] for image in images] + [np.stack(same_size)]
    assert len(batches) >= 4
    for batch in batches:
        reference, candidate = default(batch), combined(batch)
        np.testing.assert_array_equal(candidate["num_detections"], reference["num_detections"])
        for row in range(len(batch)):
            result = compare_detections(reference, candidate, row, row, tolerance=exact)
            assert result["ok"] and result["nms_flips"] == 0, result["problem"]
            compared += result["compared"]
    assert compared >= 10 * len(images)  # real detections were compared, not empty outputs
