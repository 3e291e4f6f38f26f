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
