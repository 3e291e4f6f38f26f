"""evaluate() over TFRecords, the predictors (SavedModel, TFOD2 checkpoint) and `detserve evaluate`."""

from __future__ import annotations

import io
from pathlib import Path

import detserve.training.tfod_compat  # noqa: F401  (before TensorFlow, so TFOD2 works in this process)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from detserve.training.checkpoints import latest_checkpoint
from detserve.training.data.label_map import write_label_map
from detserve.training.data.records import BoxObject, ImageRecord
from detserve.training.data.tfrecord import EncodedImage, make_example, write_shards
from detserve.training.evaluation.cli import evaluate as evaluate_command
from detserve.training.evaluation.confusion import CONFUSION_FILENAME
from detserve.training.evaluation.evaluate import GRID_FILENAME, evaluate, unbatch_detections
from detserve.training.evaluation.predictors import checkpoint_predictor, saved_model_predictor
from detserve.training.evaluation.report import METRICS_FILENAME, read_metrics_json

CLASSES = ["with_mask", "without_mask"]
HEIGHT, WIDTH = 64, 96
# Every image has one with_mask face here, in pixels (xmin, ymin, xmax, ymax) = normalised (.25, .25, .75, .75).
CENTRE = (24, 16, 72, 48)


def write_dataset(data_dir: Path, split: str = "test", num_images: int = 4) -> list[ImageRecord]:
    """Uniform images (pixel value 10*i + 5 identifies image i), a centre with_mask face in each and
    a small without_mask face in the odd ones, as PNG tf.Examples in two shards + label_map.pbtxt."""
    data_dir.mkdir(parents=True, exist_ok=True)
    label_to_id = {name: i for i, name in write_label_map(CLASSES, data_dir / "label_map.pbtxt").items()}
    records, examples = [], []
    for i in range(num_images):
        objects = [BoxObject("with_mask", *CENTRE)]
        if i % 2:
            objects.append(BoxObject("without_mask", 2, 2, 14, 10, difficult=True))
        record = ImageRecord(Path(f"img_{i}.png"), WIDTH, HEIGHT, objects)
        buffer = io.BytesIO()
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 10 * i + 5, np.uint8)).save(buffer, format="PNG")
        examples.append(make_example(record, EncodedImage(buffer.getvalue(), "png", WIDTH, HEIGHT), label_to_id))
        records.append(record)
    write_shards(examples, data_dir, split, num_shards=2)
    return records


def perfect_predictor(records: list[ImageRecord]):
    """Returns each image's ground truth (found by its pixel value), padded like an exported model."""
    ids = {name: i + 1 for i, name in enumerate(CLASSES)}

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        record = records[(int(images[0, 0, 0, 0]) - 5) // 10]
        n = len(record.objects)
        boxes = np.zeros((1, 100, 4), np.float32)
        boxes[0, :n] = [[o.ymin / HEIGHT, o.xmin / WIDTH, o.ymax / HEIGHT, o.xmax / WIDTH] for o in record.objects]
        scores = np.zeros((1, 100), np.float32)
        scores[0, :n] = 0.9
        classes = np.ones((1, 100), np.float32)
        classes[0, :n] = [ids[o.label] for o in record.objects]
        return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
                "num_detections": np.array([n], np.float32)}

    return predict


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    write_dataset(directory)
    return directory


def test_unbatch_keeps_num_detections_and_makes_classes_int():
    boxes, scores, classes = unbatch_detections({
        "detection_boxes": np.ones((1, 3, 4)), "detection_scores": np.array([[0.9, 0.8, 0.7]]),
        "detection_classes": np.array([[1.0, 2.0, 1.0]]), "num_detections": np.array([2.0])})
    assert boxes.shape == (2, 4) and scores.tolist() == [0.9, 0.8]
    assert classes.dtype == np.int64 and classes.tolist() == [1, 2]
    with pytest.raises(ValueError, match="detection_boxes"):
        unbatch_detections({"boxes": np.ones((1, 1, 4))})


