"""The client's minimal TF Serving protos: same names, numbers and types as the official ones, bytes that
parse both ways, a private descriptor pool that coexists with TensorFlow's, generated code that is current,
and a client that imports without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pool
from tensorflow.core.framework import tensor_pb2 as official_tensor
from tensorflow.core.framework import tensor_shape_pb2 as official_shape
from tensorflow.core.framework import types_pb2 as official_types
from tensorflow.core.protobuf import meta_graph_pb2 as official_meta_graph
from tensorflow_serving.apis import get_model_metadata_pb2 as official_metadata
from tensorflow_serving.apis import get_model_status_pb2 as official_status
from tensorflow_serving.apis import model_pb2 as official_model
from tensorflow_serving.apis import model_service_pb2 as official_model_service
from tensorflow_serving.apis import predict_pb2 as official_predict
from tensorflow_serving.apis import prediction_service_pb2 as official_prediction_service
from tensorflow_serving.apis import status_pb2 as official_status_proto

from detserve.client import ModelMetadata, ModelStatus
from detserve.client.protos import (
    error_codes_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    meta_graph_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    status_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from detserve.client.protos._pool import POOL
from detserve.client.tensors import make_ndarray, make_tensor_proto
from detserve.client.wire import GRPC_METHODS, parse_rest_metadata

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT = REPO_ROOT / "client"

# Blocks any import of TensorFlow / tensorflow-serving-api in a subprocess, as if they were not installed.
NO_TENSORFLOW = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'tf_keras', 'keras'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, _Block())
"""

# (client module, official module) per .proto.
PAIRS = [
    (types_pb2, official_types),
    (tensor_shape_pb2, official_shape),
    (tensor_pb2, official_tensor),
    (meta_graph_pb2, official_meta_graph),
    (model_pb2, official_model),
    (status_pb2, official_status_proto),
    (predict_pb2, official_predict),
    (get_model_metadata_pb2, official_metadata),
    (get_model_status_pb2, official_status),
]
# Official fields the client leaves out on purpose (unknown fields survive a parse either way).
LEFT_OUT = {
    "tensorflow.TensorProto": {"resource_handle_val", "variant_val"},
    "tensorflow.TensorInfo": {"coo_sparse", "composite_tensor"},
    "tensorflow.serving.PredictRequest": {"predict_streamed_options", "client_id", "request_options"},
}


def _official_descriptor(full_name: str):
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


def _type_name(field) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return ""


def _compare_message(mine, official, problems: list[str]) -> int:
    compared = 0
    for field in mine.fields:
        other = official.fields_by_number.get(field.number)
        where = f"{mine.full_name}.{field.name} = {field.number}"
        if other is None:
            problems.append(f"{where}: no official field with this number")
            continue
        if (other.name, other.type, other.is_repeated, _type_name(other)) != (
                field.name, field.type, field.is_repeated, _type_name(field)):
            problems.append(f"{where}: official is {other.name} type {other.type} repeated {other.is_repeated} "
                            f"{_type_name(other)}; client has type {field.type} repeated {field.is_repeated} "
                            f"{_type_name(field)}")
        if field.is_repeated and field.is_packed != other.is_packed:
            problems.append(f"{where}: packed {field.is_packed}, official {other.is_packed}")
        if (field.containing_oneof is None) != (other.containing_oneof is None):
            problems.append(f"{where}: oneof membership differs")
        if field.json_name != other.json_name:
            problems.append(f"{where}: json_name {field.json_name!r}, official {other.json_name!r}")
        compared += 1
    left_out = {f.name for f in official.fields} - {f.name for f in mine.fields}
    if left_out - LEFT_OUT.get(mine.full_name, set()):
        problems.append(f"{mine.full_name}: official fields missing from the client: {sorted(left_out)}")
    for nested in mine.nested_types:
        compared += _compare_message(nested, official.nested_types_by_name[nested.name], problems)
    for enum in mine.enum_types:
        _compare_enum(enum, official.enum_types_by_name[enum.name], problems)
    return compared


def _compare_enum(mine, official, problems: list[str]) -> None:
    for value in mine.values:
        other = official.values_by_name.get(value.name)
        if other is None or other.number != value.number:
            problems.append(f"{mine.full_name}.{value.name} = {value.number}: official "
                            f"{None if other is None else other.number}")


