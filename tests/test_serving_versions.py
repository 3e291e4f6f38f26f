"""Versions in a running server (production serving/models.config: latest 2 versions of `detector`):
hot loading while requests run, retirement that lets in-flight requests finish, broken versions."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from serving_harness import ServerProcess, cached_model, install_version, write_warmup
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from detserve.serving.tensors import make_tensor_proto

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "serving-models"


@pytest.fixture(scope="module")
def repository(tmp_path_factory, cache):
    repo = tmp_path_factory.mktemp("repository")
    install_version(cached_model("tiny", cache, 1), repo / "detector", 1)
    for version in (2, 3, 4):
        cached_model("tiny", cache, version)  # built before the server starts competing for the CPU
    return repo


@pytest.fixture(scope="module")
def server(repository):
    process = ServerProcess(["--repository", str(repository), "--file-system-poll-wait-seconds", "0.2",
                             "--tensorflow-inter-op-parallelism", "4"])
    with process:
        process.wait_ready()
        yield process


def states(server) -> dict[int, tuple[str, str, str]]:
    reply = requests.get(f"{server.rest_url}/v1/models/detector", timeout=30).json()
    return {int(s["version"]): (s["state"], s["status"]["error_code"], s["status"]["error_message"])
            for s in reply["model_version_status"]}


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def request(signature: str = "serving_default", version: int | None = None, seconds: float = 0.0):
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "detector"
    message.model_spec.signature_name = signature
    if version is not None:
        message.model_spec.version.value = version
    if signature == "slow":
        message.inputs["seconds"].CopyFrom(make_tensor_proto(np.array([seconds], np.float32)))
    else:
        message.inputs["images"].CopyFrom(make_tensor_proto(np.full((1, 8, 8, 3), 9, np.uint8)))
    return message


class Traffic:
    """Client threads sending unversioned requests (gRPC and REST) until stopped; records versions and failures."""

    def __init__(self, server, grpc_threads: int = 2, rest_threads: int = 1):
        self.server = server
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: dict[int, list[int]] = {}
        self.count = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._grpc, args=(i,)) for i in range(grpc_threads)]
        self.threads += [threading.Thread(target=self._rest, args=(grpc_threads + i,)) for i in range(rest_threads)]

    def _record(self, worker: int, version: int | None, failure: str | None) -> None:
        with self._lock:
            self.count += 1
            if failure:
                self.failures.append(failure)
            else:
                self.versions.setdefault(worker, []).append(version)

    def _grpc(self, worker: int) -> None:
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop.is_set():
                try:
                    response = stub.Predict(request(), timeout=30)
                    self._record(worker, response.model_spec.version.value, None)
                except grpc.RpcError as error:
                    self._record(worker, None, f"gRPC {error.code()}: {error.details()}")
                time.sleep(0.005)

    def _rest(self, worker: int) -> None:
        body = {"instances": np.full((1, 8, 8, 3), 9, np.uint8).tolist()}
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    reply = session.post(f"{self.server.rest_url}/v1/models/detector:predict", json=body, timeout=30)
                    if reply.ok:
                        self._record(worker, int(reply.json()["predictions"][0]["num_detections"]), None)
                    else:
                        self._record(worker, None, f"REST {reply.status_code}: {reply.text}")
                except requests.RequestException as error:
                    self._record(worker, None, f"REST {error}")
                time.sleep(0.005)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_new_versions_load_under_traffic_and_old_ones_retire_after_their_requests(server, repository, cache):
    model_dir = repository / "detector"
    assert states(server) == {1: ("AVAILABLE", "OK", "")}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with Traffic(server) as traffic:
            wait_for(lambda: traffic.count >= 20, what="traffic")
            install_version(cached_model("tiny", cache, 2), model_dir, 2)
            wait_for(lambda: states(server).get(2, ("",))[0] == "AVAILABLE", what="version 2")
            assert states(server)[1][0] == "AVAILABLE", "latest 2: version 1 stays"

            # A long request holds version 1 while version 3 pushes it out of "latest 2".
            slow = stub.Predict.future(request("slow", version=1, seconds=6.0), timeout=60)
            time.sleep(0.5)
            install_version(cached_model("tiny", cache, 3), model_dir, 3)
            wait_for(lambda: states(server).get(3, ("",))[0] == "AVAILABLE", what="version 3")
            assert not slow.done(), "the machine was too slow for this test's timing"
            assert states(server)[1][0] == "UNLOADING"  # out of routing, still held by the slow request
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request(version=1), timeout=30)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            response = slow.result(60)
            assert response.model_spec.version.value == 1 and list(response.outputs["version"].int64_val) == [1]
            wait_for(lambda: states(server)[1] == ("END", "OK", ""), what="version 1 unloaded")
            seen_so_far = traffic.count
            wait_for(lambda: traffic.count >= seen_so_far + 20, timeout=30, what="more traffic")
    assert traffic.failures == []
    assert {v for seen in traffic.versions.values() for v in seen} >= {2, 3}
    for seen in traffic.versions.values():
        assert seen == sorted(seen), "a client never goes back to an older version"
    assert states(server) == {3: ("AVAILABLE", "OK", ""), 2: ("AVAILABLE", "OK", ""), 1: ("END", "OK", "")}


def _write_warmup_naming(version_dir, input_name: str) -> None:
    """A warmup file whose one record names ``input_name`` (the exporter's writer only writes right ones)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from detserve.client.contract import warmup_path

    record = request()
    record.inputs[input_name].CopyFrom(record.inputs["images"])
    del record.inputs["images"]
    path = warmup_path(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=record))
        writer.write(log.SerializeToString())