def test_evaluate_perfect_predictor_writes_metrics_and_pngs(tmp_path):
    records = write_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    metrics = evaluate(perfect_predictor(records), tmp_path / "data", {1: "with_mask", 2: "without_mask"}, out,
                       model_info={"kind": "test"}, progress=False)
    # The centre faces are 48x32 = 1536 px (medium), the odd images' faces 12x8 (small); none large.
    for key in ("DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU",
                "DetectionBoxes_Precision/mAP (small)", "DetectionBoxes_Precision/mAP (medium)",
                "DetectionBoxes_Recall/AR@1", "DetectionBoxes_Recall/AR@100",
                "DetectionBoxes_PerformanceByCategory/mAP@.50IOU/without_mask"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["DetectionBoxes_Precision/mAP (large)"] is None

    document = read_metrics_json(out / METRICS_FILENAME)
    assert document["metrics"] == metrics
    assert document["num_images"] == 4 and document["num_groundtruth"] == 6
    assert document["model"] == {"kind": "test"}
    assert document["data"].endswith("test-?????-of-?????.tfrecord")
    for name in CLASSES:
        with Image.open(out / f"pr_curve_{name}.png") as image:
            assert image.format == "PNG" and image.size == (600, 450)
    with Image.open(out / GRID_FILENAME) as image:
        assert image.size == (1200, 800)  # 4 images: 3 columns, 2 rows of 400 px
    # Every object found with its own class: only the diagonal of the confusion matrix is filled.
    assert document["confusion_matrix"]["labels"] == [*CLASSES, "background"]
    assert document["confusion_matrix"]["counts"] == [[4, 0, 0], [0, 2, 0], [0, 0, 0]]
    assert document["files"]["confusion_matrix"] == CONFUSION_FILENAME
    with Image.open(out / CONFUSION_FILENAME) as image:
        assert image.format == "PNG"


def test_evaluate_counts_confusions_from_the_same_predictions(tmp_path):
    records = write_dataset(tmp_path / "data")
    perfect = perfect_predictor(records)

    def without_mask_called_with_mask(images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = perfect(images)
        return {**outputs, "detection_classes": np.ones_like(outputs["detection_classes"])}

    evaluate(without_mask_called_with_mask, tmp_path / "data", {1: "with_mask", 2: "without_mask"},
             tmp_path / "eval", progress=False)
    document = read_metrics_json(tmp_path / "eval" / METRICS_FILENAME)
    # The two small without_mask faces are found, as with_mask: two confusions, nothing missed.
    assert document["confusion_matrix"]["counts"] == [[4, 0, 0], [2, 0, 0], [0, 0, 0]]
    assert document["confusion_matrix"]["score_threshold"] == document["grid_score_threshold"]


def test_evaluate_max_images_and_glob(tmp_path, data_dir):
    records = write_dataset(tmp_path / "unused")  # same records as data_dir's
    metrics = evaluate(perfect_predictor(records), str(data_dir / "test-*.tfrecord"), {1: "with_mask", 2: "without_mask"},
                       tmp_path / "eval", max_images=1, grid_images=1, progress=False)
    document = read_metrics_json(tmp_path / "eval" / METRICS_FILENAME)
    assert document["num_images"] == 1
    # Image 0 has no without_mask face.
    assert metrics["DetectionBoxes_PerformanceByCategory/mAP@.50IOU/without_mask"] is None
    with Image.open(tmp_path / "eval" / GRID_FILENAME) as image:
        assert image.size == (400, 400)


def test_evaluate_without_records_names_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="test-"):
        evaluate(lambda images: {}, tmp_path, {1: "a"}, tmp_path / "eval", progress=False)


class TinyDetector(tf.Module):
    """A stand-in for an exported detector: one box at the image centre (class 1, score = mean pixel
    / 255, so the image must arrive intact), then a padding entry with a higher score that only
    ``num_detections`` excludes."""

    def _detect(self, images):
        score = tf.reduce_mean(tf.cast(images, tf.float32)) / 255.0
        return {
            "detection_boxes": tf.constant([[[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.1, 0.1]]]),
            "detection_scores": tf.stack([[score, 0.99]]),
            "detection_classes": tf.constant([[1.0, 1.0]]),
            "num_detections": tf.constant([1.0]),
        }

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
    def from_uint8(self, input_tensor):
        return self._detect(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="float_image_tensor")])
    def from_float(self, float_image_tensor):
        return self._detect(float_image_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_image_string_tensor")])
    def from_encoded(self, encoded_image_string_tensor):
        image = tf.io.decode_image(encoded_image_string_tensor[0], channels=3, expand_animations=False)
        return self._detect(image[tf.newaxis])


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory) -> Path:
    """<repository>/<name>/<version> with three signatures and the label map in assets/."""
    path = tmp_path_factory.mktemp("repository") / "face_mask" / "1"
    module = TinyDetector()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.from_uint8.get_concrete_function(),
        "float_input": module.from_float.get_concrete_function(),
        "encoded_input": module.from_encoded.get_concrete_function(),
    })
    write_label_map(CLASSES, path / "assets" / "label_map.pbtxt")
    return path