def test_field_numbers_and_types_equal_the_official_descriptors():
    problems: list[str] = []
    compared = 0
    for mine_module, official_module in PAIRS:
        mine_file = mine_module.DESCRIPTOR
        assert mine_file.package == official_module.DESCRIPTOR.package
        assert mine_file.pool is POOL and mine_file.name.startswith("detserve/client/protos/")
        for message in mine_file.message_types_by_name.values():
            compared += _compare_message(message, _official_descriptor(message.full_name), problems)
        for enum in mine_file.enum_types_by_name.values():
            _compare_enum(enum, descriptor_pool.Default().FindEnumTypeByName(enum.full_name), problems)
    # tensorflow.error.Code: every value, same number (StatusProto.error_code's enum).
    official_code = official_status_proto.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    _compare_enum(error_codes_pb2.Code.DESCRIPTOR, official_code, problems)
    assert {v.name for v in error_codes_pb2.Code.DESCRIPTOR.values} == {v.name for v in official_code.values}
    # The DataType enum is complete, not just the few values the client uses.
    assert {(v.name, v.number) for v in types_pb2.DataType.DESCRIPTOR.values} == {
        (v.name, v.number) for v in official_types.DataType.DESCRIPTOR.values}
    assert not problems, "\n".join(problems)
    assert compared >= 40


def test_grpc_method_paths_and_types_are_tf_servings():
    services = {
        "PredictionService": (prediction_service_pb2, official_prediction_service),
        "ModelService": (model_service_pb2, official_model_service),
    }
    for name, (mine, official) in services.items():
        mine_service = mine.DESCRIPTOR.services_by_name[name]
        official_service = official.DESCRIPTOR.services_by_name[name]
        assert mine_service.full_name == official_service.full_name == f"tensorflow.serving.{name}"
        for method in mine_service.methods:
            other = official_service.methods_by_name[method.name]
            assert (method.input_type.full_name, method.output_type.full_name) == (
                other.input_type.full_name, other.output_type.full_name)
    assert {name: path for name, (path, _) in GRPC_METHODS.items()} == {
        "Predict": "/tensorflow.serving.PredictionService/Predict",
        "GetModelMetadata": "/tensorflow.serving.PredictionService/GetModelMetadata",
        "GetModelStatus": "/tensorflow.serving.ModelService/GetModelStatus",
    }


# ---------------------------------------------------------------------------------------------------------
# Bytes, both ways


def test_client_requests_parse_with_the_official_classes():
    images = np.random.default_rng(0).integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    request = predict_pb2.PredictRequest(output_filter=["detection_boxes", "num_detections"])
    request.model_spec.name = "detector"
    request.model_spec.version.value = 7
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    request.inputs["encoded_images"].CopyFrom(make_tensor_proto([b"\xff\xd8jpeg", b"\x89PNG"]))
    official = official_predict.PredictRequest.FromString(request.SerializeToString())
    assert official.model_spec.name == "detector" and official.model_spec.version.value == 7
    assert official.model_spec.signature_name == "serving_default"
    assert list(official.output_filter) == ["detection_boxes", "num_detections"]
    assert np.array_equal(tf.make_ndarray(official.inputs["images"]), images)
    assert official.inputs["images"].dtype == official_types.DT_UINT8
    assert list(tf.make_ndarray(official.inputs["encoded_images"])) == [b"\xff\xd8jpeg", b"\x89PNG"]
    # Same bytes as TensorFlow's own make_tensor_proto for the uint8 tensor.
    assert request.inputs["images"].SerializeToString() == tf.make_tensor_proto(images).SerializeToString()

    labelled = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    labelled.model_spec.name = "detector"
    labelled.model_spec.version_label = "canary"
    parsed = official_metadata.GetModelMetadataRequest.FromString(labelled.SerializeToString())
    assert parsed.model_spec.WhichOneof("version_choice") == "version_label"
    assert parsed.model_spec.version_label == "canary" and list(parsed.metadata_field) == ["signature_def"]

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "detector"
    status.model_spec.version.value = 3
    assert official_status.GetModelStatusRequest.FromString(status.SerializeToString()).model_spec.version.value == 3