def test_a_broken_version_is_reported_and_never_replaces_a_working_one(server, repository, cache):
    model_dir = repository / "detector"
    broken = model_dir / ".tmp-broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    broken.rename(model_dir / "4")
    wait_for(lambda: states(server).get(4, ("",))[0] == "END", what="version 4 attempted")
    state, code, message = states(server)[4]
    assert code != "OK" and "SavedModel" in message, message
    # Neither version 3 nor version 2 is pushed out by the broken version 4.
    time.sleep(0.5)
    assert states(server)[3][0] == "AVAILABLE" and states(server)[2][0] == "AVAILABLE"
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert stub.Predict(request(), timeout=30).model_spec.version.value == 3
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request(version=4), timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND

        # A version whose warmup fails is broken too: a record naming an input the signature lacks...
        bad_alias = install_version(cached_model("tiny", cache, 4), model_dir, 5)
        _write_warmup_naming(bad_alias, "pictures")
        wait_for(lambda: states(server).get(5, ("",))[0] == "END", what="version 5 attempted")
        assert "warmup" in states(server)[5][2] and "pictures" in states(server)[5][2]
        # ... or a batch above batching.config's max_batch_size (32).
        bad_batch = install_version(cached_model("tiny", cache, 4), model_dir, 6)
        write_warmup(bad_batch, [33])
        wait_for(lambda: states(server).get(6, ("",))[0] == "END", what="version 6 attempted")
        assert "warmup" in states(server)[6][2] and "Task size 33 is larger" in states(server)[6][2]
        assert stub.Predict(request(), timeout=30).model_spec.version.value == 3

        # Repaired in place (new files), version 4 is retried, loads, and takes its place in "latest 2".
        for version in (5, 6):
            (model_dir / str(version)).rename(model_dir / f".tmp-out-of-the-way-{version}")
        shutil.copytree(cached_model("tiny", cache, 4), model_dir / "4", dirs_exist_ok=True)
        wait_for(lambda: states(server).get(4, ("",))[0] == "AVAILABLE", what="version 4 repaired")
        wait_for(lambda: states(server)[2][0] == "END", what="version 2 retired")
        assert stub.Predict(request(), timeout=30).model_spec.version.value == 4
