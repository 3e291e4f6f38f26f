"""Conformance: one `detserve serve` process, driven with the official tensorflow_serving.apis gRPC stubs and with
the REST requests of TF Serving's REST API guide (status, metadata, row/columnar predict, b64, errors).

The server runs detector versions 1 and 2 pinned under the labels stable and canary (TF Serving's label rules,
beyond the one label of serving/models.release.config), the guide's example models, and the production
serving/batching.config and serving/monitoring.config.
"""

from __future__ import annotations

import base64
import json
from concurrent import futures

import grpc
import numpy as np
import pytest
import requests
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from serving_harness import ServerProcess, cached_model, encode_image, install_version, predict_request
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from detserve.serving import config as cfg
from detserve.serving import tfs_config
from detserve.serving.tensors import make_tensor_proto

pytestmark = pytest.mark.timeout(300)


MAX_PIXELS = 256 * 256
MAX_MESSAGE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "serving-models"
    repo = tmp_path_factory.mktemp("repository")
    install_version(cached_model("tiny", cache, 1), repo / "detector", 1)
    install_version(cached_model("tiny", cache, 2), repo / "detector", 2)
    install_version(cached_model("half_plus_three", cache, warmup=None), repo / "half_plus_three", 123)
    install_version(cached_model("three_inputs", cache, warmup=None), repo / "three_inputs", 1)
    return repo


