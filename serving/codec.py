"""TF Serving's protos <-> the data plane's values, for the gRPC front end, the warmup replay and REST status.

A PredictRequest becomes a :class:`~.predict.PredictCall` whose inputs are decoded with ``tensors.to_ndarray``; a
:class:`~.predict.Prediction` becomes a PredictResponse in the typed fields TF Serving writes; version states
become a GetModelStatusResponse (REST prints that message as JSON, as TF Serving's REST handler does).
"""

from __future__ import annotations

from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from detserve.client.contract import ModelSpec

from .predict import PredictCall, Prediction
from .servable import Signature
from .tensors import from_ndarray, to_ndarray
from .versions import VersionStatus


def model_spec(spec) -> ModelSpec:
    """A request's ``tensorflow.serving.ModelSpec``."""
    version = spec.version.value if spec.HasField("version") else None
    return ModelSpec(spec.name, version, spec.version_label or None)


def predict_call(request: predict_pb2.PredictRequest) -> PredictCall:
    def decode(signature: Signature):
        return {alias: to_ndarray(proto, alias) for alias, proto in request.inputs.items()}

    return PredictCall(model_spec(request.model_spec), request.model_spec.signature_name, decode,
                       tuple(request.output_filter), frozenset(request.inputs.keys()))


def predict_response(prediction: Prediction) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = prediction.name
    response.model_spec.version.value = prediction.version
    response.model_spec.signature_name = prediction.signature.name
    for alias, array in prediction.outputs.items():
        response.outputs[alias].CopyFrom(from_ndarray(array, prediction.signature.outputs[alias].dtype))
    return response


def status_response(statuses: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = int(status.state)
        entry.status.SetInParent()
        if status.error is not None:
            entry.status.error_code = status.error.code.value[0]
            entry.status.error_message = status.error.message
    return response
