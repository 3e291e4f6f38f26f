"""`detserve export` on the session's trained model: layout, signatures, batching parity, warmup, verification,
adopting a TFOD2 export, and evaluating what is served.

One real export (module fixture, through the CLI) is shared by most tests; it runs into a repository that
already holds versions 2, 3 and 5 (2 labelled by a serving config), so it also covers numbering and --keep.

The session's 30-step model answers every image alike (all boxes identical, one score repeated: its
batch-norm statistics saturate the features), which would make every parity test vacuous. So the export
source is ``lively_model``: the trained model's pipeline.config and training checkpoint restored, then its
kernels redrawn so that detections depend on the image (nothing is trained).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import detserve.training.tfod_compat  # noqa: F401  (before TensorFlow, so TFOD2 works in this process)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from detserve.export import exporter
from detserve.export.cli import export as export_command
from detserve.export.signatures import (
    BYTES_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODED_INPUT,
    IMAGES_INPUT,
    INFO_INPUT,
    INFO_SIGNATURE,
    PREDICT_METHOD,
)
from detserve.export.verify import compare_detections
from detserve.export.warmup import WARMUP_FILENAME, read_warmup_file
from detserve.training.data.label_map import read_label_map
from detserve.training.data.tfrecord import read_examples, split_pattern

pytestmark = pytest.mark.slow

DETECTIONS = {
    "detection_boxes": ("float32", [-1, 100, 4]),
    "detection_scores": ("float32", [-1, 100]),
    "detection_classes": ("float32", [-1, 100]),
    "num_detections": ("float32", [-1]),
    "detection_class_names": ("string", [-1, 100]),
}
LABELLED = """model_config_list { config { name: "detector" base_path: "/models/detector" model_platform: "tensorflow"
  model_version_policy { latest { num_versions: 2 } } version_labels { key: "stable" value: 2 } } }
