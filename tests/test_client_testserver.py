"""The tiny detector the client's tests serve, and the tests that the TF Serving stand-in is faithful.

The stand-in is tests/fake_serving.py: the embedded server's own front ends and data plane in-process, with
faults on demand, header capture and TLS for the client's fault-injection tests (retries, deadlines, TLS);
test_client_embedded.py runs the client against `detserve serve` itself. The tiny detector here has detserve's
exact signatures (built with ``detserve.export.signatures.build_module``, so it follows the export contract).

Other test modules import this one (``from test_client_testserver import ...``).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from fake_serving import TestServer, _ModelService, make_certificates, servable_for  # noqa: F401 (for importers)
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

MODEL_NAME = "detector"
INPUT_SIZE = (320, 320)
LABEL_MAP = {1: "with_mask", 2: "without_mask", 3: "mask_weared_incorrect"}
GRID = 10  # the tiny model's 10x10 cells of 32x32 pixels, plus one "bright object" detection

# ---------------------------------------------------------------------------------------------------------
# The tiny detector: deterministic, content-dependent, TFOD2's legacy bilinear resize to 320x320.


def _tiny_detect(images: tf.Tensor) -> dict:
    """float32 [B, H, W, 3] -> TFOD2-style outputs. Resizes like TFOD2's fixed_shape_resizer."""
    x = tf.compat.v1.image.resize_bilinear(images, INPUT_SIZE, align_corners=False, half_pixel_centers=False)
    batch = tf.shape(x)[0]
    cell = INPUT_SIZE[0] // GRID
    pooled = tf.nn.avg_pool2d(x, cell, cell, "VALID")  # [B, 10, 10, 3]
    red, green, blue = tf.unstack(pooled, axis=-1)
    cell_scores = tf.sigmoid((red - green) / 32.0)
    cell_classes = tf.cast(tf.argmax(pooled, axis=-1), tf.float32) + 1.0
    ii, jj = tf.meshgrid(tf.range(GRID, dtype=tf.float32), tf.range(GRID, dtype=tf.float32), indexing="ij")
    jitter = blue / 255.0 * 0.05
    cell_boxes = tf.stack([ii / GRID + jitter, jj / GRID + jitter, (ii + 1) / GRID - jitter, (jj + 1) / GRID + 0 * jitter],
                          -1)
    # The bright-object detection: the bounding box of pixels brighter than 200 (exact edges).
    mask = tf.reduce_max(x, axis=-1) > 200.0
    rows, cols = tf.reduce_any(mask, axis=2), tf.reduce_any(mask, axis=1)
    height, width = float(INPUT_SIZE[0]), float(INPUT_SIZE[1])

    def first(flags):
        return tf.cast(tf.argmax(tf.cast(flags, tf.int32), axis=1), tf.float32)

    def end(flags, size):
        return size - tf.cast(tf.argmax(tf.cast(tf.reverse(flags, [1]), tf.int32), axis=1), tf.float32)

    object_box = tf.stack([first(rows) / height, first(cols) / width, end(rows, height) / height,
                           end(cols, width) / width], -1)
    object_score = tf.where(tf.reduce_any(rows, axis=1), 0.999, 0.0)
    boxes = tf.concat([object_box[:, None], tf.reshape(cell_boxes, [batch, GRID * GRID, 4])], axis=1)
    scores = tf.concat([object_score[:, None], tf.reshape(cell_scores, [batch, GRID * GRID])], axis=1)
    classes = tf.concat([tf.fill([batch, 1], 2.0), tf.reshape(cell_classes, [batch, GRID * GRID])], axis=1)
    top = tf.math.top_k(scores, k=100)
    return {
        "detection_boxes": tf.gather(boxes, top.indices, batch_dims=1),
        "detection_scores": top.values,
        "detection_classes": tf.gather(classes, top.indices, batch_dims=1),
        "num_detections": tf.reduce_sum(tf.cast(top.values > 0.01, tf.float32), axis=1),
    }


def build_tiny_saved_model(path: Path) -> Path:
    """A SavedModel with detserve's three signatures around :func:`_tiny_detect`."""
    from detserve.export.signatures import build_module, decode_image

    def detect_images(images):
        return _tiny_detect(tf.cast(images, tf.float32))

    def detect_encoded(encoded):
        def one(single):
            image = tf.cast(decode_image(single), tf.float32)[tf.newaxis]
            return tf.compat.v1.image.resize_bilinear(image, INPUT_SIZE, align_corners=False,
                                                      half_pixel_centers=False)[0]

        return _tiny_detect(tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([*INPUT_SIZE, 3], tf.float32)))

    module, signatures = build_module(detect_images, detect_encoded, LABEL_MAP, INPUT_SIZE, {})
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


_TINY: dict[str, Path] = {}


def tiny_model_dir() -> Path:
    """``<tmp>/detector/1``: built once per test session."""
    if "path" not in _TINY:
        root = Path(tempfile.mkdtemp(prefix="detserve-client-model-"))
        _TINY["path"] = build_tiny_saved_model(root / MODEL_NAME / "1")
    return _TINY["path"]


# ---------------------------------------------------------------------------------------------------------
# The stand-in is faithful: the official client stubs and TF Serving's REST shapes work against it.


@pytest.fixture(scope="module")
def server():
    server = TestServer(servable_for(tiny_model_dir(), MODEL_NAME)).start()
    yield server
    server.stop()


def test_official_stubs_talk_to_the_test_server(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc as official

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = official.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 50, 60, 3), np.uint8)))
        response = stub.Predict(request, timeout=30)
        assert tf.make_ndarray(response.outputs["detection_boxes"]).shape == (2, 100, 4)
        assert response.model_spec.version.value == 1
        meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": MODEL_NAME}, metadata_field=["signature_def"]), timeout=30)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(signature_map)
        assert set(signature_map.signature_def) >= {"serving_default", "serving_bytes", "model_info"}
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_pb2.PredictRequest(model_spec={"name": "nope"}), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_rest_shapes_are_tf_servings(server):
    import requests

    status = requests.get(f"{server.rest_url}/v1/models/{MODEL_NAME}", timeout=30).json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    meta = requests.get(f"{server.rest_url}/v1/models/{MODEL_NAME}/versions/1/metadata", timeout=30).json()
    assert meta["model_spec"]["version"] == "1"
    assert meta["metadata"]["signature_def"]["signature_def"]["model_info"]["inputs"]["images"]["tensor_shape"] == {
        # TF Serving prints fields without presence too (http_rest_api_util.cc: always_print_fields_with_no_presence)
        "dim": [{"size": size, "name": ""} for size in ("-1", "320", "320", "3")], "unknown_rank": False}
    missing = requests.get(f"{server.rest_url}/v1/models/nope", timeout=30)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    answer = requests.post(f"{server.rest_url}/v1/models/{MODEL_NAME}:predict", timeout=30, json={
        "signature_name": "serving_bytes", "inputs": {"encoded_images": [{"b64": base64.b64encode(_png()).decode()}]}})
    outputs = answer.json()["outputs"]
    assert np.shape(outputs["detection_boxes"]) == (1, 100, 4)
    assert isinstance(outputs["detection_class_names"][0][0], str)


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
