"""``grpc.health.v1.Health/Check``, as ``tensorflow_model_server --enable_grpc_healthcheck_service`` answers it.

TF Serving turns on gRPC's default health service once its models have loaded and it listens
(``tensorflow_serving/model_servers/server.cc``): the empty service name (the whole server) and the names it sets,
``ModelService`` and ``PredictionService``, answer SERVING; any other name is NOT_FOUND. A Kubernetes ``grpc``
liveness probe calls Check with ``service: ""``. This server answers the same, and NOT_SERVING once it starts to
drain (what gRPC's default service reports after ``Shutdown``).

The two messages come from a hand-written descriptor in a private pool: grpcio-health-checking is not a
dependency, and a private pool cannot clash with it (or another copy of health.proto) in the same process. Watch
is not served; a client that health-checks its channels reads UNIMPLEMENTED as "healthy" (gRFC A17).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "grpc.health.v1.Health"
# Service names TF Serving registers (server.cc), besides "" for the server itself.
TF_SERVING_SERVICES = ("ModelService", "PredictionService")


def _health_messages():
    """HealthCheckRequest and HealthCheckResponse of grpc/health/v1/health.proto (same names and numbers)."""
    proto = descriptor_pb2.FileDescriptorProto(name="detserve/serving/health.proto", package="grpc.health.v1",
                                               syntax="proto3")
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
                 for name in ("HealthCheckRequest", "HealthCheckResponse"))


HealthCheckRequest, HealthCheckResponse = _health_messages()
SERVING = HealthCheckResponse.ServingStatus.Value("SERVING")
NOT_SERVING = HealthCheckResponse.ServingStatus.Value("NOT_SERVING")


class HealthService:
    """Check for "" and TF Serving's service names; all SERVING until :meth:`set_not_serving`."""

    def __init__(self) -> None:
        self._status = dict.fromkeys(("", *TF_SERVING_SERVICES), SERVING)

    def set_not_serving(self) -> None:
        self._status = dict.fromkeys(self._status, NOT_SERVING)

    async def check(self, request, context: grpc.aio.ServicerContext):
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"service {request.service!r} is not registered "
                                f"(known: \"\", {', '.join(TF_SERVING_SERVICES)})")
        return HealthCheckResponse(status=status)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.check, request_deserializer=HealthCheckRequest.FromString,
                response_serializer=HealthCheckResponse.SerializeToString),
        })


def add_health_service(server: grpc.aio.Server) -> HealthService:
    health = HealthService()
    server.add_generic_rpc_handlers((health.handler(),))
    return health


__all__ = ["HealthCheckRequest", "HealthCheckResponse", "HealthService", "SERVING", "NOT_SERVING",
           "add_health_service"]