LABELLED_DETECTOR = """
model_config_list {
  config {
    name: "detector" base_path: "/models/detector" model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """detector 1 and 2 under two labels plus the REST guide's models, all under the container's /models."""
    config = text_format.Parse(LABELLED_DETECTOR, tfs_config.ModelServerConfig())
    for name in ("half_plus_three", "three_inputs"):
        model = config.model_config_list.config.add(name=name, base_path=f"/models/{name}", model_platform="tensorflow")
        assert model.name == name
    path = tmp_path_factory.mktemp("config") / "models.config"
    path.write_text(text_format.MessageToString(config))
    return path


@pytest.fixture(scope="module")
def server(repository, config_file):
    process = ServerProcess([
        "--repository", str(repository), "--model-config-file", str(config_file),
        "--allow-version-labels-for-unavailable-models",  # labels in a starting server, as k8s/base does
        "--max-image-pixels", str(MAX_PIXELS), "--max-message-bytes", str(MAX_MESSAGE),
        "--tensorflow-inter-op-parallelism", "4",
    ])
    with process:
        for model in ("detector", "half_plus_three", "three_inputs"):
            process.wait_ready(model)
        yield process
    assert process.process.returncode == 0, process.log()[-3000:]


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def images(value: int = 51, batch: int = 2, size: int = 16) -> np.ndarray:
    return np.full((batch, size, size, 3), value, np.uint8)


def outputs(response) -> dict:
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


# ------------------------------------------------------------------------------------------------------------
# gRPC


def test_predict_runs_the_default_signature_of_the_latest_version(stub):
    response = stub.Predict(predict_request({"images": images(51)}), timeout=30)
    assert response.model_spec.name == "detector"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    result = outputs(response)
    assert set(result) == {"detection_boxes", "detection_scores", "detection_classes", "num_detections",
                           "detection_class_names"}
    assert result["detection_boxes"].shape == (2, 100, 4) and result["detection_boxes"].dtype == np.float32
    assert result["detection_scores"][:, 0] == pytest.approx([0.2, 0.2], abs=1e-6)
    assert result["num_detections"].tolist() == [2.0, 2.0]
    assert result["detection_class_names"][0, :3].tolist() == [b"mask", b"no_mask", b"incorrect_mask"]
    # Outputs come in typed fields, as TF Serving writes them (clients may read float_val directly).
    assert len(response.outputs["detection_scores"].float_val) == 200


@pytest.mark.parametrize(("spec", "version"), [({"version": 1}, 1), ({"label": "stable"}, 1),
                                               ({"label": "canary"}, 2), ({"version": 2}, 2)])
def test_versions_and_labels_pick_the_version(stub, spec, version):
    response = stub.Predict(predict_request({"images": images(batch=1)}, **spec), timeout=30)
    assert response.model_spec.version.value == version
    assert outputs(response)["num_detections"].tolist() == [float(version)]


def test_output_filter(stub):
    response = stub.Predict(predict_request({"images": images()}, output_filter=["detection_scores"]), timeout=30)
    assert list(response.outputs) == ["detection_scores"]
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(predict_request({"images": images()}, output_filter=["boxes"]), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: boxes" in error.value.details()


def test_encoded_jpeg_through_the_bytes_signature(stub):
    jpeg = encode_image(np.full((24, 32, 3), 102, np.uint8))
    response = stub.Predict(predict_request({"encoded_images": np.array([jpeg, jpeg], dtype=object)},
                                            signature="serving_bytes"), timeout=30)
    assert outputs(response)["detection_scores"][:, 0] == pytest.approx([0.4, 0.4], abs=0.01)


def test_inputs_in_typed_fields_are_accepted(stub):
    proto = predict_pb2.PredictRequest().inputs["images"]
    proto.dtype = make_tensor_proto(images()).dtype
    proto.tensor_shape.dim.add(size=1)
    for size in (2, 2, 3):
        proto.tensor_shape.dim.add(size=size)
    proto.int_val.extend([255] * 12)
    response = stub.Predict(predict_request({"images": proto}), timeout=30)
    assert outputs(response)["detection_scores"][0, 0] == pytest.approx(1.0)


def test_get_model_metadata_returns_the_savedmodel_signature_defs(stub, repository):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "detector"
    request.model_spec.version.value = 1
    response = stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("detector", 1)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((repository / "detector" / "1" / "saved_model.pb").read_bytes())
    assert dict(signature_defs.signature_def) == dict(saved.meta_graphs[0].signature_def)
    images_input = signature_defs.signature_def["serving_default"].inputs["images"]
    assert [d.size for d in images_input.tensor_shape.dim] == [-1, -1, -1, 3]
    assert signature_defs.signature_def["serving_bytes"].method_name == "tensorflow/serving/predict"

    for fields, message in (([], "must specify at least one metadata_field"), (["foo"], "Metadata field foo")):
        bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        bad.model_spec.name = "detector"
        with pytest.raises(grpc.RpcError) as error:
            stub.GetModelMetadata(bad, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()


def test_get_model_status(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "detector"
    response = model_stub.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE), (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    assert all(s.status.error_code == 0 for s in response.model_version_status)
    # GetModelStatusImpl reads only model_spec.version: a label (known or not) is ignored, all versions answer.
    request.model_spec.version_label = "canary"
    assert [s.version for s in model_stub.GetModelStatus(request, timeout=30).model_version_status] == [2, 1]
    request.model_spec.version_label = "no-such-label"
    assert [s.version for s in model_stub.GetModelStatus(request, timeout=30).model_version_status] == [2, 1]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        model_stub.GetModelStatus(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "Could not find any versions of model nope"


@pytest.mark.parametrize("method", ["Classify", "Regress", "MultiInference"])
def test_classify_regress_and_multi_inference_are_unimplemented(stub, method):
    request = {"Classify": classification_pb2.ClassificationRequest, "Regress": regression_pb2.RegressionRequest,
               "MultiInference": inference_pb2.MultiInferenceRequest}[method]()
    if method != "MultiInference":
        request.model_spec.name = "detector"
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not implemented by the embedded detserve server" in error.value.details()


def _undecodable() -> object:
    """A uint8 [2, 16, 16, 3] TensorProto whose content is one byte: decoding it fails."""
    tensor = make_tensor_proto(images())
    tensor.tensor_content = b"\x00"
    return tensor


GRPC_BAD_REQUESTS = {
    "wrong dtype": (dict(inputs={"images": images().astype(np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
                    "'images' expects uint8 (DT_UINT8) but float (DT_FLOAT) is provided"),
    "wrong rank": (dict(inputs={"images": images()[0]}), grpc.StatusCode.INVALID_ARGUMENT, "must have rank 4"),
    "wrong channels": (dict(inputs={"images": np.zeros((1, 8, 8, 4), np.uint8)}), grpc.StatusCode.INVALID_ARGUMENT,
                       "dimension 3 is 4, not 3"),
    "empty batch": (dict(inputs={"images": np.zeros((0, 8, 8, 3), np.uint8)}), grpc.StatusCode.INVALID_ARGUMENT,
                    "empty batch"),
    "unknown input name": (dict(inputs={"image": images()}), grpc.StatusCode.INVALID_ARGUMENT,
                           "input tensor alias not found in signature: image. Inputs expected to be in the set {images}."),
    # Names are checked before anything is decoded, as in TF Serving: the misnamed input is what is reported.
    "unknown input name, undecodable": (dict(inputs={"image": _undecodable()}), grpc.StatusCode.INVALID_ARGUMENT,
                                        "input tensor alias not found in signature: image."),
    "extra input": (dict(inputs={"images": images(), "extra": images()}), grpc.StatusCode.INVALID_ARGUMENT,
                    "input size does not match signature: 2!=1"),
    "unknown signature": (dict(inputs={"images": images()}, signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "nope" not found.'),
    "unknown model": (dict(inputs={"images": images()}, model="nope"), grpc.StatusCode.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (dict(inputs={"images": images()}, version=9), grpc.StatusCode.NOT_FOUND,
                        "Servable not found for request: Specific(detector, 9)"),
    "unknown label": (dict(inputs={"images": images()}, label="beta"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Unrecognized servable version label: beta"),
    "corrupt image bytes": (dict(inputs={"encoded_images": np.array([b"\x00garbage" * 10], dtype=object)},
                                 signature="serving_bytes"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "corrupt jpeg": (dict(inputs={"encoded_images": np.array([b"\xff\xd8\xff\xe0" + b"\x00" * 40], dtype=object)},
                          signature="serving_bytes"), grpc.StatusCode.INVALID_ARGUMENT, "corrupt image bytes"),
    "image too large": (dict(inputs={"images": np.zeros((1, 300, 300, 3), np.uint8)}),
                        grpc.StatusCode.INVALID_ARGUMENT, f"exceed the server's limit of {MAX_PIXELS} pixels"),
    "encoded image too large": (dict(inputs={"encoded_images": np.array(
        [encode_image(np.zeros((300, 300, 3), np.uint8), "PNG")], dtype=object)}, signature="serving_bytes"),
        grpc.StatusCode.INVALID_ARGUMENT, "a 300x300 image (90000 pixels) exceeds"),
    "message too large": (dict(inputs={"images": np.zeros((25, 250, 250, 3), np.uint8)}),
                          grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
}


@pytest.mark.parametrize("case", list(GRPC_BAD_REQUESTS))
def test_bad_grpc_requests_name_the_problem(stub, case):
    kwargs, code, message = GRPC_BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(predict_request(**kwargs), timeout=30)
    assert error.value.code() == code, error.value.details()
    assert message in error.value.details()


def test_the_server_keeps_serving_after_bad_requests(stub):
    with futures.ThreadPoolExecutor(4) as pool:
        bad = [pool.submit(stub.Predict, predict_request(**GRPC_BAD_REQUESTS[c][0]), timeout=30)
               for c in ("corrupt image bytes", "wrong dtype", "unknown model")]
        good = [pool.submit(stub.Predict, predict_request({"images": images(batch=1)}), timeout=30) for _ in range(8)]
        assert all(isinstance(f.exception(), grpc.RpcError) for f in bad)
        assert all(outputs(f.result())["num_detections"].tolist() == [2.0] for f in good)


# ------------------------------------------------------------------------------------------------------------
# REST, with the requests and responses of TF Serving's REST API guide


def test_rest_model_status_as_in_the_guide(server):
    reply = requests.get(f"{server.rest_url}/v1/models/half_plus_three", timeout=30)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_predict_as_in_the_guide(server):
    url = f"{server.rest_url}/v1/models/half_plus_three:predict"
    reply = requests.post(url, data='{"instances": [1.0,2.0,5.0]}', timeout=30)
    assert reply.status_code == 200 and reply.json() == {"predictions": [3.5, 4.0, 5.5]}
    reply = requests.post(url, json={"inputs": [1.0, 2.0, 5.0]}, timeout=30)
    assert reply.json() == {"outputs": [3.5, 4.0, 5.5]}
    reply = requests.post(f"{server.rest_url}/v1/models/half_plus_three/versions/123:predict",
                          json={"signature_name": "serving_default", "instances": [1.0]}, timeout=30)
    assert reply.json() == {"predictions": [3.5]}


def test_rest_unknown_model_as_in_the_guide(server):
    reply = requests.post(f"{server.rest_url}/v1/models/half:predict", data='{"instances": [1.0,5.0]}', timeout=30)
    assert reply.status_code == 404 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {"error": "Servable not found for request: Latest(half)"}


def test_rest_row_and_columnar_formats_of_the_guide(server):
    url = f"{server.rest_url}/v1/models/three_inputs:predict"
    rows = requests.post(url, json={"instances": [
        {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
    ]}, timeout=30)
    assert rows.status_code == 200, rows.text
    assert rows.json() == {"predictions": [
        {"sensor_sum": 10.0, "signal_sum": 15.0, "tag_upper": "FOO"},
        {"sensor_sum": 23.0, "signal_sum": 15.0, "tag_upper": "BAR"},
    ]}
    columns = requests.post(url, json={"inputs": {
        "tag": ["foo", "bar"], "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
        "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
    }}, timeout=30)
    assert columns.json() == {"outputs": {"sensor_sum": [10.0, 23.0], "signal_sum": [15.0, 15.0],
                                          "tag_upper": ["FOO", "BAR"]}}


def test_rest_metadata(server):
    reply = requests.get(f"{server.rest_url}/v1/models/detector/metadata", timeout=30)
    assert reply.status_code == 200
    document = reply.json()
    assert document["model_spec"] == {"name": "detector", "signature_name": "", "version": "2"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in default["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert default["outputs"]["detection_class_names"]["dtype"] == "DT_STRING"
    assert signatures["serving_bytes"]["inputs"]["encoded_images"]["dtype"] == "DT_STRING"
    versioned = requests.get(f"{server.rest_url}/v1/models/detector/versions/1/metadata", timeout=30).json()
    assert versioned["model_spec"]["version"] == "1"
    labelled = requests.get(f"{server.rest_url}/v1/models/detector/labels/stable/metadata", timeout=30).json()
    assert labelled["model_spec"]["version"] == "1"


def test_rest_versions_and_labels(server):
    base = f"{server.rest_url}/v1/models/detector"
    assert [s["version"] for s in requests.get(base, timeout=30).json()["model_version_status"]] == ["2", "1"]
    assert requests.get(f"{base}/versions/1", timeout=30).json()["model_version_status"][0]["version"] == "1"
    assert requests.get(f"{base}/labels/canary", timeout=30).json()["model_version_status"][0]["version"] == "2"
    body = {"instances": images(batch=1).tolist()}
    for path, version in (("/labels/stable", 1.0), ("/labels/canary", 2.0), ("/versions/1", 1.0), ("", 2.0)):
        reply = requests.post(f"{base}{path}:predict", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["num_detections"] == version


def test_rest_b64_jpeg_row_and_columnar(server):
    jpeg = encode_image(np.full((20, 20, 3), 204, np.uint8))
    value = {"b64": base64.b64encode(jpeg).decode()}
    url = f"{server.rest_url}/v1/models/detector:predict"
    rows = requests.post(url, json={"signature_name": "serving_bytes", "instances": [value, value]}, timeout=30)
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert len(predictions) == 2 and predictions[0]["detection_scores"][0] == pytest.approx(0.8, abs=0.01)
    assert len(predictions[0]["detection_boxes"]) == 100 and predictions[0]["detection_class_names"][0] == "mask"
    columns = requests.post(url, json={"signature_name": "serving_bytes", "inputs": {"encoded_images": [value]}},
                            timeout=30)
    assert columns.json()["outputs"]["detection_scores"][0][0] == pytest.approx(0.8, abs=0.01)


REST_BAD_REQUESTS = {
    "unknown version": ("/v1/models/detector/versions/9:predict", {"instances": [[[[0, 0, 0]]]]}, 404,
                        "Servable not found for request: Specific(detector, 9)"),
    "unknown label": ("/v1/models/detector/labels/beta:predict", {"instances": [[[[0, 0, 0]]]]}, 400,
                      "Unrecognized servable version label: beta"),
    "unknown signature": ("/v1/models/detector:predict", {"signature_name": "nope", "instances": [1]}, 400,
                          'Serving signature name: "nope" not found in signature def'),
    "unknown input name": ("/v1/models/detector:predict", {"inputs": {"image": [[[[0, 0, 0]]]]}}, 400,
                           "input tensor alias not found in signature: image"),
    "wrong dtype": ("/v1/models/detector:predict", {"instances": [[[[0.5, 0, 0]]]]}, 400,
                    "decimal numbers are not of expected type: uint8"),
    "out of range": ("/v1/models/detector:predict", {"instances": [[[[256, 0, 0]]]]}, 400, "out of range for uint8"),
    "wrong shape": ("/v1/models/detector:predict", {"instances": [[[0, 0, 0]]]}, 400, "must have rank 4"),
    "ragged": ("/v1/models/detector:predict", {"instances": [[[[0, 0, 0]]], [[[0, 0]]]]}, 400, "ragged"),
    "empty batch": ("/v1/models/detector:predict", {"instances": []}, 400, "empty batch"),
    "corrupt image": ("/v1/models/detector:predict",
                      {"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(b"nope").decode()}]},
                      400, "image"),
    "image too large": ("/v1/models/detector:predict", {"inputs": {"images": "LARGE"}}, 400, "exceed the server's limit"),
    "status of unknown model": ("/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    "classify": ("/v1/models/detector:classify", {"examples": []}, 501, "classify is not implemented"),
    "malformed": ("/v1/models/detector/foo:predict", {}, 400, "Malformed request: POST /v1/models/detector/foo:predict"),
    "not json": ("/v1/models/detector:predict", "{instances: oops", 400, "JSON Parse error"),
    "both formats": ("/v1/models/detector:predict", {"instances": [1], "inputs": [1]}, 400, "Not both"),
}


@pytest.mark.parametrize("case", list(REST_BAD_REQUESTS))
def test_bad_rest_requests_get_tf_serving_status_codes_and_error_bodies(server, case):
    path, body, status, message = REST_BAD_REQUESTS[case]
    url = server.rest_url + path
    if body is None:
        reply = requests.get(url, timeout=30)
    elif isinstance(body, str):
        reply = requests.post(url, data=body, timeout=30)
    else:
        if body.get("inputs") == {"images": "LARGE"}:
            body = {"inputs": {"images": np.zeros((1, 300, 300, 3), np.uint8).tolist()}}
        reply = requests.post(url, data=json.dumps(body), timeout=30)
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert set(reply.json()) == {"error"} and message in reply.json()["error"]


def test_rest_limits_and_paths_outside_the_api(server):
    too_big = b'{"instances": [' + b"0," * (MAX_MESSAGE // 2) + b"0]}"
    reply = requests.post(f"{server.rest_url}/v1/models/detector:predict", data=too_big, timeout=30)
    assert reply.status_code == 413 and "limit" in reply.json()["error"]
    assert requests.get(f"{server.rest_url}/v2/models/detector", timeout=30).status_code == 404
    reply = requests.get(f"{server.rest_url}/v1/models/detector:predict", timeout=30)
    assert reply.status_code == 400 and "Malformed request" in reply.json()["error"]


# ------------------------------------------------------------------------------------------------------------
# Metrics and config reload


def test_prometheus_metrics_under_tf_serving_names(server, stub):
    stub.Predict(predict_request({"images": images()}), timeout=30)
    requests.post(f"{server.rest_url}/v1/models/half_plus_three:predict", json={"instances": [1.0]}, timeout=30)
    reply = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=30)
    assert reply.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    counts = {(s.labels["model_name"], s.labels["status"]): s.value
              for s in families[":tensorflow:serving:request_count"].samples}
    assert counts[("detector", "OK")] >= 1 and counts[("half_plus_three", "OK")] >= 1
    assert counts.get(("detector", "INVALID_ARGUMENT"), 0) >= 1 and counts.get(("half", "NOT_FOUND"), 0) >= 1
    entrypoints = {s.labels.get("entrypoint") for s in families[":tensorflow:serving:request_latency"].samples}
    assert {"GRPC", "REST"} <= entrypoints
    for name in ("queuing_latency", "processed_batch_size", "input_batch_size", "padding_size"):
        assert f":tensorflow:serving:batching_session:{name}" in families
    assert "# TYPE :tensorflow:serving:request_count counter" in reply.text  # no _total suffix, as TF Serving


def test_handle_reload_config_request(model_stub, server, config_file):
    original = cfg.load_model_server_config(config_file)

    def reload(config):
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        return model_stub.HandleReloadConfigRequest(request, timeout=60)

    moved = type(original)()
    moved.CopyFrom(original)
    moved.model_config_list.config[0].version_labels["canary"] = 1  # both versions are AVAILABLE: allowed
    try:
        assert reload(moved).status.error_code == 0
        reply = requests.post(f"{server.rest_url}/v1/models/detector/labels/canary:predict",
                              json={"instances": images(batch=1).tolist()}, timeout=30)
        assert reply.json()["predictions"][0]["num_detections"] == 1.0

        moved.model_config_list.config[0].version_labels["stable"] = 7  # changing a label to a missing version
        with pytest.raises(grpc.RpcError) as error:
            reload(moved)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not currently available for inference" in error.value.details()

        custom = model_management_pb2.ReloadConfigRequest()
        custom.config.custom_model_config.Pack(original)
        with pytest.raises(grpc.RpcError) as error:
            model_stub.HandleReloadConfigRequest(custom, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        assert reload(original).status.error_code == 0
    reply = requests.post(f"{server.rest_url}/v1/models/detector/labels/canary:predict",
                          json={"instances": images(batch=1).tolist()}, timeout=30)
    assert reply.json()["predictions"][0]["num_detections"] == 2.0
