"""End to end: a real `detserve export` of the session's trained SSD FPN-Lite, served by `detserve serve` with the
production configs, answers exactly as the SavedModel does in-process (gRPC uint8 tensors, REST b64 JPEG), on
test images the detector answers differently."""

from __future__ import annotations

import base64

import detserve.training.tfod_compat  # noqa: F401  (before TensorFlow, so TFOD2 works in this process)

# isort: split
import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import MAP50_FLOOR
from serving_harness import ServerProcess, encode_image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from detserve.serving.tensors import make_tensor_proto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DETECTIONS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


@pytest.fixture(scope="module")
def exported(published_version):
    return published_version.parent.parent, published_version


@pytest.fixture(scope="module")
def server(exported):
    repository, _ = exported
    process = ServerProcess(["--repository", str(repository), "--file-system-poll-wait-seconds", "0"])
    with process:
        process.wait_ready(timeout=300)
        yield process


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported[1]))


@pytest.fixture(scope="module")
def sample_images(trained_model) -> np.ndarray:
    """Two test-split images at one size (a batch): the trained detector answers each differently."""
    from PIL import Image

    from detserve.training.data.tfrecord import read_examples, split_pattern

    examples = read_examples(split_pattern(trained_model.data_dir, "test"))
    return np.stack([np.asarray(Image.fromarray(next(examples).image).resize((320, 240))) for _ in range(2)])


def test_grpc_detections_equal_the_in_process_savedmodel(server, loaded, sample_images):
    images = sample_images
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "detector"
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
    expected = loaded.signatures["serving_default"](images=tf.constant(images))
    for name in DETECTIONS:
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), expected[name].numpy(), atol=1e-5)
    names = tf.make_ndarray(response.outputs["detection_class_names"])
    assert names.tolist() == expected["detection_class_names"].numpy().tolist()
    # Each row is its own image's answer: a server that mixed up the batch would fail above.
    scores = tf.make_ndarray(response.outputs["detection_scores"])
    assert np.abs(scores[0] - scores[1]).max() > 0.05


def test_rest_b64_jpeg_detections_equal_the_in_process_savedmodel(server, loaded, sample_images):
    jpeg = encode_image(sample_images[0])
    reply = requests.post(f"{server.rest_url}/v1/models/detector:predict", timeout=120, json={
        "signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(jpeg).decode()}]})
    assert reply.status_code == 200, reply.text
    (prediction,) = reply.json()["predictions"]
    expected = loaded.signatures["serving_bytes"](encoded_images=tf.constant([jpeg]))
    for name in DETECTIONS:
        np.testing.assert_allclose(prediction[name], expected[name].numpy()[0], atol=1e-5)


def test_metadata_lists_the_export_signatures_and_warmup_was_replayed(server, trained_model):
    size = trained_model.image_size
    metadata = requests.get(f"{server.rest_url}/v1/models/detector/metadata", timeout=30).json()
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_bytes", "model_info"} <= set(signatures)
    info = requests.post(f"{server.rest_url}/v1/models/detector:predict", timeout=60, json={
        "signature_name": "model_info", "inputs": {"images": np.zeros((1, size, size, 3), np.uint8).tolist()}})
    assert info.status_code == 200, info.text
    assert info.json()["outputs"]["input_height"] == [size]
    assert "warmup record(s)" in server.log()


# `detserve evaluate --server`: the COCO table measured through the wire equals the in-process SavedModel's.
AGREEMENT = 0.002  # the bound; raw and PNG are lossless, so the served metrics should be the same numbers


@pytest.fixture(scope="module")
def in_process_metrics(exported, trained_model, tmp_path_factory) -> dict:
    return _evaluate(["--model", str(exported[1]), "--data", str(trained_model.data_dir)], tmp_path_factory)


def _evaluate(args: list[str], tmp_path_factory) -> dict:
    from click.testing import CliRunner

    from detserve.training.evaluation.cli import evaluate
    from detserve.training.evaluation.report import METRICS_FILENAME, read_metrics_json

    out = tmp_path_factory.mktemp("eval")
    result = CliRunner().invoke(evaluate, [*args, "--out", str(out), "--grid-images", "0"])
    assert result.exit_code == 0, result.output
    return read_metrics_json(out / METRICS_FILENAME)


@pytest.mark.parametrize("transport, encoding, batch_size", [("grpc", "raw", 4), ("rest", "png", 3)])
def test_evaluate_through_the_server_reproduces_the_in_process_metrics(
        server, trained_model, in_process_metrics, tmp_path_factory, transport, encoding, batch_size):
    served = _evaluate(["--server", server.url(transport), "--model", "detector", "--data", str(trained_model.data_dir),
                        "--encoding", encoding, "--batch-size", str(batch_size)], tmp_path_factory)
    assert served["model"]["kind"] == "served" and served["model"]["version"] == 1
    assert served["num_images"] == in_process_metrics["num_images"] > 0
    expected = in_process_metrics["metrics"]
    assert expected["DetectionBoxes_Precision/mAP@.50IOU"] >= MAP50_FLOOR  # a detector: agreement means something
    for name, value in served["metrics"].items():
        if value is None or expected[name] is None:
            assert value == expected[name], name
        else:
            assert abs(value - expected[name]) <= AGREEMENT, (name, value, expected[name])


def test_evaluate_through_the_server_refuses_other_class_names(server, trained_model, tmp_path):
    from click.testing import CliRunner

    from detserve.training.data.label_map import read_label_map, write_label_map
    from detserve.training.evaluation.cli import evaluate

    data = tmp_path / "data"
    data.mkdir()
    for shard in trained_model.data_dir.glob("test-*.tfrecord"):
        (data / shard.name).symlink_to(shard)
    names = list(read_label_map(trained_model.data_dir / "label_map.pbtxt").values())
    write_label_map(names[::-1], data / "label_map.pbtxt")  # same names, another order: ids disagree
    result = CliRunner().invoke(evaluate, ["--server", server.grpc_url, "--data", str(data), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert "do not match the data's label map" in result.output
    assert f"id 1: {names[0]!r} in the model, {names[-1]!r} in the data" in result.output
    assert not (tmp_path / "e").exists()  # refused before predicting