@pytest.mark.parametrize("signature", ["serving_default", "float_input", "encoded_input"])
def test_saved_model_predictor_feeds_the_single_input(saved_model_dir, signature):
    predict = saved_model_predictor(saved_model_dir, signature=signature)
    outputs = predict(np.full((1, 20, 30, 3), 51, np.uint8))
    assert set(outputs) == {"detection_boxes", "detection_scores", "detection_classes", "num_detections"}
    assert outputs["detection_boxes"].shape == (1, 2, 4)
    assert outputs["detection_scores"][0, 0] == pytest.approx(0.2)  # 51 / 255
    assert outputs["num_detections"].tolist() == [1.0]


def test_saved_model_predictor_errors(saved_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no signature 'nope'"):
        saved_model_predictor(saved_model_dir, signature="nope")
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        saved_model_predictor(tmp_path)
    with pytest.raises(ValueError, match=r"\[1, H, W, 3\]"):
        saved_model_predictor(saved_model_dir)(np.zeros((2, 8, 8, 3), np.uint8))


def test_cli_evaluates_a_saved_model(saved_model_dir, data_dir, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(evaluate_command, ["--model", str(saved_model_dir), "--data", str(data_dir),
                                                   "--out", str(out), "--grid-images", "2"])
    assert result.exit_code == 0, result.output
    lines = {line.rsplit(None, 1)[0]: line.rsplit(None, 1)[1] for line in result.output.splitlines()
             if line.startswith("DetectionBoxes_")}
    # Every centre face found (the padded 0.99 entry is beyond num_detections); without_mask never predicted.
    assert lines["DetectionBoxes_PerformanceByCategory/mAP@.50IOU/with_mask"] == "1.0000"
    assert lines["DetectionBoxes_PerformanceByCategory/mAP@.50IOU/without_mask"] == "0.0000"
    assert lines["DetectionBoxes_Precision/mAP"] == "0.5000"
    assert lines["DetectionBoxes_Precision/mAP (large)"] == "n/a"
    document = read_metrics_json(out / METRICS_FILENAME)
    assert document["model"]["kind"] == "saved_model"
    assert document["model"]["label_map"] == str(saved_model_dir / "assets" / "label_map.pbtxt")
    assert (out / GRID_FILENAME).is_file()


def test_cli_refuses_a_saved_model_whose_classes_are_not_the_data_s(saved_model_dir, tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    write_label_map(CLASSES[::-1], data / "label_map.pbtxt")  # the ids of the TFRecords, named the other way
    result = CliRunner().invoke(evaluate_command, ["--model", str(saved_model_dir), "--data", str(data),
                                                   "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1
    assert (f"the model's classes ({saved_model_dir / 'assets' / 'label_map.pbtxt'}) do not match the data's label map "
            f"({data / 'label_map.pbtxt'}): id 1: 'with_mask' in the model, 'without_mask' in the data; "
            "id 2: 'without_mask' in the model, 'with_mask' in the data.") in " ".join(result.output.split())
    assert not (tmp_path / "eval").exists()


def test_cli_server_down_is_one_line(data_dir, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(evaluate_command, ["--server", f"grpc://127.0.0.1:{port}", "--data", str(data_dir),
                                                   "--out", str(tmp_path / "eval"), "--timeout", "1"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ServerUnavailable: ") and "Traceback" not in result.output
    assert not (tmp_path / "eval").exists()


def test_label_map_mismatch_names_missing_and_extra_ids():
    from detserve.training.data.label_map import label_map_mismatch

    assert label_map_mismatch({1: "a", 2: "b"}, {1: "a", 2: "b"}, "m", "d") is None
    problem = label_map_mismatch({1: "a"}, {1: "a", 2: "b"}, "m", "d")
    assert "id 2: None in the model, 'b' in the data" in problem
    many = label_map_mismatch({i: f"m{i}" for i in range(1, 9)}, {i: f"d{i}" for i in range(1, 9)}, "m", "d")
    assert "id 5: 'm5' in the model, 'd5' in the data; and 3 more." in many and "id 6" not in many


@pytest.mark.parametrize("args, message", [
    (["--model-dir", "{tmp}/missing"], "model directory not found: {tmp}/missing"),
    (["--model-dir", "{tmp}"], "pipeline config not found: {tmp}/pipeline.config"),
    (["--model", "{tmp}"], "no SavedModel at {tmp}"),
    ([], "pass --model-dir"),
])
def test_cli_errors_name_the_path(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(evaluate_command, args)
    assert result.exit_code != 0
    assert message.format(tmp=tmp_path) in result.output


def test_cli_saved_model_needs_data_and_records(saved_model_dir, tmp_path):
    result = CliRunner().invoke(evaluate_command, ["--model", str(saved_model_dir), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--model needs --data" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(evaluate_command, ["--model", str(saved_model_dir), "--data", str(empty),
                                                   "--out", str(tmp_path / "eval")])
    assert result.exit_code != 0
    assert f"no TFRecord files match {empty}/test-?????-of-?????.tfrecord" in result.output


def test_cli_model_dir_without_checkpoint(tmp_path):
    (tmp_path / "pipeline.config").write_text("model { ssd { num_classes: 2 } }\n")
    result = CliRunner().invoke(evaluate_command, ["--model-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert f"no checkpoint (ckpt-N.index) in {tmp_path}" in result.output


# A TFOD2 SSD MobileNetV2 FPN-Lite kept as small as the architecture allows (alpha 0.35, 16-channel
# FPN and box predictor) so that building and tracing it takes seconds. Untrained: the tests check
# the plumbing (restore, pre/post-processing, label ids), not detection quality.
TINY_PIPELINE = """
model {
  ssd {
    num_classes: 2
    image_resizer { fixed_shape_resizer { height: 320 width: 320 } }
    feature_extractor {
      type: 'ssd_mobilenet_v2_fpn_keras'
      depth_multiplier: 0.35
      min_depth: 8
      use_depthwise: true
      fpn { min_level: 3 max_level: 7 additional_layer_depth: 16 }
      conv_hyperparams {
        activation: RELU_6
        regularizer { l2_regularizer { weight: 0.00004 } }
        initializer { random_normal_initializer { stddev: 0.01 mean: 0.0 } }
        batch_norm { scale: true decay: 0.997 epsilon: 0.001 }
      }
      override_base_feature_extractor_hyperparams: true
    }
    box_coder { faster_rcnn_box_coder { y_scale: 10.0 x_scale: 10.0 height_scale: 5.0 width_scale: 5.0 } }
    matcher { argmax_matcher { matched_threshold: 0.5 unmatched_threshold: 0.5 } }
    similarity_calculator { iou_similarity {} }
    encode_background_as_zeros: true
    anchor_generator {
      multiscale_anchor_generator {
        min_level: 3 max_level: 7 anchor_scale: 4.0 aspect_ratios: [1.0, 2.0, 0.5] scales_per_octave: 2
      }
    }
    box_predictor {
      weight_shared_convolutional_box_predictor {
        depth: 16
        num_layers_before_predictor: 1
        kernel_size: 3
        class_prediction_bias_init: -4.6
        use_depthwise: true
        conv_hyperparams {
          activation: RELU_6
          regularizer { l2_regularizer { weight: 0.00004 } }
          initializer { random_normal_initializer { stddev: 0.01 mean: 0.0 } }
          batch_norm { scale: true decay: 0.997 epsilon: 0.001 }
        }
      }
    }
    loss {
      classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 } }
      localization_loss { weighted_smooth_l1 {} }
      classification_weight: 1.0
      localization_weight: 1.0
    }
    post_processing {
      batch_non_max_suppression {
        score_threshold: 1e-8 iou_threshold: 0.6 max_detections_per_class: 100 max_total_detections: 100
      }
      score_converter: SIGMOID
    }
  }
}
train_input_reader {
  label_map_path: "DATA_DIR/label_map.pbtxt"
  tf_record_input_reader { input_path: "DATA_DIR/train-?????-of-?????.tfrecord" }
}
eval_input_reader {
  label_map_path: "DATA_DIR/label_map.pbtxt"
  shuffle: false
  num_epochs: 1
  tf_record_input_reader { input_path: "DATA_DIR/test-?????-of-?????.tfrecord" }
}
"""


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, data_dir) -> Path:
    """A training directory as TFOD2 leaves it: pipeline.config and ckpt-1, ckpt-2 (step, model,
    optimizer) of a model built for training; ckpt-2 has different weights from ckpt-1."""
    from object_detection.builders import model_builder
    from object_detection.utils import config_util

    model_dir = tmp_path_factory.mktemp("model")
    (model_dir / "pipeline.config").write_text(TINY_PIPELINE.replace("DATA_DIR", str(data_dir)))
    configs = config_util.get_configs_from_pipeline_file(str(model_dir / "pipeline.config"))
    model = model_builder.build(model_config=configs["model"], is_training=True)
    model.predict(*model.preprocess(tf.zeros([1, 320, 320, 3])))  # creates the variables
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step, model=model, optimizer=tf.keras.optimizers.SGD(0.01))
    manager = tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=2)
    manager.save()
    for variable in model.trainable_variables:
        variable.assign(variable + tf.random.normal(variable.shape, stddev=0.01, seed=1))
    step.assign(2)
    manager.save()
    return model_dir


@pytest.mark.slow
def test_checkpoint_predictor_matches_the_restored_model(tiny_checkpoint):
    from object_detection.builders import model_builder
    from object_detection.utils import config_util

    prefix = latest_checkpoint(tiny_checkpoint)
    assert prefix is not None and prefix.endswith("ckpt-2")
    image = np.random.default_rng(0).integers(0, 256, (1, 150, 200, 3), dtype=np.uint8)

    # Reference: the same checkpoint restored eagerly into an inference model.
    configs = config_util.get_configs_from_pipeline_file(str(tiny_checkpoint / "pipeline.config"))
    reference_model = model_builder.build(model_config=configs["model"], is_training=False)
    tf.train.Checkpoint(model=reference_model).restore(prefix).expect_partial()
    preprocessed, shapes = reference_model.preprocess(tf.constant(image, tf.float32))
    reference = reference_model.postprocess(reference_model.predict(preprocessed, shapes), shapes)

    outputs = checkpoint_predictor(tiny_checkpoint / "pipeline.config", tiny_checkpoint)(image)
    assert outputs["detection_boxes"].shape == (1, 100, 4)
    assert outputs["num_detections"].tolist() == [100.0]
    np.testing.assert_allclose(np.sort(outputs["detection_scores"][0]),
                               np.sort(reference["detection_scores"].numpy()[0]), atol=1e-5)
    # Label-map ids: TFOD2's 0-based classes + 1.
    top = int(np.argmax(outputs["detection_scores"][0]))
    reference_top = int(np.argmax(reference["detection_scores"].numpy()[0]))
    assert outputs["detection_classes"][0, top] == reference["detection_classes"].numpy()[0, reference_top] + 1
    np.testing.assert_allclose(outputs["detection_boxes"][0, top],
                               reference["detection_boxes"].numpy()[0, reference_top], atol=1e-4)
    assert set(np.unique(outputs["detection_classes"])) <= {1.0, 2.0}


@pytest.mark.slow
def test_cli_evaluates_the_latest_checkpoint_of_a_model_dir(tiny_checkpoint):
    result = CliRunner().invoke(evaluate_command, ["--model-dir", str(tiny_checkpoint), "--max-images", "2",
                                                   "--grid-images", "2"])
    assert result.exit_code == 0, result.output
    assert "DetectionBoxes_Precision/mAP " in result.output
    document = read_metrics_json(tiny_checkpoint / "eval" / METRICS_FILENAME)
    assert document["model"]["kind"] == "checkpoint"
    assert document["model"]["checkpoint"].endswith("ckpt-2")
    assert document["num_images"] == 2
    assert document["data"].endswith("test-?????-of-?????.tfrecord")  # from pipeline.config's eval_input_reader
    assert (tiny_checkpoint / "eval" / "pr_curve_with_mask.png").is_file()


@pytest.mark.slow
def test_cli_refuses_a_label_map_other_than_the_training_one(tiny_checkpoint, data_dir, tmp_path):
    write_label_map(["with_mask", "no_mask"], tmp_path / "renamed.pbtxt")
    result = CliRunner().invoke(evaluate_command, ["--model-dir", str(tiny_checkpoint), "--label-map",
                                                   str(tmp_path / "renamed.pbtxt"), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert f"the model's classes ({data_dir / 'label_map.pbtxt'}, the training label map of" in output
    assert "id 2: 'without_mask' in the model, 'no_mask' in the data" in output


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint, tmp_path):
    config = tmp_path / "pipeline.config"
    config.write_text((tiny_checkpoint / "pipeline.config").read_text().replace("num_classes: 2", "num_classes: 3"))
    predict = checkpoint_predictor(config, tiny_checkpoint)
    with pytest.raises(ValueError, match="does not fit the model of .*pipeline.config"):
        predict(np.zeros((1, 64, 64, 3), np.uint8))


def test_metrics_equal_tfod2_coco_evaluator():
    """Same numbers, same names as TFOD2's own CocoDetectionEvaluator (which model_main_tf2 uses)."""
    from object_detection.core.standard_fields import DetectionResultFields as D
    from object_detection.core.standard_fields import InputDataFields as G
    from object_detection.metrics.coco_evaluation import CocoDetectionEvaluator

    from detserve.training.evaluation.coco_metrics import SUMMARY_KEYS, CocoEvaluator

    rng = np.random.default_rng(42)
    labels = {1: "with_mask", 2: "without_mask"}
    ours = CocoEvaluator(labels)
    theirs = CocoDetectionEvaluator([{"id": i, "name": n} for i, n in labels.items()])
    for image_id in range(25):
        height, width = int(rng.integers(100, 600)), int(rng.integers(100, 600))
        n = int(rng.integers(0, 6))
        centre = rng.uniform(0.2, 0.8, (n, 2))
        size = rng.uniform(0.03, 0.4, (n, 2))  # spans small, medium and large objects
        gt = np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0, 1)
        gt_classes = rng.integers(1, 3, n)
        # Detections: jittered ground truth (sometimes the wrong class) and some background boxes.
        jittered = np.clip(gt + rng.normal(0, 0.03, gt.shape), 0, 1)
        background = np.sort(rng.uniform(0, 1, (3, 2, 2)), axis=1).reshape(3, 4)  # [[y0, x0], [y1, x1]] sorted
        det = np.concatenate([jittered, background])
        det_classes = np.concatenate([np.where(rng.random(n) < 0.8, gt_classes, 3 - gt_classes), rng.integers(1, 3, 3)])
        scores = rng.random(len(det))
        ours.add_image(height, width, gt, gt_classes, det, scores, det_classes)
        scale = np.array([height, width, height, width], np.float64)
        theirs.add_single_ground_truth_image_info(image_id, {
            G.groundtruth_boxes: (gt * scale).astype(np.float32), G.groundtruth_classes: gt_classes})
        theirs.add_single_detected_image_info(image_id, {
            D.detection_boxes: (det * scale).astype(np.float32), D.detection_scores: scores.astype(np.float32),
            D.detection_classes: det_classes})
    mine = ours.compute().metrics
    reference = theirs.evaluate()
    assert set(SUMMARY_KEYS) <= set(reference)
    for key in SUMMARY_KEYS:
        expected = None if reference[key] < 0 else reference[key]
        assert mine[key] == pytest.approx(expected, abs=1e-6), key
    # A fixture that exercises the metrics: neither perfect nor empty.
    assert 0.1 < mine["DetectionBoxes_Precision/mAP@.50IOU"] < 0.9