"""


@dataclass
class Exported:
    repository: Path
    model_dir: Path
    path: Path
    output: str
    trained: object


@pytest.fixture(scope="module")
def lively_model(trained_model, tmp_path_factory) -> Path:
    """A model directory like `detserve train` leaves (pipeline.config, ckpt-N with step and model) whose
    detections vary with the input: He-scaled kernels, a weaker prediction head, class bias -2."""
    from detserve.training.evaluation.predictors import restore_detection_model

    model_dir = tmp_path_factory.mktemp("lively_model")
    shutil.copy(trained_model.model_dir / "pipeline.config", model_dir / "pipeline.config")
    model, status, _ = restore_detection_model(model_dir / "pipeline.config", trained_model.model_dir)
    model.predict(*model.preprocess(tf.zeros([1, 320, 320, 3])))  # creates (and restores) the variables
    status.assert_existing_objects_matched()
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        shape = variable.shape.as_list()
        if "kernel" in variable.name:
            fan_in = shape[0] * shape[1] if "depthwise" in variable.name else int(np.prod(shape[:-1]))
            head = "ClassPredictor" in variable.name or "/BoxPredictor/" in variable.name
            scale = (0.3 if head else 1.0) * np.sqrt(2.0 / fan_in)
            variable.assign((rng.normal(0.0, 1.0, shape) * scale).astype(np.float32))
        elif "ClassPredictor/bias" in variable.name:
            variable.assign(np.full(shape, -2.0, np.float32))
    checkpoint = tf.train.Checkpoint(step=tf.Variable(trained_model.steps, dtype=tf.int64), model=model)
    tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=1).save()
    return model_dir


@pytest.fixture(scope="module")
def exported(lively_model, trained_model, tmp_path_factory) -> Exported:
    repository = tmp_path_factory.mktemp("repository")
    model_dir = repository / "detector"
    for version in ("2", "3", "5"):  # stand-ins for earlier exports
        (model_dir / version).mkdir(parents=True)
        (model_dir / version / "saved_model.pb").write_bytes(b"old")
    serving_config = repository / "models.config"
    serving_config.write_text(LABELLED)
    result = CliRunner().invoke(export_command, [
        "--model-dir", str(lively_model), "--repository", str(repository), "--name", "detector",
        "--keep", "2", "--serving-config", str(serving_config)])
    assert result.exit_code == 0, result.output
    return Exported(repository, model_dir, model_dir / "6", result.output, trained_model)


def test_export_writes_the_next_version_and_keeps_what_serving_labels(exported):
    # 6 is new; --keep 2 keeps 5 and 6, and 2 because the serving config labels it; 3 is pruned.
    assert sorted(p.name for p in exported.model_dir.iterdir()) == ["2", "5", "6"]
    assert "exported" in exported.output and "(version 6)" in exported.output
    assert "pruned      versions 3; kept for the serving config: 2" in exported.output
    assert "verified    OK" in exported.output
    assert "plain TensorFlow" in exported.output


def test_version_layout(exported):
    path = exported.path
    assert (path / "saved_model.pb").is_file()
    assert (path / "variables" / "variables.index").is_file()
    assert (path / "assets.extra" / WARMUP_FILENAME).is_file()
    label_map = read_label_map(path / "assets" / "label_map.pbtxt")
    assert label_map == read_label_map(exported.trained.data_dir / "label_map.pbtxt")
    assert set(label_map.values()) == {"circle", "square", "triangle"}


def test_signature_names_dtypes_and_shapes(exported):
    signatures = exporter.describe_signatures(exported.path)
    assert set(signatures) == {DEFAULT_SIGNATURE, BYTES_SIGNATURE, INFO_SIGNATURE}
    assert {s["method"] for s in signatures.values()} == {PREDICT_METHOD}
    assert signatures[DEFAULT_SIGNATURE]["inputs"] == {IMAGES_INPUT: ["uint8", [-1, -1, -1, 3]]}
    assert signatures[BYTES_SIGNATURE]["inputs"] == {ENCODED_INPUT: ["string", [-1]]}
    for name in (DEFAULT_SIGNATURE, BYTES_SIGNATURE):
        outputs = {key: tuple(value) for key, value in signatures[name]["outputs"].items()}
        assert outputs == DETECTIONS, name  # nothing raw, nothing per anchor
    # The input size, where GetModelMetadata shows it: model_info's input shape.
    assert signatures[INFO_SIGNATURE]["inputs"] == {INFO_INPUT: ["uint8", [-1, 320, 320, 3]]}
    assert exporter.model_input_size(exported.path) == (320, 320)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported.path))


@pytest.fixture(scope="module")
def test_images(exported) -> list[np.ndarray]:
    """The test split, resized to one size so that they can form a batch."""
    from PIL import Image

    images = [np.asarray(Image.fromarray(e.image).resize((256, 160)))
              for e in read_examples(split_pattern(exported.trained.data_dir, "test"))]
    assert len(images) >= 3
    return images


def numpy(outputs) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in outputs.items()}


def test_an_image_alone_and_in_a_batch_of_8_gives_the_same_detections(loaded, test_images):
    default = loaded.signatures[DEFAULT_SIGNATURE]
    image = test_images[0]
    others = [test_images[1 + i % (len(test_images) - 1)] for i in range(7)]
    alone = numpy(default(images=tf.constant(image[np.newaxis])))
    batch = numpy(default(images=tf.constant(np.stack(others[:3] + [image] + others[3:]))))
    assert batch["detection_boxes"].shape == (8, 100, 4)
    result = compare_detections(alone, batch, cand_index=3, score_tolerance=1e-4, box_tolerance=1e-4)
    assert result["ok"], result["problem"]
    assert result["compared"] >= 10
    # ... and the detections really depend on the image (else this test would prove nothing).
    other = numpy(default(images=tf.constant(others[0][np.newaxis])))
    assert not compare_detections(alone, other)["ok"]
    np.testing.assert_allclose(np.sort(batch["detection_scores"][3])[-10:], np.sort(alone["detection_scores"][0])[-10:],
                               atol=1e-4)


def test_the_bytes_signature_decodes_to_the_same_detections(loaded, test_images):
    import io

    from PIL import Image

    encoded = []
    for image in test_images[:3]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    from_bytes = numpy(loaded.signatures[BYTES_SIGNATURE](encoded_images=tf.constant(encoded)))
    for index, image in enumerate(test_images[:3]):
        alone = numpy(loaded.signatures[DEFAULT_SIGNATURE](images=tf.constant(image[np.newaxis])))
        result = compare_detections(alone, from_bytes, cand_index=index, score_tolerance=1e-4, box_tolerance=1e-4)
        assert result["ok"], result["problem"]


def test_class_names_come_from_the_label_map(loaded, exported, test_images):
    outputs = numpy(loaded.signatures[DEFAULT_SIGNATURE](images=tf.constant(np.stack(test_images[:2]))))
    label_map = read_label_map(exported.path / "assets" / "label_map.pbtxt")
    for row in range(2):
        count = int(outputs["num_detections"][row])
        names = [n.decode() for n in outputs["detection_class_names"][row]]
        assert names[:count] == [label_map[int(c)] for c in outputs["detection_classes"][row][:count]]
        assert set(names[count:]) <= {""}
    info = numpy(loaded.signatures[INFO_SIGNATURE](images=tf.zeros([1, 320, 320, 3], tf.uint8)))
    assert info["input_height"].tolist() == [320] and info["input_width"].tolist() == [320]
    assert dict(zip(info["class_ids"][0].tolist(), [n.decode() for n in info["class_names"][0]], strict=True)) == label_map


def test_warmup_file_holds_prediction_logs_for_both_signatures(exported, loaded):
    logs = read_warmup_file(exported.path / "assets.extra" / WARMUP_FILENAME)
    sizes = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32)  # every size a serving/ batching config pads to, up to 32
    assert len(logs) == 2 * len(sizes)
    seen = set()
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "detector"
        (key, proto), = request.inputs.items()
        value = tf.make_ndarray(proto)
        seen.add((request.model_spec.signature_name, key, value.shape[0]))
        if value.shape[0] <= 2:  # the requests run as they are
            outputs = loaded.signatures[request.model_spec.signature_name](**{key: tf.constant(value)})
            assert outputs["detection_boxes"].shape[0] == value.shape[0]
    assert seen == {(DEFAULT_SIGNATURE, IMAGES_INPUT, b) for b in sizes} | {(BYTES_SIGNATURE, ENCODED_INPUT, b) for b in sizes}


def test_verification_catches_detections_that_differ(exported, loaded, test_images):
    """In-process run of the fresh-process checks: a source that disagrees (shifted scores, wrong boxes)."""
    from detserve.export.verify import verify

    image = test_images[0]
    good = numpy(loaded.signatures[DEFAULT_SIGNATURE](images=tf.constant(image[np.newaxis])))
    label_map = read_label_map(exported.path / "assets" / "label_map.pbtxt")
    # This process has imported object_detection; the export's own run (a fresh process) checks it has not.
    result = verify(exported.path, [image], [good], label_map, (320, 320), measure_latency=False,
                    plain_tensorflow=False)
    assert result["ok"], [c for c in result["checks"] if not c["ok"]]
    assert "model_info values" in {c["name"] for c in result["checks"]}

    shifted = dict(good, detection_boxes=np.clip(good["detection_boxes"] + 0.05, 0, 1))
    result = verify(exported.path, [image], [shifted], label_map, (320, 320), measure_latency=False,
                    plain_tensorflow=False)
    assert not result["ok"]
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    assert any(name.startswith(DEFAULT_SIGNATURE) for name in failed)
    assert any(name.startswith(BYTES_SIGNATURE) for name in failed)


def test_an_export_failing_verification_publishes_nothing(exported, tmp_path, monkeypatch):
    """Everything written (SavedModel, label map, warmup), then verification fails: no version, no staging dir."""
    def build(staged: Path):
        shutil.copytree(exported.path, staged)
        return exporter.BuiltModel(source="test", label_map={1: "circle", 2: "square", 3: "triangle"},
                                   label_map_text="", input_size=(320, 320), samples=[], reference=[])

    def failed_verification(path, built, measure_latency=True):
        assert (path / "saved_model.pb").is_file() and (path / "assets.extra" / WARMUP_FILENAME).is_file()
        return {"ok": False, "checks": [{"name": "serving_default image 0 vs source", "ok": False, "detail": "differs"}]}

    monkeypatch.setattr(exporter, "verify_in_subprocess", failed_verification)
    repository = tmp_path / "repository"
    with pytest.raises(exporter.ExportError, match="verification failed, nothing published: serving_default"):
        exporter._export(build, repository, "detector", None, None, [], [], None)
    assert list((repository / "detector").iterdir()) == []


@pytest.fixture(scope="module")
def tfod2_export(lively_model, tmp_path_factory) -> Path:
    """The model exported by TFOD2's own exporter (input_type image_tensor: fixed at batch 1)."""
    from object_detection import exporter_lib_v2

    from detserve.training.pipeline_config import load_pipeline_config

    out = tmp_path_factory.mktemp("tfod2_export")
    config = load_pipeline_config(lively_model / "pipeline.config")
    exporter_lib_v2.export_inference_graph("image_tensor", config, str(lively_model), str(out))
    return out


