"""grpc.health.v1.Health/Check on the embedded server, as TF Serving's --enable_grpc_healthcheck_service answers it
(what the Deployment's gRPC liveness probe calls): in process against the service, then on a real `detserve serve`."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from serving_harness import ServerProcess, cached_model, install_version

from detserve.serving.health import (
    NOT_SERVING,
    SERVING,
    HealthCheckRequest,
    HealthCheckResponse,
    add_health_service,
)

CHECK = "/grpc.health.v1.Health/Check"


def _check_stub(channel):
    return channel.unary_unary(CHECK, request_serializer=HealthCheckRequest.SerializeToString,
                               response_deserializer=HealthCheckResponse.FromString)


def test_messages_have_health_proto_wire_format():
    # grpc/health/v1/health.proto: `string service = 1;` and `ServingStatus status = 1;` with SERVING = 1.
    assert HealthCheckRequest(service="ModelService").SerializeToString() == b"\n\x0cModelService"
    assert HealthCheckResponse(status=SERVING).SerializeToString() == b"\x08\x01"
    assert HealthCheckResponse.FromString(b"\x08\x02").status == NOT_SERVING
    assert HealthCheckResponse.DESCRIPTOR.full_name == "grpc.health.v1.HealthCheckResponse"


def test_check_answers_like_tf_serving_and_goes_not_serving_on_drain():
    async def run():
        server = grpc.aio.server()
        health = add_health_service(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = _check_stub(channel)
                for service in ("", "ModelService", "PredictionService"):
                    assert (await check(HealthCheckRequest(service=service), timeout=10)).status == SERVING
                # The fully qualified name is not what TF Serving registers (server.cc sets the short names).
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await check(HealthCheckRequest(service="tensorflow.serving.PredictionService"), timeout=10)
                assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
                health.set_not_serving()
                assert (await check(HealthCheckRequest(), timeout=10)).status == NOT_SERVING
        finally:
            await server.stop(None)

    asyncio.run(run())


@pytest.fixture(scope="module")
def model_args(tmp_path_factory) -> list[str]:
    repo = tmp_path_factory.mktemp("health-repo")
    install_version(cached_model("tiny", tmp_path_factory.mktemp("models"), warmup=None), repo / "detector", 1)
    return ["--model-name", "detector", "--model-base-path", str(repo / "detector"), "--no-enable-model-warmup",
            "--file-system-poll-wait-seconds", "0"]


@pytest.mark.parametrize("enabled", [True, False])
def test_detserve_serve_answers_the_kubelet_grpc_probe(model_args, enabled):
    flag = "--enable-grpc-healthcheck-service" if enabled else "--no-enable-grpc-healthcheck-service"
    with ServerProcess(args=[*model_args, flag]) as server:
        server.wait_ready()
        with grpc.insecure_channel(server.grpc_target) as channel:
            check = _check_stub(channel)
            if enabled:
                # What the kubelet sends for `livenessProbe: grpc: {port: 8500}` (no service: "").
                assert check(HealthCheckRequest(), timeout=10).status == SERVING
            else:
                with pytest.raises(grpc.RpcError) as off:
                    check(HealthCheckRequest(), timeout=10)
                assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
