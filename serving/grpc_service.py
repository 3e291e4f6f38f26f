"""``tensorflow.serving.PredictionService`` and ``tensorflow.serving.ModelService`` on grpc.aio.

Same protos, method names and status codes as tensorflow_model_server, so the official stubs
(``prediction_service_pb2_grpc.PredictionServiceStub``, ``model_service_pb2_grpc.ModelServiceStub``) and any
client built on them work unchanged. Each method decodes its request (``codec``), calls the data plane and
encodes the answer. Classify, Regress and MultiInference answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from detserve.client.contract import SIGNATURE_DEF_FIELD

from .codec import model_spec, predict_call, predict_response, status_response
from .errors import Code, from_exception, invalid_argument, unimplemented
from .manager import ModelManager
from .metrics import ServingMetrics
from .predict import DataPlane

log = logging.getLogger(__name__)


async def _abort(context, error: BaseException, what: str = "") -> None:
    """End the call with the error's canonical code and message (logged when it is the server's fault)."""
    failure = from_exception(error)
    if what and failure.code in (Code.INTERNAL, Code.UNKNOWN):
        log.error("%s failed: %s", what, failure.message)
    await context.abort(failure.code, failure.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, plane: DataPlane, metrics: ServingMetrics):
        self.plane = plane
        self.metrics = metrics

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        started = time.perf_counter()
        name = request.model_spec.name
        try:
            response = predict_response(await self.plane.predict(predict_call(request, self.plane.limits.max_message_bytes)))
        except Exception as error:
            self.metrics.request_count.inc(name, from_exception(error).code.name)
            await _abort(context, error, f"Predict {name}")
        self.metrics.request_count.inc(name, "OK")
        self.metrics.request_latency.observe(name, "Predict", "GRPC", (time.perf_counter() - started) * 1e6)
        return response

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        """GetModelMetadataImpl: only the ``signature_def`` field, packed as a SignatureDefMap."""
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {field} is not supported")
            name, version, signature_defs = self.plane.metadata(model_spec(request.model_spec))
        except Exception as error:
            await _abort(context, error)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

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
    def __init__(self, plane: DataPlane, manager: ModelManager, map_config: Callable):
        self.plane = plane
        self.manager = manager
        self.map_config = map_config  # container base paths -> local ones, as for the config file

    async def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            return status_response(self.plane.status(model_spec(request.model_spec)))
        except Exception as error:
            await _abort(context, error)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                       "ModelConfigList is currently supported")
            try:
                config = self.map_config(request.config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
            await asyncio.get_running_loop().run_in_executor(None, self.manager.reload_config, config)
        except Exception as error:
            log.error("ReloadConfig failed: %s", from_exception(error).message)
            await _abort(context, error)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        response.status.SetInParent()
        return response


def add_services(server: grpc.aio.Server, plane: DataPlane, manager: ModelManager, metrics: ServingMetrics,
                 map_config: Callable) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(plane, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(plane, manager, map_config), server)


__all__ = ["add_services"]
