"""Server-side batching in a running server (merging, padding, queue limit, task size) and SIGTERM drain."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from serving_harness import ServerProcess, cached_model, install_version
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from detserve.serving.tensors import make_tensor_proto

pytestmark = pytest.mark.timeout(300)

# One batch thread and a long timeout make merging deterministic: requests sent together share one batch.
BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 300000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 2 }
allowed_batch_sizes: 2
allowed_batch_sizes: 4
allowed_batch_sizes: 8
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "serving-models"
    repo = tmp_path_factory.mktemp("repository")
    install_version(cached_model("tiny", cache, 1, warmup=None), repo / "detector", 1)
    return repo


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    batching = tmp_path_factory.mktemp("batching") / "batching.config"
    batching.write_text(BATCHING)
    process = ServerProcess(["--repository", str(repository), "--batching-parameters-file", str(batching),
                             "--tensorflow-inter-op-parallelism", "4"])
    with process:
        process.wait_ready()
        yield process


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def request(value: int = 0, rows: int = 1, signature: str = "serving_default", seconds: float = 0.0):
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "detector"
    message.model_spec.signature_name = signature
    if signature == "slow":
        message.inputs["seconds"].CopyFrom(make_tensor_proto(np.full([rows], seconds, np.float32)))
    elif signature == "total":
        message.inputs["x"].CopyFrom(make_tensor_proto(np.ones((rows, 2), np.float32)))
    else:
        message.inputs["images"].CopyFrom(make_tensor_proto(np.full((rows, 4, 4, 3), value, np.uint8)))
    return message


def batch_metrics(server) -> dict[str, float]:
    text = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=30).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")) and "batching_session" in sample.name:
                key = sample.name.rsplit(":", 1)[-1]
                if "execution_batch_size" in sample.labels:
                    key += "{" + sample.labels["execution_batch_size"] + "}"
                values[key] = sample.value
    return values


def test_concurrent_requests_are_merged_into_one_batch(server, stub):
    before = batch_metrics(server)
    body = {"instances": np.full((1, 4, 4, 3), 200, np.uint8).tolist()}
    with requests.Session() as session:
        rest_results = []
        rest = [threading.Thread(target=lambda: rest_results.append(
            session.post(f"{server.rest_url}/v1/models/detector:predict", json=body, timeout=30)))
            for _ in range(2)]
        grpc_futures = [stub.Predict.future(request(value=10 * (i + 1)), timeout=30) for i in range(4)]
        for thread in rest:
            thread.start()
        for thread in rest:
            thread.join(30)
    # Each caller gets its own rows back out of the merged batch.
    for i, future in enumerate(grpc_futures):
        scores = future.result().outputs["detection_scores"].float_val
        assert scores[0] == pytest.approx(10 * (i + 1) / 255, abs=1e-6)
    assert all(reply.status_code == 200 for reply in rest_results)
    assert all(reply.json()["predictions"][0]["detection_scores"][0] == pytest.approx(200 / 255, abs=1e-6)
               for reply in rest_results)
    after = batch_metrics(server)
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert delta["input_batch_size_count"] == 6  # six requests of one row ...
    assert delta["processed_batch_size_count"] == 1  # ... ran as one batch ...
    assert delta["processed_batch_size_sum"] == 8  # ... padded to the allowed size 8
    assert delta["padding_size_sum{8}"] == 2
    assert delta["queuing_latency_count"] == 6


def test_a_full_queue_answers_unavailable_and_the_server_recovers(server, stub):
    slow = stub.Predict.future(request(signature="slow", seconds=2.0), timeout=60)
    time.sleep(0.8)  # after its 300 ms batch timeout, the slow request holds the only batch thread
    queued = [stub.Predict.future(request(value=v, rows=8), timeout=60) for v in (1, 2)]  # the queue's 2 batches
    time.sleep(0.1)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request(rows=8), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "The batch scheduling queue to which this task was submitted is full" in error.value.details()
    reply = requests.post(f"{server.rest_url}/v1/models/detector:predict",
                          json={"instances": np.zeros((8, 4, 4, 3), np.uint8).tolist()}, timeout=30)
    assert reply.status_code == 503 and "queue" in reply.json()["error"]
    assert slow.result().outputs["waited"].float_val[0] == pytest.approx(2.0)
    for value, future in zip((1, 2), queued, strict=True):
        assert future.result().outputs["detection_scores"].float_val[0] == pytest.approx(value / 255, abs=1e-6)
    assert stub.Predict(request(value=3), timeout=30).outputs["num_detections"].float_val[0] == 1.0


def test_requests_larger_than_max_batch_size_are_invalid(server, stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request(rows=9), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 9 is larger than maximum input batch size 8" in error.value.details()
    reply = requests.post(f"{server.rest_url}/v1/models/detector:predict",
                          json={"instances": np.zeros((9, 4, 4, 3), np.uint8).tolist()}, timeout=30)
    assert reply.status_code == 400 and "Task size 9" in reply.json()["error"]


def test_signatures_that_cannot_be_batched_run_directly(server, stub):
    before = batch_metrics(server)
    response = stub.Predict(request(signature="total", rows=3), timeout=30)
    assert response.outputs["sum"].float_val == [6.0]
    assert batch_metrics(server).get("processed_batch_size_count") == before.get("processed_batch_size_count")


# ------------------------------------------------------------------------------------------------------------
# SIGTERM


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_refuses_new_requests_finishes_in_flight_ones_and_exits_0(repository):
    process = ServerProcess(["--repository", str(repository), "--tensorflow-inter-op-parallelism", "4"])
    with process:
        process.wait_ready()
        with grpc.insecure_channel(process.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            in_flight = [stub.Predict.future(request(signature="slow", seconds=2.5), timeout=60) for _ in range(2)]
            rest_reply = []
            rest = threading.Thread(target=lambda: rest_reply.append(requests.post(
                f"{process.rest_url}/v1/models/detector:predict",
                json={"signature_name": "slow", "instances": [2.5]}, timeout=60)))
            rest.start()
            time.sleep(1.0)
            started = time.monotonic()
            process.process.send_signal(15)
            # New requests are answered UNAVAILABLE (retryable) at once while the accepted ones still run.
            deadline = time.monotonic() + 10
            while "shutting down" not in process.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as late:
                stub.Predict(request(), timeout=10)
            assert late.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in late.value.details()
            late_rest = requests.post(f"{process.rest_url}/v1/models/detector:predict", timeout=10,
                                      json={"instances": [np.zeros((4, 4, 3), np.uint8).tolist()]})
            assert late_rest.status_code == 503 and "shutting down" in late_rest.json()["error"]
            assert not any(f.done() for f in in_flight) and rest.is_alive()
            for future in in_flight:
                assert future.result().outputs["waited"].float_val[0] == pytest.approx(2.5)
            rest.join(60)
            assert rest_reply[0].status_code == 200 and rest_reply[0].json() == {"predictions": [
                {"version": 1, "waited": 2.5}]}
        assert process.process.wait(60) == 0
        assert time.monotonic() - started < 30
        assert refused(process.rest_port) and refused(process.grpc_port)
    log = process.log()
    assert "received SIGTERM" in log and "stopped" in log
