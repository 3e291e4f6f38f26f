"""`detserve export` on the session's trained model: layout, signatures, batching parity, warmup, verification,
adopting a TFOD2 export, and evaluating what is served.

One real export (module fixture, through the CLI) of the session's trained detector is shared by most tests;
it runs into a repository that already holds versions 2, 3 and 5 (2 labelled by a serving config), so it
also covers numbering and --keep. The detector is trained enough to find the synthetic shapes (see
conftest.trained_model), so its detections differ from image to image and parity tests can fail.
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
from conftest import MAP50_FLOOR

from detserve.export import exporter
from detserve.export.cli import export as export_command
from detserve.export.images import sample_images, with_resized_copies
from detserve.export.parity import Tolerance, compare_detections, measure_tolerance
from detserve.export.signatures import (
    BYTES_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODED_INPUT,
    IMAGES_INPUT,
    INFO_INPUT,
    INFO_SIGNATURE,
    PREDICT_METHOD,
)
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
def exported(trained_model, tmp_path_factory) -> Exported:
    repository = tmp_path_factory.mktemp("repository")
    model_dir = repository / "detector"
    for version in ("2", "3", "5"):  # stand-ins for earlier exports
        (model_dir / version).mkdir(parents=True)
        (model_dir / version / "saved_model.pb").write_bytes(b"old")
    serving_config = repository / "models.config"
    serving_config.write_text(LABELLED)
    result = CliRunner().invoke(export_command, [
        "--model-dir", str(trained_model.model_dir), "--repository", str(repository), "--name", "detector",
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


def test_the_exported_graph_is_frozen_and_runs_the_combined_nms(exported):
    """Two of what makes the export faster than TFOD2's own (docs/performance.md): no variables, and one
    CombinedNonMaxSuppression for the batch instead of a per-image, per-class NonMaxSuppressionV5. (Batch norms
    behind the heads' weight-shared convolutions stay; tests/test_graph_optimization.py covers the folding.)"""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported.path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    ops = [node.op for node in graph.node] + [node.op for function in graph.library.function
                                              for node in function.node_def]
    assert "CombinedNonMaxSuppression" in ops
    assert not {op for op in ops if op.startswith("NonMaxSuppression")}
    assert not {"ReadVariableOp", "VarHandleOp"} & set(ops)
    assert "non-max suppression: CombinedNonMaxSuppression" in exported.output


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
    size = exported.trained.image_size
    assert signatures[INFO_SIGNATURE]["inputs"] == {INFO_INPUT: ["uint8", [-1, size, size, 3]]}
    assert exporter.model_input_size(exported.path) == (size, size)


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


def run(signature):
    """uint8 batch -> numpy outputs of a signature (the form detserve.export.parity.measure_tolerance takes)."""
    return lambda batch: numpy(signature(images=tf.constant(batch)))


@pytest.fixture(scope="module")
def tolerance(loaded, test_images) -> Tolerance:
    """What the exporter would allow for this model on this machine (its own batch-vs-single spread)."""
    default = loaded.signatures[DEFAULT_SIGNATURE]
    alone = [run(default)(image[np.newaxis]) for image in test_images]
    return measure_tolerance(run(default), test_images, alone)


def test_an_image_alone_and_in_a_batch_of_8_gives_the_same_detections(loaded, test_images, tolerance):
    default = loaded.signatures[DEFAULT_SIGNATURE]
    image = test_images[0]
    others = [test_images[1 + i % (len(test_images) - 1)] for i in range(7)]
    alone = numpy(default(images=tf.constant(image[np.newaxis])))
    batch = numpy(default(images=tf.constant(np.stack(others[:3] + [image] + others[3:]))))
    assert batch["detection_boxes"].shape == (8, 100, 4)
    result = compare_detections(alone, batch, cand_index=3, tolerance=tolerance)
    assert result["ok"], result["problem"]
    assert result["compared"] >= 10
    # ... and the detections really depend on the image (else this test would prove nothing): every other
    # image's detections differ from this one's.
    for row in (0, 1, 2):
        assert not compare_detections(alone, batch, cand_index=row, tolerance=tolerance)["ok"]


def test_the_bytes_signature_decodes_to_the_same_detections(loaded, test_images, tolerance):
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
        result = compare_detections(alone, from_bytes, cand_index=index, tolerance=tolerance)
        assert result["ok"], result["problem"]


def test_class_names_come_from_the_label_map(loaded, exported, test_images):
    outputs = numpy(loaded.signatures[DEFAULT_SIGNATURE](images=tf.constant(np.stack(test_images[:2]))))
    label_map = read_label_map(exported.path / "assets" / "label_map.pbtxt")
    for row in range(2):
        count = int(outputs["num_detections"][row])
        names = [n.decode() for n in outputs["detection_class_names"][row]]
        assert names[:count] == [label_map[int(c)] for c in outputs["detection_classes"][row][:count]]
        assert set(names[count:]) <= {""}
    size = exported.trained.image_size
    info = numpy(loaded.signatures[INFO_SIGNATURE](images=tf.zeros([1, size, size, 3], tf.uint8)))
    assert info["input_height"].tolist() == [size] and info["input_width"].tolist() == [size]
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


