"""TF Serving's protos <-> the data plane's values, for the gRPC front end, the warmup replay and REST status.

A PredictRequest becomes a :class:`~.predict.PredictCall` whose inputs are described from their TensorProto
headers (``tensors.declared``, validated before any value is read) and decoded with ``tensors.to_ndarray``; a
:class:`~.predict.Prediction` becomes a PredictResponse in the typed fields TF Serving writes; version states
become a GetModelStatusResponse (REST prints that message as JSON, as TF Serving's REST handler does).
"""

from __future__ import annotations

from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from detserve.client.contract import MAX_MESSAGE_BYTES, ModelSpec

from .predict import PredictCall, Prediction
from .servable import Signature
from .tensors import declared, from_ndarray, numeric_bytes, to_ndarray
from .versions import VersionStatus


def model_spec(spec) -> ModelSpec:
    """A request's ``tensorflow.serving.ModelSpec``."""
    version = spec.version.value if spec.HasField("version") else None
    return ModelSpec(spec.name, version, spec.version_label or None)


# Requests declaring at most this many bytes of numbers are decoded on the event loop (see PredictCall.small):
# whatever field carries them, that is cheaper than the hop to the request pool and back (about 0.3 ms).
SMALL_REQUEST_BYTES = 64 * 1024
# ... and up to this many when every input comes as tensor_content, whose decoding is one copy (20 us for a 320x320
# image, 130 us for 640x640). Typed fields (int_val, float_val) are converted value by value: those stay off the loop.
SMALL_CONTENT_BYTES = 2 * 1024 * 1024


def predict_call(request: predict_pb2.PredictRequest, max_tensor_bytes: int = MAX_MESSAGE_BYTES) -> PredictCall:
    """The data plane's call for a PredictRequest; ``max_tensor_bytes`` bounds what a short typed field may fill."""
    def describe():
        return {alias: declared(proto, alias) for alias, proto in request.inputs.items()}

    def decode(signature: Signature):
        return {alias: to_ndarray(proto, alias, max_tensor_bytes) for alias, proto in request.inputs.items()}

    # What the headers declare, not what was sent: a short typed field is filled up to the declared shape.
    sizes = [numeric_bytes(proto) for proto in request.inputs.values()]
    copies = all(proto.tensor_content for proto in request.inputs.values())
    small = None not in sizes and sum(sizes) <= (SMALL_CONTENT_BYTES if copies else SMALL_REQUEST_BYTES)
    return PredictCall(model_spec(request.model_spec), request.model_spec.signature_name, decode,
                       tuple(request.output_filter), frozenset(request.inputs.keys()), describe, small)


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