def test_official_responses_parse_with_the_client_classes():
    boxes = np.random.default_rng(1).random((2, 100, 4), dtype=np.float32)
    names = np.array([[b"with_mask"] * 100, [b"without_mask"] * 100], dtype=object)
    response = official_predict.PredictResponse()
    response.model_spec.name = "detector"
    response.model_spec.version.value = 4
    response.outputs["detection_boxes"].CopyFrom(tf.make_tensor_proto(boxes))
    response.outputs["detection_class_names"].CopyFrom(tf.make_tensor_proto(names))
    response.outputs["num_detections"].CopyFrom(tf.make_tensor_proto(np.array([3.0, 5.0], np.float32)))
    # Values in the typed repeated fields instead of tensor_content (how some servers answer), and TF's
    # "repeat the last value" encoding of a constant tensor.
    response.outputs["float_val"].CopyFrom(official_tensor.TensorProto(
        dtype=official_types.DT_FLOAT, float_val=[0.5, 0.25], tensor_shape={"dim": [{"size": 2}]}))
    response.outputs["filled"].CopyFrom(official_tensor.TensorProto(
        dtype=official_types.DT_INT32, int_val=[7], tensor_shape={"dim": [{"size": 2}, {"size": 3}]}))
    response.outputs["half"].CopyFrom(tf.make_tensor_proto(np.array([1.5, -2.0], np.float16)))
    mine = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    assert mine.model_spec.version.value == 4
    assert np.array_equal(make_ndarray(mine.outputs["detection_boxes"]), boxes)
    assert make_ndarray(mine.outputs["detection_class_names"]).tolist() == names.tolist()
    assert make_ndarray(mine.outputs["num_detections"]).tolist() == [3.0, 5.0]
    assert make_ndarray(mine.outputs["float_val"]).tolist() == [0.5, 0.25]
    assert make_ndarray(mine.outputs["filled"]).tolist() == [[7, 7, 7], [7, 7, 7]]
    assert make_ndarray(mine.outputs["half"]).tolist() == [1.5, -2.0]
    # make_ndarray also reads the official class (same field names).
    assert np.array_equal(make_ndarray(response.outputs["detection_boxes"]), boxes)


def _official_signature_map() -> official_metadata.SignatureDefMap:
    signature_map = official_metadata.SignatureDefMap()
    default = signature_map.signature_def["serving_default"]
    default.method_name = "tensorflow/serving/predict"
    images = default.inputs["images"]
    images.name, images.dtype = "serving_default_images:0", official_types.DT_UINT8
    for size in (-1, -1, -1, 3):
        images.tensor_shape.dim.add().size = size
    for key, dtype, dims in (("detection_boxes", official_types.DT_FLOAT, (-1, 100, 4)),
                             ("detection_scores", official_types.DT_FLOAT, (-1, 100)),
                             ("detection_classes", official_types.DT_FLOAT, (-1, 100)),
                             ("num_detections", official_types.DT_FLOAT, (-1,)),
                             ("detection_class_names", official_types.DT_STRING, (-1, 100))):
        info = default.outputs[key]
        info.name, info.dtype = f"StatefulPartitionedCall:{len(default.outputs)}", dtype
        for size in dims:
            info.tensor_shape.dim.add().size = size
    info = signature_map.signature_def["model_info"]
    info.inputs["images"].dtype = official_types.DT_UINT8
    for size in (-1, 320, 320, 3):
        info.inputs["images"].tensor_shape.dim.add().size = size
    info.outputs["class_names"].dtype = official_types.DT_STRING
    # An official-only field (sparse encoding) the client does not declare: kept as unknown bytes.
    signature_map.signature_def["sparse"].inputs["x"].coo_sparse.values_tensor_name = "v:0"
    return signature_map


def test_official_metadata_and_status_parse_with_the_client_classes():
    response = official_metadata.GetModelMetadataResponse()
    response.model_spec.name = "detector"
    response.model_spec.version.value = 2
    response.metadata["signature_def"].Pack(_official_signature_map())
    mine = get_model_metadata_pb2.GetModelMetadataResponse.FromString(response.SerializeToString())
    meta = ModelMetadata.from_proto(mine)
    assert (meta.model, meta.version, meta.input_size) == ("detector", 2, (320, 320))
    assert meta.image_signature.name == "serving_default"
    assert meta.image_signature.input.shape == (None, None, None, 3)
    assert meta.signatures["serving_default"].outputs["detection_class_names"].dtype == "DT_STRING"
    # Round trip through the client keeps what it does not know (the sparse field).
    signature_map = get_model_metadata_pb2.SignatureDefMap.FromString(mine.metadata["signature_def"].value)
    again = official_metadata.SignatureDefMap.FromString(signature_map.SerializeToString())
    assert again.signature_def["sparse"].inputs["x"].coo_sparse.values_tensor_name == "v:0"
    assert again == _official_signature_map()

    status = official_status.GetModelStatusResponse()
    for version, state, code, message in ((1, official_status.ModelVersionStatus.END, 0, ""),
                                          (2, official_status.ModelVersionStatus.AVAILABLE, 0, ""),
                                          (3, official_status.ModelVersionStatus.LOADING, 14, "still loading")):
        item = status.model_version_status.add(version=version, state=state)
        item.status.error_code = code
        item.status.error_message = message
    parsed = ModelStatus.from_proto("detector", get_model_status_pb2.GetModelStatusResponse.FromString(
        status.SerializeToString()))
    assert [(v.version, v.state, v.error_code, v.error_message) for v in parsed.versions] == [
        (1, "END", "OK", ""), (2, "AVAILABLE", "OK", ""), (3, "LOADING", "UNAVAILABLE", "still loading")]
    assert parsed.available_versions == [2]