def test_from_saved_model_adopts_a_fixed_batch_tfod2_export(tfod2_export, exported, test_images, tmp_path):
    source = tf.saved_model.load(str(tfod2_export / "saved_model")).signatures["serving_default"]
    (_, spec), = source.structured_input_signature[1].items()
    assert spec.shape.as_list() == [1, None, None, 3]  # what TFOD2's exporter makes (tensorflow/models#10317)
    assert "raw_detection_boxes" in source.structured_outputs

    repository = tmp_path / "repository"
    result = exporter.adopt_saved_model(tfod2_export, repository, "adopted", measure_latency=False)
    assert result.batch_mapped and result.version == 1
    assert "mapped per image: the source SavedModel is fixed at batch 1" in exporter.format_summary(result)
    assert result.verification["ok"]
    path = repository / "adopted" / "1"
    signatures = exporter.describe_signatures(path)
    assert signatures[DEFAULT_SIGNATURE]["inputs"] == {IMAGES_INPUT: ["uint8", [-1, -1, -1, 3]]}
    for name in (DEFAULT_SIGNATURE, BYTES_SIGNATURE):
        assert {k: tuple(v) for k, v in signatures[name]["outputs"].items()} == DETECTIONS
    assert exporter.model_input_size(path) == (320, 320)  # from the pipeline.config TFOD2 wrote beside it
    # The label map named by that pipeline.config.
    assert read_label_map(path / "assets" / "label_map.pbtxt") == read_label_map(exported.trained.data_dir / "label_map.pbtxt")

    # A batch of 3 through the adopted model = the detserve export of the same checkpoint, image by image.
    adopted = tf.saved_model.load(str(path)).signatures[DEFAULT_SIGNATURE]
    ours = tf.saved_model.load(str(exported.path)).signatures[DEFAULT_SIGNATURE]
    batch = numpy(adopted(images=tf.constant(np.stack(test_images[:3]))))
    for index, image in enumerate(test_images[:3]):
        alone = numpy(ours(images=tf.constant(image[np.newaxis])))
        comparison = compare_detections(alone, batch, cand_index=index)
        assert comparison["ok"], comparison["problem"]
        assert comparison["compared"] >= 10


