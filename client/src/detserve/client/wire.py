"""What goes over the wire, without I/O: each transport's requests, and how its answers parse.

``GrpcWire`` and ``RestWire`` have one interface: ``predict``, ``metadata`` and ``status`` each return a
:class:`Request` that a transport sends as it is and whose ``parse`` turns the transport's answer into the
client's result (numpy outputs, :class:`ModelMetadata`, :class:`ModelStatus`). Nothing above them knows
which transport it talks to.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from google.protobuf import json_format

from .address import ServerAddress
from .contract import SIGNATURE_DEF_FIELD, ModelSpec
from .errors import DetserveClientError
from .metadata import ModelMetadata, ModelStatus, Signature
from .protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
)
from .protos._pool import POOL
from .tensors import json_to_ndarray, make_ndarray, make_tensor_proto

__all__ = ["Request", "HttpRequest", "GrpcWire", "RestWire", "wire_for", "parse_rest_metadata",
           "GRPC_METHODS"]

T = TypeVar("T")


@dataclass(frozen=True)
class Request(Generic[T]):
    rpc: str  # TF Serving's name of the call ("Predict", "GetModelMetadata", "GetModelStatus")
    message: Any  # what the transport sends: the request proto (gRPC) or an HttpRequest (REST)
    parse: Callable[[Any], T]  # the transport's answer (the response proto, or the JSON body) -> the result


@dataclass(frozen=True)
class HttpRequest:
    method: str  # "GET" | "POST"
    path: str  # below the server's base URL: /v1/models/...
    body: dict | None = None  # sent as JSON


def _grpc_method(module, service: str, rpc: str) -> str:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[rpc].name}"


#: rpc -> (gRPC method path, response message class).
GRPC_METHODS = {
    "Predict": (_grpc_method(prediction_service_pb2, "PredictionService", "Predict"), predict_pb2.PredictResponse),
    "GetModelMetadata": (_grpc_method(prediction_service_pb2, "PredictionService", "GetModelMetadata"),
                         get_model_metadata_pb2.GetModelMetadataResponse),
    "GetModelStatus": (_grpc_method(model_service_pb2, "ModelService", "GetModelStatus"),
                       get_model_status_pb2.GetModelStatusResponse),
}


class GrpcWire:
    """TF Serving's gRPC API: request protos in, response protos out."""

    # uint8 tensors go as raw bytes (tensor_content): no encoding cost, and no JSON.
    default_encoding = "raw"

    def __init__(self, model: ModelSpec):
        self.model = model

    def _fill_spec(self, spec, signature_name: str | None = None) -> None:
        spec.name = self.model.name
        if self.model.version is not None:
            spec.version.value = self.model.version
        elif self.model.label is not None:
            spec.version_label = self.model.label
        if signature_name:
            spec.signature_name = signature_name

    def predict(self, signature: Signature, inputs: dict[str, Any],
                output_filter: Iterable[str] = ()) -> Request[dict[str, np.ndarray]]:
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, signature.name)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        return Request("Predict", request, _outputs_from_proto)

    def metadata(self) -> Request[ModelMetadata]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        self._fill_spec(request.model_spec)
        return Request("GetModelMetadata", request, ModelMetadata.from_proto)

    def status(self) -> Request[ModelStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        return Request("GetModelStatus", request, lambda response: ModelStatus.from_proto(self.model.name, response))


def _outputs_from_proto(response) -> dict[str, np.ndarray]:
    return {key: make_ndarray(value) for key, value in response.outputs.items()}


class RestWire:
    """TF Serving's REST API (``/v1/models/...``): JSON bodies in and out."""

    # JSON lists of pixels are large and slow for TF Serving to parse (tensorflow/serving#1991): base64 JPEG.
    default_encoding = "jpeg"

    def __init__(self, model: ModelSpec):
        self.model = model

    def _path(self) -> str:
        path = f"/v1/models/{urllib.parse.quote(self.model.name, safe='')}"
        if self.model.version is not None:
            path += f"/versions/{int(self.model.version)}"
        elif self.model.label is not None:
            path += f"/labels/{urllib.parse.quote(self.model.label, safe='')}"
        return path

    def predict(self, signature: Signature, inputs: dict[str, Any],
                output_filter: Iterable[str] = ()) -> Request[dict[str, np.ndarray]]:
        columns = {}
        for key, value in inputs.items():
            if isinstance(value, (list, tuple)):  # bytes: TF Serving's {"b64": ...} convention
                columns[key] = [{"b64": base64.b64encode(v).decode("ascii")} for v in value]
            else:
                columns[key] = np.asarray(value).tolist()
        body = {"signature_name": signature.name, "inputs": columns}
        wanted = list(output_filter)  # REST has no output_filter: the client drops the others

        def parse(payload: dict) -> dict[str, np.ndarray]:
            outputs = _outputs_from_json(payload, signature)
            return {key: value for key, value in outputs.items() if not wanted or key in wanted}

        return Request("Predict", HttpRequest("POST", self._path() + ":predict", body), parse)

    def metadata(self) -> Request[ModelMetadata]:
        return Request("GetModelMetadata", HttpRequest("GET", self._path() + "/metadata"), parse_rest_metadata)

    def status(self) -> Request[ModelStatus]:
        def parse(payload: dict) -> ModelStatus:
            response = json_format.ParseDict(payload, get_model_status_pb2.GetModelStatusResponse(),
                                             ignore_unknown_fields=True, descriptor_pool=POOL)
            return ModelStatus.from_proto(self.model.name, response)

        return Request("GetModelStatus", HttpRequest("GET", self._path()), parse)


def _outputs_from_json(payload: dict, signature: Signature) -> dict[str, np.ndarray]:
    outputs = payload.get("outputs")
    if outputs is None:
        raise DetserveClientError(f"REST predict answer has no 'outputs': {str(payload)[:200]}")
    if not isinstance(outputs, dict):  # a one-output signature answers with the bare value
        keys = list(signature.outputs)
        outputs = {keys[0] if len(keys) == 1 else "outputs": outputs}
    result = {}
    for key, value in outputs.items():
        spec = signature.outputs.get(key)
        result[key] = json_to_ndarray(value, string=spec is not None and spec.dtype == "DT_STRING")
    return result


def parse_rest_metadata(payload: dict) -> ModelMetadata:
    """TF Serving's REST metadata JSON (the GetModelMetadataResponse printed with its SignatureDefMap Any,
    with or without ``@type``): the map is read straight from the JSON, never packed into an Any."""
    model_spec = json_format.ParseDict(payload.get("model_spec") or {}, model_pb2.ModelSpec(),
                                       ignore_unknown_fields=True, descriptor_pool=POOL)
    signature_json = dict((payload.get("metadata") or {}).get(SIGNATURE_DEF_FIELD) or {})
    signature_json.pop("@type", None)
    signature_map = json_format.ParseDict(signature_json, get_model_metadata_pb2.SignatureDefMap(),
                                          ignore_unknown_fields=True, descriptor_pool=POOL)
    return ModelMetadata.from_signature_map(model_spec, signature_map, raw=payload)


_WIRES: dict[str, type[GrpcWire] | type[RestWire]] = {"grpc": GrpcWire, "rest": RestWire}


def wire_for(address: ServerAddress, model: ModelSpec) -> GrpcWire | RestWire:
    """The wire format the server's address names."""
    return _WIRES[address.transport](model)
