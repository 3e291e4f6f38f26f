"""SIGTERM on a real `detserve serve` process: the request in flight finishes, new requests are answered
UNAVAILABLE (503) meanwhile, and the process leaves right after the drain (exit 0) instead of sitting in the interpreter's teardown. And a
client with default settings loses no call while the server is stopped and started again.

The teardown is made slow on purpose: a ``sitecustomize`` on the server's PYTHONPATH registers an atexit
handler that sleeps and starts a non-daemon thread that never ends, stand-ins for TensorFlow's slow
destructors and for any library thread. A server that exits through the interpreter's normal teardown hangs on
them; one that leaves with ``os._exit`` once drained does not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from serving_harness import ServerProcess, cached_model, install_version
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from detserve.client import Detector, DetserveClientError
from detserve.serving.tensors import make_tensor_proto

SLOW_SECONDS = 3.0
GO_FILE = "DETSERVE_TEST_GO_FILE"
HANG_GUARD_S = 10.0  # only against a hang: a clean exit takes well under a second (docs/serving.md, Shutdown)

SLOW_TEARDOWN = f"""
import atexit, os, threading, time
atexit.register(time.sleep, {HANG_GUARD_S * 3})
threading.Thread(target=threading.Event().wait, name="never-ends", daemon=False).start()

# A restarted server imports TensorFlow (the slow part of its start) while the old one still serves, then waits
# for the go file: the restart's downtime is its model load, not the load of the machine's other work.
if os.environ.get("{GO_FILE}"):
    import tensorflow
    open(os.environ["{GO_FILE}"] + ".waiting", "w").close()
    while not os.path.exists(os.environ["{GO_FILE}"]):
        time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def serve_command(tmp_path_factory) -> dict:
    """ServerProcess's arguments: the tiny model, and the slow teardown on the PYTHONPATH."""
    root = tmp_path_factory.mktemp("shutdown")
    install_version(cached_model("tiny", tmp_path_factory.mktemp("models")), root / "repo" / "detector", 1)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_TEARDOWN)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"args": ["--model-name", "detector", "--model-base-path", str(root / "repo" / "detector")],
            "env": {"PYTHONPATH": path}}


@pytest.fixture
def server(serve_command):
    process = ServerProcess(**serve_command)
    with process:
        process.wait_ready()
        yield process


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _until(condition, what: str, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_at_once(server):
    answer: dict = {}

    def slow_request():
        reply = requests.post(f"{server.rest_url}/v1/models/detector:predict", timeout=60,
                              json={"signature_name": "slow", "instances": [SLOW_SECONDS]})
        answer["reply"], answer["at"] = reply, time.monotonic()

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(1.0)  # the request reaches the model (it then runs SLOW_SECONDS)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    _until(lambda: "shutting down" in server.log(), f"no shutdown after SIGTERM:\n{server.log()[-2000:]}")
    # While the slow request still runs, new requests get a fast, retryable UNAVAILABLE (503) on both front ends.
    late = requests.post(f"{server.rest_url}/v1/models/detector:predict", timeout=HANG_GUARD_S,
                         json={"instances": [np.zeros((4, 4, 3), np.uint8).tolist()]})
    assert late.status_code == 503 and "shutting down" in late.json()["error"], late.text
    assert late.headers.get("Connection", "").lower() == "close"
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "detector"
        request.inputs["images"].CopyFrom(make_tensor_proto(np.zeros((1, 4, 4, 3), np.uint8)))
        with pytest.raises(grpc.RpcError) as refused:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=HANG_GUARD_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()
    assert "reply" not in answer and server.process.poll() is None  # answered while the request still runs

    client.join(SLOW_SECONDS + HANG_GUARD_S)
    reply = answer["reply"]
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0]["waited"] == pytest.approx(SLOW_SECONDS)
    assert answer["at"] > signalled  # it was still running when SIGTERM came

    try:
        code = server.process.wait(HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {HANG_GUARD_S:g} s after the last request finished (teardown hang):\n"
                    f"{server.log()[-2000:]}")
    assert code == 0, server.log()[-2000:]
    assert "stopped" in server.log()
    assert _refused(server.rest_port) and _refused(server.grpc_port)


def test_a_client_with_default_settings_loses_no_call_across_a_restart(serve_command, tmp_path):
    """Both transports call in a loop while the server is stopped and a new one starts on the same ports: the
    calls sent meanwhile meet refused connections for as long as the new process takes to load (a few seconds,
    inside the default 60 s deadline their retries run in). The loops pause across the SIGTERM itself, whose
    in-flight requests the test above covers."""
    first = ServerProcess(**serve_command).start()
    go = tmp_path / "go"  # the second process imports TensorFlow meanwhile, then waits for it
    second = ServerProcess(serve_command["args"], grpc_port=first.grpc_port, rest_port=first.rest_port,
                           env={**serve_command["env"], GO_FILE: str(go)}).start()
    image = np.full((32, 32, 3), 128, np.uint8)
    running, stop = threading.Event(), threading.Event()
    running.set()
    idle = {"grpc": threading.Event(), "rest": threading.Event()}
    outcomes: dict[str, list] = {transport: [] for transport in idle}

    def loop(transport: str) -> None:
        with Detector(first.url(transport)) as client:
            while not stop.is_set():
                if not running.is_set():
                    idle[transport].set()
                    running.wait()
                    idle[transport].clear()
                started = time.monotonic()
                try:
                    client.detect(image)
                    outcomes[transport].append((started, time.monotonic(), None))
                except DetserveClientError as error:
                    outcomes[transport].append((started, time.monotonic(), error))

    def served_since(moment: float) -> bool:
        return all(any(end > moment and error is None for _, end, error in calls) for calls in outcomes.values())

    clients = [threading.Thread(target=loop, args=(transport,)) for transport in idle]
    try:
        first.wait_ready()
        for thread in clients:
            thread.start()
        _until(lambda: served_since(0), "no call answered before the restart")
        _until((tmp_path / "go.waiting").exists, "the new server did not import TensorFlow", timeout=120)
        running.clear()
        _until(lambda: all(event.is_set() for event in idle.values()), "the client loops did not pause")
        assert first.terminate(HANG_GUARD_S) == 0
        down = time.monotonic()
        running.set()
        go.touch()
        second.wait_ready()
        back = time.monotonic()
        _until(lambda: served_since(back), "no call answered after the restart")
    finally:
        stop.set()
        running.set()
        for thread in clients:
            thread.join(HANG_GUARD_S * 3)
        second.terminate()
        first.terminate()
    failed = {transport: [str(error) for *_, error in calls if error] for transport, calls in outcomes.items()}
    assert failed == {"grpc": [], "rest": []}, f"{back - down:.1f} s without a server:\n{second.log()[-1500:]}"
    rode_through = [any(start < back < end for start, end, _ in calls) for calls in outcomes.values()]
    assert all(rode_through), f"no call was waiting while the server was down ({back - down:.1f} s)"
