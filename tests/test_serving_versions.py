"""Versions in a running server (production serving/models.config: latest 2 versions of `detector`):
hot loading while requests run, retirement that lets in-flight requests finish, broken versions."""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from serving_harness import ServerProcess, cached_model, install_version, write_warmup
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from test_serving_units import manager_for
from test_serving_units import states as manager_states

from detserve.client.contract import ModelSpec
from detserve.serving.errors import Code, ServingError
from detserve.serving.manager import State
from detserve.serving.predict import DataPlane
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


# ------------------------------------------------------------------------------------------------------------
# Broken versions and labels in status, with the version manager alone (a fake loader: no TensorFlow, fast).


def broken(tmp_path, *versions: int) -> None:
    for version in versions:
        (tmp_path / "m" / str(version)).mkdir(parents=True, exist_ok=True)
        (tmp_path / "m" / str(version) / "BROKEN").write_text("")


def attempts(manager, tmp_path, version: int, outcome: str) -> int:
    return manager.metrics.load_attempt_count.value(str(tmp_path / "m" / str(version)), outcome)


def test_start_up_falls_back_to_the_newest_versions_that_load(tmp_path):
    broken(tmp_path, 9, 10)
    manager = manager_for(tmp_path, [3, 4], policy="latest { num_versions: 2 }")  # poll 0: start() is the only pass
    manager.start()
    assert manager_states(manager) == {10: State.END, 9: State.END, 4: State.AVAILABLE, 3: State.AVAILABLE}
    for version in (9, 10):
        (status,) = manager.status("m", version=version)
        assert status.error is not None and f"cannot load {tmp_path / 'm' / str(version)}" in status.error.message
        assert attempts(manager, tmp_path, version, "fail") == 1
    assert manager.acquire("m").version == 4
    manager.sync()  # unchanged broken versions are not tried again, the good ones stay
    assert [attempts(manager, tmp_path, v, "fail") for v in (9, 10)] == [1, 1]
    assert [attempts(manager, tmp_path, v, "success") for v in (3, 4)] == [1, 1]
    assert manager_states(manager)[3] == State.AVAILABLE
    manager.stop()


def test_broken_new_versions_are_all_tried_in_one_pass_and_the_serving_one_stays(tmp_path):
    manager = manager_for(tmp_path, [4])
    manager.start()
    broken(tmp_path, 5, 6)
    manager.sync()
    assert manager_states(manager) == {6: State.END, 5: State.END, 4: State.AVAILABLE}
    assert manager.acquire("m").version == 4
    # The serving version's directory goes away while only broken versions are left: it keeps serving, as with
    # TF Serving's availability-preserving policy (a version is unloaded once an aspired one is ready).
    shutil.rmtree(tmp_path / "m" / "4")
    manager.sync()
    assert manager.acquire("m").version == 4 and manager_states(manager)[4] == State.AVAILABLE
    manager.stop()


def test_specific_versions_never_fall_back(tmp_path):
    broken(tmp_path, 9)
    manager = manager_for(tmp_path, [3, 4], policy="specific { versions: [9] }")
    manager.start()  # the user named version 9: nothing else is loaded, and the server still starts
    assert manager_states(manager) == {9: State.END}
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(m\)"):
        manager.acquire("m")
    manager.stop()


def test_status_ignores_the_label_as_tf_serving_does(tmp_path):
    manager = manager_for(tmp_path, [1, 2], policy="all {}", labels='version_labels { key: "stable" value: 1 }',
                          allow_version_labels_for_unavailable_models=True)
    manager.start()
    every = [(s.version, s.state) for s in manager.status("m")]
    assert every == [(2, State.AVAILABLE), (1, State.AVAILABLE)]
    plane = DataPlane(manager, executor=None)
    for label in ("stable", "no-such-label"):
        assert [(s.version, s.state) for s in plane.status(ModelSpec("m", None, label))] == every
    with pytest.raises(ServingError, match="Unrecognized servable version label: no-such-label") as error:
        manager.acquire("m", label="no-such-label")  # Predict and metadata: ServerCore::GetModelVersionForLabel
    assert error.value.code == Code.INVALID_ARGUMENT
    manager.stop()