@pytest.fixture(scope="module")
def verification_inputs(exported, loaded):
    """What the exporter hands the verification: samples of the test split and their resized copies, the
    source's detections of each alone (here the verified export itself), the tolerance measured on it."""
    images, _ = sample_images(split_pattern(exported.trained.data_dir, "test"))
    size = (exported.trained.image_size,) * 2
    images = with_resized_copies(images, size)
    default = loaded.signatures[DEFAULT_SIGNATURE]
    reference = [run(default)(image[np.newaxis]) for image in images]
    label_map = read_label_map(exported.path / "assets" / "label_map.pbtxt")
    return images, reference, label_map, size, measure_tolerance(run(default), images, reference)


class PlantedSignature:
    """A loaded signature with a defect planted around it, called as verify calls a loaded SavedModel."""

    def __init__(self, function, call):
        self.function, self.call = function, call
        self.structured_input_signature = function.structured_input_signature
        self.structured_outputs = function.structured_outputs

    def __call__(self, **inputs):
        return self.call(self.function, **inputs)


def planted(loaded, **calls):
    """``loaded`` with some signatures replaced by ``calls[name](function, **inputs)``."""
    from types import SimpleNamespace

    return SimpleNamespace(signatures={name: PlantedSignature(function, calls.get(name, lambda f, **i: f(**i)))
                                       for name, function in loaded.signatures.items()})


def verify_planted(model, verification_inputs) -> tuple[dict, list[dict]]:
    from detserve.export.verify import verify

    images, reference, label_map, size, tolerance = verification_inputs
    # This process has imported object_detection; the export's own run (a fresh process) checks it has not.
    result = verify(model, images, reference, label_map, size, measure_latency=False, plain_tensorflow=False,
                    tolerance=tolerance)
    return result, [c for c in result["checks"] if not c["ok"]]


def reversed_batch(function, **inputs):
    (key, value), = inputs.items()
    return function(**{key: tf.reverse(value, [0])})


def without_label_offset(function, **inputs):
    outputs = dict(function(**inputs))
    outputs["detection_classes"] = outputs["detection_classes"] - 1.0  # TFOD2's 0-based ids, as a buggy export
    return outputs


def letterboxed(size: tuple[int, int]):
    """Aspect-preserving resize with padding in front of a model trained on stretched images."""
    def call(function, images):
        padded = tf.image.resize_with_pad(tf.cast(images, tf.float32), *size)
        return function(images=tf.cast(tf.round(padded), tf.uint8))

    return call


def test_verification_passes_the_export_as_it_is(loaded, verification_inputs):
    result, failed = verify_planted(planted(loaded), verification_inputs)
    assert result["ok"], failed
    assert {"model_info values", "tolerance"} <= {c["name"] for c in result["checks"]}
    batch_checks = [c for c in result["checks"] if "at row" in c["name"]]
    assert len(batch_checks) == 8 and all(c["compared"] >= 10 for c in batch_checks)


def test_verification_refuses_images_swapped_inside_a_batch(loaded, verification_inputs):
    result, failed = verify_planted(planted(loaded, serving_default=reversed_batch, serving_bytes=reversed_batch),
                                    verification_inputs)
    assert not result["ok"]
    names = [c["name"] for c in failed]
    assert any(name.startswith(f"{DEFAULT_SIGNATURE} image") and "at row" in name for name in names), names
    assert any(name.startswith(BYTES_SIGNATURE) for name in names), names
    alone = [name for name in names if name.startswith(DEFAULT_SIGNATURE) and "at row" not in name]
    assert not alone, "a batch of one has nothing to reorder"
    assert any("images swapped or reordered inside the batch" in c["detail"] for c in failed), failed


def test_verification_refuses_a_dropped_class_offset(loaded, verification_inputs):
    result, failed = verify_planted(planted(loaded, serving_default=without_label_offset,
                                            serving_bytes=without_label_offset), verification_inputs)
    assert not result["ok"]
    assert any("class ids are shifted by -1" in c["detail"] for c in failed), failed


def test_verification_refuses_a_wrong_resize(loaded, verification_inputs):
    images, size = verification_inputs[0], verification_inputs[3]
    result, failed = verify_planted(planted(loaded, serving_default=letterboxed(size)), verification_inputs)
    assert not result["ok"]
    wrong = {c["name"] for c in failed}
    # The samples that are not square come out differently; their copies at the input size (nothing to pad) do not.
    for index, image in enumerate(images):
        name = f"{DEFAULT_SIGNATURE} image {index} ({image.shape[0]}x{image.shape[1]}) vs source"
        assert (name in wrong) == (image.shape[:2] != size), (name, wrong)
    assert any("the model saw another image than the source did" in c["detail"] for c in failed), failed