def test_evaluating_the_exported_version_matches_the_checkpoint(exported, lively_model, tmp_path):
    from detserve.training.evaluation.cli import evaluate as evaluate_command
    from detserve.training.evaluation.evaluate import evaluate
    from detserve.training.evaluation.predictors import checkpoint_predictor
    from detserve.training.evaluation.report import METRICS_FILENAME, read_metrics_json

    trained = exported.trained
    labels = read_label_map(trained.data_dir / "label_map.pbtxt")
    from_checkpoint = evaluate(checkpoint_predictor(lively_model / "pipeline.config", lively_model),
                               trained.data_dir, labels, tmp_path / "checkpoint", grid_images=0, progress=False)
    result = CliRunner().invoke(evaluate_command, ["--model", str(exported.path), "--data", str(trained.data_dir),
                                                   "--out", str(tmp_path / "served"), "--grid-images", "0"])
    assert result.exit_code == 0, result.output
    assert "DetectionBoxes_Precision/mAP " in result.output
    served = read_metrics_json(tmp_path / "served" / METRICS_FILENAME)["metrics"]
    assert served["DetectionBoxes_Precision/mAP"] == pytest.approx(from_checkpoint["DetectionBoxes_Precision/mAP"], abs=0.005)
    for key, value in from_checkpoint.items():
        assert (served[key] is None) == (value is None) and (value is None or served[key] == pytest.approx(value, abs=0.005)), key