def test_rest_status_and_metrics_show_broken_versions_and_ignore_labels(tmp_path):
    import asyncio
    import concurrent.futures

    from aiohttp.test_utils import TestClient, TestServer

    from detserve.serving.predict import DataPlane
    from detserve.serving.rest import RestApi

    broken(tmp_path, 9, 10)
    manager = manager_for(tmp_path, [3, 4], policy="latest { num_versions: 2 }")
    manager.start()
    executor = concurrent.futures.ThreadPoolExecutor(1)
    api = RestApi(DataPlane(manager, executor), manager.metrics, "/metrics", None)

    async def fetch():
        async with TestClient(TestServer(api.app(1 << 20))) as client:
            replies = {}
            for path in ("/v1/models/m", "/v1/models/m/labels/x", "/metrics"):
                reply = await client.get(path)
                replies[path] = (reply.status, await reply.text())
            return replies

    replies = asyncio.run(fetch())
    executor.shutdown()
    manager.stop()
    status, text = replies["/v1/models/m"]
    assert status == 200
    versions = {int(s["version"]): s for s in json.loads(text)["model_version_status"]}
    assert [versions[v]["state"] for v in (10, 9, 4, 3)] == ["END", "END", "AVAILABLE", "AVAILABLE"]
    assert versions[10]["status"]["error_code"] == "UNKNOWN"
    assert "cannot load" in versions[10]["status"]["error_message"]
    assert versions[4]["status"] == {"error_code": "OK", "error_message": ""}
    assert replies["/v1/models/m/labels/x"] == replies["/v1/models/m"]
    status, page = replies["/metrics"]
    for version, outcome in ((9, "fail"), (10, "fail"), (3, "success"), (4, "success")):
        line = f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{tmp_path / "m" / str(version)}",' \
               f'status="{outcome}"}} 1'
        assert line in page.splitlines(), page


# ------------------------------------------------------------------------------------------------------------
# Warmup next to live traffic (in-process, a fake servable whose one signature echoes its input).


def warmup_servable(batch_sizes, seen: list[int]):
    from types import SimpleNamespace

    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    from detserve.client.contract import PREDICT_METHOD
    from detserve.serving.servable import Signature, TensorSpec

    def echo(x):
        seen.append(int(x.shape[0]))
        return {"y": x}

    spec = {"x": TensorSpec("x", types_pb2.DT_FLOAT, (None, 2))}
    signature = Signature("serving_default", PREDICT_METHOD, spec, {"y": TensorSpec("y", types_pb2.DT_FLOAT, (None, 2))},
                          echo)
    records = []
    for size in batch_sizes:
        record = predict_pb2.PredictRequest()
        record.model_spec.name = "m"
        record.inputs["x"].CopyFrom(make_tensor_proto(np.zeros((size, 2), np.float32)))
        records.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=record)))
    return SimpleNamespace(name="m", version=2, signatures={"serving_default": signature},
                           warmup_records=lambda: records)


def test_warmup_does_not_queue_behind_live_batches_and_keeps_their_checks():
    import concurrent.futures

    from detserve.serving.batching import BatchScheduler
    from detserve.serving.config import BatchingOptions
    from detserve.serving.predict import DataPlane
    from detserve.serving.warmup import replay_warmup

    options = BatchingOptions(max_batch_size=8, batch_timeout_s=0.0, max_enqueued_batches=4, num_batch_threads=1,
                              allowed_batch_sizes=(2, 4, 8))
    scheduler = BatchScheduler(options)
    executor = concurrent.futures.ThreadPoolExecutor(1)
    busy = threading.Event()
    release = threading.Event()

    def live(inputs):  # a live batch that holds the only batch thread (and the request pool's thread)
        busy.set()
        release.wait(30)
        return inputs

    live_batch = scheduler.submit("live", live, {"x": np.zeros((1, 2), np.float32)}, 1)
    live_call = executor.submit(live, {})
    plane = DataPlane(None, executor, scheduler)
    try:
        assert busy.wait(10)
        seen: list[int] = []
        warming = threading.Thread(target=replay_warmup, args=(plane, warmup_servable([1, 3, 8], seen)))
        warming.start()
        warming.join(10)
        assert not warming.is_alive(), "warmup waited for the live batch thread"
        assert seen == [2, 4, 8], "records are padded to allowed_batch_sizes, as live batches are"
        with pytest.raises(ServingError, match="warmup record 1: Task size 9 is larger than maximum input batch size 8"):
            replay_warmup(plane, warmup_servable([1, 9], []))
    finally:
        release.set()
        live_batch.result(10)
        live_call.result(10)
        scheduler.stop(10)
        executor.shutdown()