def test_rest_json_of_official_messages_parses_with_the_client():
    """TF Serving's REST metadata is the response printed as JSON; the Any may carry "@type" or not."""
    from google.protobuf import json_format

    response = official_metadata.GetModelMetadataResponse()
    response.model_spec.name = "detector"
    response.model_spec.version.value = 2
    response.metadata["signature_def"].Pack(_official_signature_map())
    printed = json_format.MessageToDict(response, preserving_proto_field_name=True)
    assert printed["metadata"]["signature_def"]["@type"].endswith("tensorflow.serving.SignatureDefMap")
    for payload in (printed, {**printed, "metadata": {"signature_def": {
            k: v for k, v in printed["metadata"]["signature_def"].items() if k != "@type"}}}):
        meta = parse_rest_metadata(payload)
        assert meta.input_size == (320, 320) and meta.version == 2
        assert meta.bytes_signature is None and meta.image_signature.name == "serving_default"


# ---------------------------------------------------------------------------------------------------------
# Pools, generated code, dependencies


def test_private_pool_and_default_pool_hold_the_same_names_side_by_side():
    name = "tensorflow.serving.PredictRequest"
    assert POOL.FindMessageTypeByName(name) is predict_pb2.PredictRequest.DESCRIPTOR
    assert descriptor_pool.Default().FindMessageTypeByName(name) is official_predict.PredictRequest.DESCRIPTOR
    assert predict_pb2.PredictRequest is not official_predict.PredictRequest
    with pytest.raises(KeyError):  # the client's files never enter the default pool
        descriptor_pool.Default().FindFileByName("detserve/client/protos/predict.proto")


def test_client_first_then_tensorflow_in_one_process():
    code = ("import detserve.client.protos.predict_pb2 as mine\n"
            "from tensorflow_serving.apis import predict_pb2 as official\n"
            "r = mine.PredictRequest(); r.model_spec.name = 'm'\n"
            "assert official.PredictRequest.FromString(r.SerializeToString()).model_spec.name == 'm'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_generated_code_is_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools regenerates the client's _pb2 files")
    result = subprocess.run([sys.executable, str(CLIENT / "tools" / "regen_protos.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_imports_and_builds_requests_without_tensorflow():
    """In a process where importing tensorflow / tensorflow_serving fails, as with only detserve-client
    installed."""
    code = NO_TENSORFLOW + """
import numpy as np
import detserve.client, detserve.client.cli, detserve.client.draw, detserve.client.contract
from detserve.client.core import DetectorCore
from detserve.client.tensors import make_tensor_proto
core = DetectorCore('grpc://localhost:8500', 'detector', None, 'canary', encoding='auto', signature=None,
                    score_threshold=0.0, max_detections=None, timeout=1.0, retry=None, headers=None, ca_cert=None,
                    client_cert=None, client_key=None, server_name=None, max_message_bytes=1 << 20, input_size=None,
                    resize_method='bilinear_legacy', jpeg_quality=95, max_batch_size=8)
from detserve.client.metadata import Signature, TensorSpec
sig = Signature('serving_default', '', {'images': TensorSpec('images', 'DT_UINT8', (None, None, None, 3))}, {})
request = core.wire.predict(sig, {'images': np.zeros((1, 4, 4, 3), np.uint8)}).message
assert request.model_spec.version_label == 'canary' and len(request.SerializeToString()) > 48
assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving')]
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_distribution_declares_no_tensorflow():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
             for dep in project["dependencies"]]
    assert set(names) == {"click", "numpy", "pillow", "requests", "grpcio", "protobuf", "tqdm"}
    assert project["scripts"]["detserve"] == "detserve.client.cli:main"
    assert not any("tensorflow" in name for name in names)
    # What only some users need comes as extras, and none of them brings TensorFlow either.
    extras = {extra: [dep.split(">")[0].strip().lower() for dep in deps]
              for extra, deps in project["optional-dependencies"].items()}
    assert extras == {"demo": ["gradio"], "video": ["opencv-python-headless"]}