def test_an_export_with_rows_swapped_in_the_graph_is_refused(trained_model, tmp_path, monkeypatch):
    """The real export path (fresh-process verification) with the defect inside the exported graph."""
    from detserve.export import signatures

    original = signatures.checkpoint_detect_fns

    def swapping(model, input_size, nms=None):
        detect_images, detect_encoded = original(model, input_size, nms)
        return (lambda images: detect_images(tf.reverse(images, [0])),
                lambda encoded: detect_encoded(tf.reverse(encoded, [0])))

    monkeypatch.setattr(signatures, "checkpoint_detect_fns", swapping)
    repository = tmp_path / "repository"
    with pytest.raises(exporter.ExportError, match="verification failed, nothing published: .*images swapped or "
                                                   "reordered inside the batch"):
        exporter.export_checkpoint(trained_model.model_dir / "pipeline.config", trained_model.model_dir, repository,
                                   "detector", measure_latency=False)
    assert list((repository / "detector").iterdir()) == []


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
def tfod2_export(trained_model, tmp_path_factory) -> Path:
    """The model exported by TFOD2's own exporter (input_type image_tensor: fixed at batch 1)."""
    from object_detection import exporter_lib_v2

    from detserve.training.pipeline_config import load_pipeline_config

    out = tmp_path_factory.mktemp("tfod2_export")
    config = load_pipeline_config(trained_model.model_dir / "pipeline.config")
    exporter_lib_v2.export_inference_graph("image_tensor", config, str(trained_model.model_dir), str(out))
    return out


def test_from_saved_model_adopts_a_fixed_batch_tfod2_export(tfod2_export, exported, loaded, test_images, tolerance,
                                                             tmp_path):
    source = tf.saved_model.load(str(tfod2_export / "saved_model")).signatures["serving_default"]
    (_, spec), = source.structured_input_signature[1].items()
    assert spec.shape.as_list() == [1, None, None, 3]  # what TFOD2's exporter makes (tensorflow/models#10317)
    assert "raw_detection_boxes" in source.structured_outputs

    repository = tmp_path / "repository"
    result = exporter.adopt_saved_model(tfod2_export, repository, "adopted", measure_latency=False,
                                        warmup_batches="largest")
    assert result.batch_mapped and result.version == 1
    # --warmup-batches largest (CPU servers): one record per signature at the largest size both configs accept.
    assert (result.warmup.records, result.warmup.batch_sizes) == (2, [32])
    assert "mapped per image: the source SavedModel is fixed at batch 1" in exporter.format_summary(result)
    assert result.verification["ok"]
    path = repository / "adopted" / "1"
    signatures = exporter.describe_signatures(path)
    assert signatures[DEFAULT_SIGNATURE]["inputs"] == {IMAGES_INPUT: ["uint8", [-1, -1, -1, 3]]}
    for name in (DEFAULT_SIGNATURE, BYTES_SIGNATURE):
        assert {k: tuple(v) for k, v in signatures[name]["outputs"].items()} == DETECTIONS
    size = exported.trained.image_size
    assert exporter.model_input_size(path) == (size, size)  # from the pipeline.config TFOD2 wrote beside it
    # The label map named by that pipeline.config.
    assert read_label_map(path / "assets" / "label_map.pbtxt") == read_label_map(exported.trained.data_dir / "label_map.pbtxt")

    # A batch of 3 through the adopted model = the detserve export of the same checkpoint, image by image.
    adopted = tf.saved_model.load(str(path)).signatures[DEFAULT_SIGNATURE]
    ours = loaded.signatures[DEFAULT_SIGNATURE]
    batch = numpy(adopted(images=tf.constant(np.stack(test_images[:3]))))
    for index, image in enumerate(test_images[:3]):
        alone = numpy(ours(images=tf.constant(image[np.newaxis])))
        comparison = compare_detections(alone, batch, cand_index=index, tolerance=tolerance)
        assert comparison["ok"], comparison["problem"]
        assert comparison["compared"] >= 10


def test_evaluating_the_exported_version_matches_the_checkpoint(exported, trained_model_metrics, tmp_path):
    from detserve.training.evaluation.cli import evaluate as evaluate_command
    from detserve.training.evaluation.report import METRICS_FILENAME, read_metrics_json

    trained = exported.trained
    from_checkpoint = trained_model_metrics
    assert from_checkpoint["DetectionBoxes_Precision/mAP@.50IOU"] >= MAP50_FLOOR  # a detector: equal metrics mean something
    result = CliRunner().invoke(evaluate_command, ["--model", str(exported.path), "--data", str(trained.data_dir),
                                                   "--out", str(tmp_path / "served"), "--grid-images", "0"])
    assert result.exit_code == 0, result.output
    assert "DetectionBoxes_Precision/mAP " in result.output
    served = read_metrics_json(tmp_path / "served" / METRICS_FILENAME)["metrics"]
    assert served["DetectionBoxes_Precision/mAP"] == pytest.approx(from_checkpoint["DetectionBoxes_Precision/mAP"], abs=0.005)
    for key, value in from_checkpoint.items():
        assert (served[key] is None) == (value is None) and (value is None or served[key] == pytest.approx(value, abs=0.005)), key
