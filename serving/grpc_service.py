"""``tensorflow.serving.PredictionService`` and ``tensorflow.serving.ModelService`` on grpc.aio.

Same protos, method names and status codes as tensorflow_model_server, so the official stubs
(``prediction_service_pb2_grpc.PredictionServiceStub``, ``model_service_pb2_grpc.ModelServiceStub``) and any
client built on them work unchanged. Classify, Regress and MultiInference answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from detserve.client.contract import SIGNATURE_DEF_FIELD
from detserve.serving.errors import Code, ServingError, from_exception, invalid_argument, unimplemented
from detserve.serving.manager import ModelManager, VersionStatus
from detserve.serving.metrics import ServingMetrics
from detserve.serving.predict import PredictionCore
from detserve.serving.tensors import from_ndarray

log = logging.getLogger(__name__)



def _spec_version(spec) -> tuple[int | None, str | None]:
    version = spec.version.value if spec.HasField("version") else None
    return version, (spec.version_label or None)


def fill_version_status(response: get_model_status_pb2.GetModelStatusResponse, statuses: list[VersionStatus]) -> None:
    for status in statuses:
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = int(status.state)
        entry.status.SetInParent()
        if status.error is not None:
            entry.status.error_code = status.error.code.value[0]
            entry.status.error_message = status.error.message


def model_metadata(core: PredictionCore, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadataImpl: only the ``signature_def`` field, packed as a SignatureDefMap."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    version, label = _spec_version(request.model_spec)
    with core.acquire(request.model_spec.name, version, label) as handle:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = handle.name
        response.model_spec.version.value = handle.version
        packed = any_pb2.Any()
        packed.Pack(handle.servable.signature_defs)
        response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
    return response


def model_status(manager: ModelManager, request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    version, label = _spec_version(request.model_spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    fill_version_status(response, manager.status(request.model_spec.name, version, label))
    return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: PredictionCore, metrics: ServingMetrics):
        self.core = core
        self.metrics = metrics

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        started = time.perf_counter()
        name = request.model_spec.name
        try:
            response = await self._predict(request)
        except Exception as error:
            failure = from_exception(error)
            self.metrics.request_count.inc(name, failure.code.name)
            if failure.code in (Code.INTERNAL, Code.UNKNOWN):
                log.error("Predict %s failed: %s", name, failure.message)
            await context.abort(failure.code, failure.message)
        self.metrics.request_count.inc(name, "OK")
        self.metrics.request_latency.observe(name, "Predict", "GRPC", (time.perf_counter() - started) * 1e6)
        return response

    async def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        core = self.core
        spec = request.model_spec
        version, label = _spec_version(spec)
        with core.acquire(spec.name, version, label) as handle:
            signature = core.signature(handle.servable, spec.signature_name)
            wanted = core.outputs_for(signature, request.output_filter)
            inputs = core.parse_tensor_protos(signature, request.inputs)
            batch_size = core.validate(signature, inputs)
            started = time.perf_counter()
            outputs = await core.run(handle, signature, inputs, batch_size)
            self.metrics.runtime_latency.observe(spec.name, "Predict", "TF2", (time.perf_counter() - started) * 1e6)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = handle.version
            response.model_spec.signature_name = signature.name
            for alias in wanted:
                response.outputs[alias].CopyFrom(from_ndarray(outputs[alias], signature.outputs[alias].dtype))
        return response

    async def GetModelMetadata(self, request, context):
        try:
            return model_metadata(self.core, request)
        except Exception as error:
            failure = from_exception(error)
            await context.abort(failure.code, failure.message)

    async def _unimplemented(self, method: str, request, context):
        name = request.model_spec.name
        error = unimplemented(f"{method} is not implemented by the embedded detserve server, which serves Predict "
                              "signatures only; use Predict, or TensorFlow Serving for Classify/Regress/"
                              "MultiInference")
        if name:
            self.metrics.request_count.inc(name, error.code.name)
        await context.abort(error.code, error.message)

    async def Classify(self, request, context):
        await self._unimplemented("Classify", request, context)

    async def Regress(self, request, context):
        await self._unimplemented("Regress", request, context)

    async def MultiInference(self, request, context):
        error = unimplemented("MultiInference is not implemented by the embedded detserve server (Predict only)")
        await context.abort(error.code, error.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, map_config: Callable):
        self.manager = manager
        self.map_config = map_config  # container base paths -> local ones, as for the config file

    async def GetModelStatus(self, request, context):
        try:
            return model_status(self.manager, request)
        except Exception as error:
            failure = from_exception(error)
            await context.abort(failure.code, failure.message)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                       "ModelConfigList is currently supported")
            try:
                config = self.map_config(request.config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.manager.reload_config, config)
        except Exception as error:
            failure = from_exception(error)
            log.error("ReloadConfig failed: %s", failure.message)
            await context.abort(failure.code, failure.message)
        response.status.error_code = 0
        response.status.SetInParent()
        return response


def add_services(server: grpc.aio.Server, core: PredictionCore, manager: ModelManager, metrics: ServingMetrics,
                 map_config: Callable) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, map_config), server)


__all__ = ["ServingError", "add_services", "fill_version_status", "model_metadata", "model_status"]
