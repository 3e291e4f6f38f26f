"""The embedded server's parts, in-process and without TensorFlow models: configs, version policy, tensors,
REST JSON, metrics exposition, the batch scheduler and the version manager (with a fake loader)."""

from __future__ import annotations

import base64
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.framework import tensor_pb2, types_pb2

from detserve.serving import config as cfg
from detserve.serving import rest_json, tensors
from detserve.serving.batching import BatchScheduler, shape_key
from detserve.serving.config import BatchingOptions
from detserve.serving.errors import HTTP_STATUS, Code, ServingError, from_exception, invalid_argument
from detserve.serving.manager import ModelManager, State
from detserve.serving.metrics import Counter, Histogram, ServingMetrics, exponential_buckets
from detserve.serving.servable import TensorSpec
from detserve.serving.versions import VersionPolicy, fingerprint, scan_versions

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"

# ------------------------------------------------------------------------------------------------------------
# Configs: the production files, parsed (never restated), and the container-path mapping.


def test_production_model_configs_parse_and_map_onto_a_local_repository(tmp_path):
    config = cfg.load_model_server_config(SERVING / "models.config")
    (model,) = config.model_config_list.config
    assert model.base_path.startswith(cfg.CONTAINER_ROOT + "/")
    policy = VersionPolicy.from_model_config(model)
    assert policy.kind == "latest" and policy.num_versions >= 1

    local = cfg.map_base_paths(config, tmp_path / "models")
    relative = Path(model.base_path).relative_to(cfg.CONTAINER_ROOT)
    assert local.model_config_list.config[0].base_path == str(tmp_path / "models" / relative)
    assert model.base_path.startswith("/models"), "the original config is left untouched"

    # Kubernetes: the release pinned under `stable`; the canary adds the candidate as a model over the same path.
    (release,) = cfg.load_model_server_config(SERVING / "models.release.config").model_config_list.config
    assert VersionPolicy.from_model_config(release).kind == "specific"
    assert set(release.version_labels) == {"stable"}
    stable, candidate = cfg.load_model_server_config(SERVING / "models.canary.config").model_config_list.config
    assert stable == release
    assert candidate.name == "detector-canary" and candidate.base_path == release.base_path
    assert VersionPolicy.from_model_config(candidate).kind == "specific"


def test_base_path_mapping_rules(tmp_path):
    repo = tmp_path / "repo"
    assert cfg.map_base_path("/models/detector", repo) == str(repo / "detector")
    assert cfg.map_base_path("/models", repo) == str(repo)
    assert cfg.map_base_path("/srv/other/detector", repo) == "/srv/other/detector"
    assert cfg.map_base_path("detector", repo) == str(repo / "detector")
    assert cfg.map_base_path("/mnt/m/detector", repo, container_root="/mnt/m") == str(repo / "detector")
    config = cfg.single_model_config("detector", "/models/detector")
    mapped = cfg.map_base_paths(config, repo, {"detector": str(tmp_path / "elsewhere")})
    assert mapped.model_config_list.config[0].base_path == str(tmp_path / "elsewhere")
    with pytest.raises(cfg.ConfigError, match="nope"):
        cfg.map_base_paths(config, repo, {"nope": "x"})
    assert cfg.parse_base_path_overrides(["a=b/c"]) == {"a": "b/c"}
    with pytest.raises(cfg.ConfigError):
        cfg.parse_base_path_overrides(["just-a-path"])


@pytest.mark.parametrize("name", ["batching.config", "batching-gpu.config"])
def test_batching_configs_become_scheduler_options(name):
    params = cfg.load_batching_parameters(SERVING / name)
    options = BatchingOptions.from_proto(params)
    assert options.max_batch_size == params.max_batch_size.value
    assert options.batch_timeout_s == pytest.approx(params.batch_timeout_micros.value / 1e6)
    assert options.num_batch_threads == params.num_batch_threads.value
    assert options.max_enqueued_batches == params.max_enqueued_batches.value
    assert options.allowed_batch_sizes == tuple(params.allowed_batch_sizes)
    assert params.pad_variable_length_inputs is False
    assert options.padded_size(9) == {"batching.config": 12, "batching-gpu.config": 16}[name]
    assert options.padded_size(options.max_batch_size) == options.max_batch_size


def test_unset_batching_fields_take_tf_serving_defaults(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\n")
    options = BatchingOptions.from_proto(cfg.load_batching_parameters(path))
    assert (options.batch_timeout_s, options.max_enqueued_batches, options.thread_pool_name) == (0.0, 10, "batch_threads")
    path.write_text("max_batch_sise { value: 8 }\n")
    with pytest.raises(cfg.ConfigError, match="max_batch_sise"):
        cfg.load_batching_parameters(path)


def test_monitoring_config_and_packaged_copies():
    monitoring = cfg.load_monitoring_config(SERVING / "monitoring.config")
    assert cfg.prometheus_path(monitoring) == "/monitoring/prometheus/metrics"
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert cfg.packaged_config(name).read_text() == (SERVING / name).read_text()


def test_model_configs_are_checked(tmp_path):
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "a" base_path: "/m/a" model_platform: "pytorch" } }')
    with pytest.raises(cfg.ConfigError, match="pytorch"):
        cfg.load_model_server_config(path)
    path.write_text('model_config_list { config { name: "a" base_path: "/m/a" } config { name: "a" base_path: "/b" } }')
    with pytest.raises(cfg.ConfigError, match="unique"):
        cfg.load_model_server_config(path)


# ------------------------------------------------------------------------------------------------------------
# Versions


def test_scan_finds_numeric_version_directories_only(tmp_path):
    for name in ("1", "007", "12", "abc", ".tmp-export-123"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file, not a version")
    assert sorted(scan_versions(tmp_path)) == [1, 7, 12]
    with pytest.raises(OSError, match="does not exist"):
        scan_versions(tmp_path / "missing")


def test_version_policies():
    present = {1, 2, 5, 9}
    assert VersionPolicy("latest", num_versions=1).aspired(present) == {9}
    assert VersionPolicy("latest", num_versions=2).aspired(present) == {5, 9}
    assert VersionPolicy("all").aspired(present) == present
    assert VersionPolicy("specific", versions=(2, 3)).aspired(present) == {2}


def test_fingerprint_changes_with_the_files(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"x")
    before = fingerprint(tmp_path)
    time.sleep(0.01)
    (tmp_path / "saved_model.pb").write_bytes(b"xy")
    assert fingerprint(tmp_path) != before


# ------------------------------------------------------------------------------------------------------------
# Tensors


def test_tensor_content_requests_are_viewed_without_copy_per_element():
    import tensorflow as tf

    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    array = tensors.to_ndarray(tf.make_tensor_proto(images), "images")
    np.testing.assert_array_equal(array, images)
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.5, 2.5])
    typed.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tensors.to_ndarray(typed), [1.5, 2.5])
    strings = tensors.to_ndarray(tf.make_tensor_proto([b"a", b"bc"]))
    assert strings.tolist() == [b"a", b"bc"]


def test_malformed_tensor_protos_are_invalid_arguments():
    proto = tensors.make_tensor_proto(np.zeros((2, 3), np.float32))
    proto.tensor_shape.dim[0].size = 5
    with pytest.raises(ServingError, match="tensor_content has 24 bytes") as error:
        tensors.to_ndarray(proto, "x")
    assert error.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ServingError, match="DT_INVALID"):
        tensors.to_ndarray(tensor_pb2.TensorProto(), "x")


def test_responses_use_typed_fields_like_tf_serving():
    import tensorflow as tf

    scores = np.array([[0.5, 0.25]], np.float32)
    proto = tensors.from_ndarray(scores)
    assert list(proto.float_val) == [0.5, 0.25] and not proto.tensor_content
    names = tensors.from_ndarray(np.array([[b"mask", b"no_mask"]], dtype=object))
    assert list(names.string_val) == [b"mask", b"no_mask"]
    counts = tensors.from_ndarray(np.array([3], np.uint8))
    assert list(counts.int_val) == [3] and counts.dtype == types_pb2.DT_UINT8
    np.testing.assert_array_equal(tf.make_ndarray(proto), scores)


# ------------------------------------------------------------------------------------------------------------
# REST JSON: the request/response shapes of TF Serving's REST API guide.

SPEC_X = {"x": TensorSpec("x", types_pb2.DT_FLOAT, (None,))}
THREE = {
    "tag": TensorSpec("tag", types_pb2.DT_STRING, (None,)),
    "signal": TensorSpec("signal", types_pb2.DT_FLOAT, (None, 5)),
    "sensor": TensorSpec("sensor", types_pb2.DT_FLOAT, (None, 2, 2)),
}


def test_row_format_with_one_input_takes_bare_values():
    parsed = rest_json.parse_predict({"instances": ["foo", "bar", "baz"]},
                                     {"s": TensorSpec("s", types_pb2.DT_STRING, (None,))})
    assert parsed.format == rest_json.ROW and parsed.inputs["s"].tolist() == [b"foo", b"bar", b"baz"]
    parsed = rest_json.parse_predict({"instances": [[[1, 2]], [[3, 4]]]},
                                     {"m": TensorSpec("m", types_pb2.DT_INT32, (None, 1, 2))})
    assert parsed.inputs["m"].shape == (2, 1, 2) and parsed.inputs["m"].dtype == np.int32


def test_row_and_columnar_forms_of_the_guide_example_are_the_same_tensors():
    rows = rest_json.parse_predict({"instances": [
        {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
    ]}, THREE)
    columns = rest_json.parse_predict({"inputs": {
        "tag": ["foo", "bar"],
        "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
        "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
    }}, THREE)
    assert (rows.format, columns.format) == (rest_json.ROW, rest_json.COLUMNAR)
    for name in THREE:
        np.testing.assert_array_equal(rows.inputs[name], columns.inputs[name])
    assert rows.inputs["signal"].dtype == np.float32


def test_b64_values_are_binary_strings():
    data = bytes(range(256))
    parsed = rest_json.parse_predict({"signature_name": "serving_bytes",
                                      "instances": [{"b64": base64.b64encode(data).decode()}]},
                                     {"encoded_images": TensorSpec("encoded_images", types_pb2.DT_STRING, (None,))})
    assert parsed.signature_name == "serving_bytes" and parsed.inputs["encoded_images"].tolist() == [data]


@pytest.mark.parametrize(("body", "message"), [
    ({"instances": [1.0], "inputs": [1.0]}, "Not both"),
    ({"signature_name": "x"}, "Missing 'inputs' or 'instances' key"),
    ({"instances": []}, "empty batch"),
    ({"instances": 3.0}, "must be a JSON list"),
    ({"signature_name": 100, "instances": [1.0]}, "'signature_name' key must be a string value."),
    ({"instances": [[1.0, 2.0], [3.0]]}, "ragged"),
    ({"instances": ["a"]}, "expects float numbers, not strings"),
    ({"instances": [{"b64": "aGk="}]}, "b64"),
    ({"instances": [1.0, None]}, "not all numbers"),
])
def test_malformed_request_bodies(body, message):
    with pytest.raises(ServingError, match=message) as error:
        rest_json.parse_predict(body, SPEC_X)
    assert error.value.code == Code.INVALID_ARGUMENT


def test_invalid_base64_is_an_invalid_argument():
    spec = {"s": TensorSpec("s", types_pb2.DT_STRING, (None,))}
    with pytest.raises(ServingError, match="invalid base64"):
        rest_json.parse_predict({"instances": [{"b64": "!!!"}]}, spec)


def test_json_numbers_must_fit_the_input_dtype():
    spec = {"images": TensorSpec("images", types_pb2.DT_UINT8, (None, None, None, 3))}
    with pytest.raises(ServingError, match="out of range for uint8"):
        rest_json.parse_predict({"instances": [[[[0, 0, 300]]]]}, spec)
    with pytest.raises(ServingError, match="decimal numbers are not of expected type: uint8"):
        rest_json.parse_predict({"instances": [[[[0, 0, 0.5]]]]}, spec)
    ok = rest_json.parse_predict({"instances": [[[[0, 128, 255]]]]}, spec)
    assert ok.inputs["images"].dtype == np.uint8


def test_responses_follow_the_request_format():
    outputs = {"y": np.array([3.5, 4.0, 5.5], np.float32)}
    assert rest_json.make_response(outputs, rest_json.ROW) == {"predictions": [3.5, 4.0, 5.5]}
    assert rest_json.make_response(outputs, rest_json.COLUMNAR) == {"outputs": [3.5, 4.0, 5.5]}
    two = {"scores": np.array([[0.5], [0.25]], np.float32), "names": np.array([b"a", b"b"], dtype=object),
           "raw_bytes": np.array([b"\xff", b"\x00"], dtype=object)}
    rows = rest_json.make_response(two, rest_json.ROW)["predictions"]
    assert rows[0] == {"scores": [0.5], "names": "a", "raw_bytes": {"b64": base64.b64encode(b"\xff").decode()}}
    columns = rest_json.make_response(two, rest_json.COLUMNAR)["outputs"]
    assert columns["names"] == ["a", "b"]
    nan = rest_json.dumps(rest_json.make_response({"y": np.array([math.nan], np.float32)}, rest_json.ROW))
    assert nan == b'{"predictions":[NaN]}'


# ------------------------------------------------------------------------------------------------------------
# Errors and metrics


def test_tf_serving_http_status_mapping():
    assert HTTP_STATUS[Code.NOT_FOUND] == 404
    assert HTTP_STATUS[Code.INVALID_ARGUMENT] == 400
    assert HTTP_STATUS[Code.FAILED_PRECONDITION] == 400
    assert HTTP_STATUS[Code.UNAVAILABLE] == 503
    assert HTTP_STATUS[Code.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[Code.UNIMPLEMENTED] == 501
    assert HTTP_STATUS[Code.DEADLINE_EXCEEDED] == 504


def test_tensorflow_errors_keep_their_code():
    import tensorflow as tf

    error = from_exception(tf.errors.InvalidArgumentError(None, None, "Unknown image file format"))
    assert error.code == Code.INVALID_ARGUMENT and "Unknown image file format" in error.message
    assert from_exception(RuntimeError("boom")).code == Code.INTERNAL


def test_exposition_matches_tf_serving_format():
    counter = Counter("/test/path/total", "A counter.", "name")
    counter.inc("abc", by=2)
    assert counter.lines() == ["# TYPE :test:path:total counter", ':test:path:total{name="abc"} 2']
    histogram = Histogram("/test/path/histogram", "A histogram.", exponential_buckets(1, 2, 10), "status")
    for value in (2, 20, 200):
        histogram.observe("good", value)
    lines = histogram.lines()
    # TensorFlow's buckets: a value equal to a limit counts in the next bucket (2 -> le="4").
    assert lines[:4] == ["# TYPE :test:path:histogram histogram", ':test:path:histogram_bucket{status="good",le="1"} 0',
                         ':test:path:histogram_bucket{status="good",le="2"} 0',
                         ':test:path:histogram_bucket{status="good",le="4"} 1']
    assert lines[-3:] == [':test:path:histogram_bucket{status="good",le="+Inf"} 3',
                          ':test:path:histogram_sum{status="good"} 222', ':test:path:histogram_count{status="good"} 3']


def test_serving_metrics_page_parses_as_prometheus_text():
    metrics = ServingMetrics()
    metrics.request_count.inc("detector", "OK")
    metrics.request_latency.observe("detector", "Predict", "GRPC", 1234.0)
    metrics.processed_batch_size.observe(8)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    assert ":tensorflow:serving:request_count" in families
    latency = families[":tensorflow:serving:request_latency"]
    labels = {s.labels.get("entrypoint") for s in latency.samples}
    assert labels == {"GRPC"} and latency.type == "histogram"
    assert ":tensorflow:serving:batching_session:queuing_latency" in families


# ------------------------------------------------------------------------------------------------------------
# Batch scheduler (fake model functions)


class Recorder:
    """A run function that doubles ``x`` and records the batches it saw; ``gate`` can hold it."""

    def __init__(self, fail_rows: set[int] | None = None):
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_rows = fail_rows or set()

    def __call__(self, inputs):
        self.started.set()
        self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x.copy())
        if self.fail_rows & set(x[:, 0].astype(int).tolist()):
            raise invalid_argument("bad row")
        return {"y": x * 2}


def options(**kwargs) -> BatchingOptions:
    defaults = dict(max_batch_size=4, batch_timeout_s=0.2, max_enqueued_batches=4, num_batch_threads=1)
    defaults.update(kwargs)
    return BatchingOptions(**defaults)


def rows(*values) -> dict:
    return {"x": np.array([[v] for v in values], np.float32)}


def test_concurrent_requests_merge_into_one_padded_batch():
    run = Recorder()
    scheduler = BatchScheduler(options(allowed_batch_sizes=(2, 4)))
    try:
        futures = [scheduler.submit("q", run, rows(v), 1) for v in (1, 2, 3)]
        results = [f.result(5)["y"] for f in futures]
    finally:
        scheduler.stop()
    assert [r.tolist() for r in results] == [[[2.0]], [[4.0]], [[6.0]]]
    (batch,) = run.batches
    assert batch[:, 0].tolist() == [1, 2, 3, 3], "padded to the next allowed size with the last task's first row"
    padding = scheduler.metrics.padding_size.snapshot("4")
    assert sum(padding[0]) == 1 and padding[1] == 1


def test_a_task_larger_than_max_batch_size_is_rejected():
    scheduler = BatchScheduler(options())
    try:
        with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch size 4") as error:
            scheduler.submit("q", Recorder(), rows(*range(5)), 5)
        assert error.value.code == Code.INVALID_ARGUMENT
    finally:
        scheduler.stop()


def test_a_full_queue_rejects_with_unavailable():
    run = Recorder()
    run.gate.clear()
    scheduler = BatchScheduler(options(max_batch_size=2, max_enqueued_batches=1, batch_timeout_s=0.0))
    try:
        busy = scheduler.submit("q", run, rows(1, 2), 2)
        assert run.started.wait(5)  # the only batch thread is now held
        queued = scheduler.submit("q", run, rows(3, 4), 2)  # one waiting batch: the queue's limit
        with pytest.raises(ServingError, match="queue to which this task was submitted is full") as error:
            scheduler.submit("q", run, rows(5), 1)
        assert error.value.code == Code.UNAVAILABLE and error.value.http_status == 503
        other = scheduler.submit("other-queue", run, rows(6), 1)  # queues are independent
        run.gate.set()
        assert [f.result(5)["y"][:, 0].tolist() for f in (busy, queued, other)] == [[2, 4], [6, 8], [12]]
    finally:
        run.gate.set()
        scheduler.stop()


@pytest.mark.parametrize("line, field", [("enable_large_batch_splitting { value: true }", "enable_large_batch_splitting"),
                                         ("pad_variable_length_inputs: true", "pad_variable_length_inputs")])
def test_batching_features_the_server_does_not_implement_are_refused_by_name(tmp_path, line, field):
    path = tmp_path / "batching.config"
    path.write_text(f"max_batch_size {{ value: 8 }}\n{line}\n")
    with pytest.raises(cfg.ConfigError, match=f"{path}: {field}.*not supported by detserve serve"):
        cfg.load_batching_parameters(path)


def test_a_failed_batch_fails_every_request_in_it_as_tf_serving_does():
    run = Recorder(fail_rows={2})
    scheduler = BatchScheduler(options())
    try:
        futures = [scheduler.submit("q", run, rows(v), 1) for v in (1, 2, 3)]
        for future in futures:
            with pytest.raises(ServingError, match="bad row") as error:
                future.result(5)
            assert error.value.code == Code.INVALID_ARGUMENT
    finally:
        scheduler.stop()
    assert len(run.batches) == 1, "the batch ran once: its requests are not re-run one by one"


def test_batch_timeout_bounds_the_wait_of_a_lone_request():
    scheduler = BatchScheduler(options(batch_timeout_s=0.05))
    try:
        started = time.monotonic()
        scheduler.submit("q", Recorder(), rows(1), 1).result(5)
        assert 0.04 <= time.monotonic() - started < 1.0
    finally:
        scheduler.stop()


def test_shapes_that_differ_beyond_the_batch_dimension_use_separate_queues():
    small, large = {"x": np.zeros((1, 4, 4, 3))}, {"x": np.zeros((1, 8, 8, 3))}
    assert shape_key(small) != shape_key(large)
    assert shape_key(small) == shape_key({"x": np.ones((2, 4, 4, 3))})


def test_stop_runs_what_is_queued_and_refuses_new_work():
    run = Recorder()
    scheduler = BatchScheduler(options(batch_timeout_s=30.0))
    future = scheduler.submit("q", run, rows(1), 1)
    scheduler.stop(timeout=5)
    assert future.result(0)["y"].tolist() == [[2.0]]
    with pytest.raises(ServingError) as error:
        scheduler.submit("q", run, rows(1), 1)
    assert error.value.code == Code.UNAVAILABLE


# ------------------------------------------------------------------------------------------------------------
# Version manager (fake loader: no TensorFlow)


class FakeServable:
    def __init__(self, name, version, path):
        if (Path(path) / "BROKEN").exists():
            raise ValueError(f"cannot load {path}")
        self.name, self.version, self.path = name, version, Path(path)
        self.unloaded = False

    def unload(self):
        self.unloaded = True


def manager_for(tmp_path, versions, policy="latest { num_versions: 1 }", labels="", **kwargs) -> ModelManager:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    for version in versions:
        (tmp_path / "m" / str(version)).mkdir(parents=True, exist_ok=True)
    config = text_format.Parse(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" model_platform: "tensorflow" '
        f"model_version_policy {{ {policy} }} {labels} }} }}", model_server_config_pb2.ModelServerConfig())
    return ModelManager(config, poll_seconds=0, loader=FakeServable, **kwargs)


def states(manager) -> dict[int, State]:
    return {s.version: s.state for s in manager.status("m")}


def test_a_new_version_replaces_the_old_only_when_available_and_in_flight_requests_finish(tmp_path):
    manager = manager_for(tmp_path, [1])
    manager.start()
    handle = manager.acquire("m")
    assert handle.version == 1
    (tmp_path / "m" / "2").mkdir()
    manager.sync()
    assert manager.acquire("m").version == 2
    assert states(manager)[1] == State.UNLOADING and not handle.servable.unloaded
    handle.release()
    deadline = time.monotonic() + 5
    while states(manager)[1] != State.END and time.monotonic() < deadline:
        time.sleep(0.01)
    assert states(manager) == {2: State.AVAILABLE, 1: State.END} and handle.servable.unloaded
    manager.stop()


def test_a_broken_version_is_reported_and_never_replaces_a_working_one(tmp_path):
    manager = manager_for(tmp_path, [1])
    manager.start()
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "BROKEN").write_text("")
    manager.sync()
    (status,) = manager.status("m", version=2)
    assert status.state == State.END and "cannot load" in status.error.message
    assert manager.acquire("m").version == 1 and states(manager)[1] == State.AVAILABLE
    manager.sync()  # unchanged files: not retried
    (tmp_path / "m" / "2" / "BROKEN").unlink()
    manager.sync()  # fixed: retried, loaded, and now it replaces version 1
    assert manager.acquire("m").version == 2
    manager.stop()


def test_request_errors_name_the_problem(tmp_path):
    manager = manager_for(tmp_path, [1, 2], policy="all {}", labels='version_labels { key: "stable" value: 1 }',
                          allow_version_labels_for_unavailable_models=True)
    manager.start()
    assert manager.acquire("m", label="stable").version == 1
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(nope\)") as error:
        manager.acquire("nope")
    assert error.value.code == Code.NOT_FOUND
    with pytest.raises(ServingError, match=r"Specific\(m, 7\)"):
        manager.acquire("m", version=7)
    with pytest.raises(ServingError, match="Unrecognized servable version label: canary") as error:
        manager.acquire("m", label="canary")
    assert error.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ServingError, match="Could not find version 7 of model m"):
        manager.status("m", version=7)
    manager.stop()


def test_labels_must_point_at_available_versions_unless_allowed(tmp_path):
    manager = manager_for(tmp_path, [1], labels='version_labels { key: "stable" value: 1 }')
    with pytest.raises(ServingError, match="not currently available for inference") as error:
        manager.start()
    assert error.value.code == Code.FAILED_PRECONDITION


def test_a_broken_version_does_not_push_a_working_one_out_of_latest_n(tmp_path):
    manager = manager_for(tmp_path, [1, 2], policy="latest { num_versions: 2 }")
    manager.start()
    (tmp_path / "m" / "3").mkdir()
    (tmp_path / "m" / "3" / "BROKEN").write_text("")
    manager.sync()
    assert states(manager) == {3: State.END, 2: State.AVAILABLE, 1: State.AVAILABLE}
    manager.stop()


def test_work_of_a_cancelled_request_keeps_its_version_loaded(tmp_path):
    import concurrent.futures

    manager = manager_for(tmp_path, [1])
    manager.start()
    handle = manager.acquire("m")
    queued = concurrent.futures.Future()
    handle.hold_until(queued)
    handle.release()  # the client went away, its batch is still queued
    (tmp_path / "m" / "2").mkdir()
    manager.sync()
    time.sleep(0.1)
    assert states(manager)[1] == State.UNLOADING and not handle.servable.unloaded
    queued.set_result(None)
    deadline = time.monotonic() + 5
    while states(manager)[1] != State.END and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.servable.unloaded
    manager.stop()


def test_a_changed_config_file_is_read_again_and_mapped(tmp_path):
    from detserve.serving.options import ServerOptions
    from detserve.serving.server import EmbeddedServer

    path = tmp_path / "models.config"
    path.write_text((SERVING / "models.config").read_text())
    server = EmbeddedServer(ServerOptions(), cfg.ServingConfig(
        model_config=None, config_file=path, map_config=lambda c: cfg.map_base_paths(c, tmp_path / "repo")))
    server._config_stamp = path.stat().st_mtime_ns
    assert server._read_config_file() is None  # unchanged
    time.sleep(0.01)
    path.write_text((SERVING / "models.canary.config").read_text())
    config = server._read_config_file()
    assert [m.base_path for m in config.model_config_list.config] == [str(tmp_path / "repo" / "detector")] * 2
    assert set(config.model_config_list.config[0].version_labels) == {"stable"}


def test_load_failures_keep_tensorflow_s_code_and_anything_else_is_unknown():
    import grpc
    import tensorflow as tf

    from detserve.serving.manager import _load_failure

    assert _load_failure(tf.errors.InternalError(None, None, "bad graph")).code == grpc.StatusCode.INTERNAL
    assert _load_failure(tf.errors.NotFoundError(None, None, "no such file")).code == grpc.StatusCode.NOT_FOUND
    failure = _load_failure(RuntimeError("boom"))
    assert failure.code == grpc.StatusCode.UNKNOWN and failure.message == "RuntimeError: boom"


def test_a_model_sized_image_is_decoded_on_the_event_loop_and_a_large_tensor_is_not():
    """gRPC requests whose numbers come as tensor_content, up to SMALL_CONTENT_BYTES, skip the hop to the request
    pool (PredictCall.small): a 640x640 image is a 130 us copy. Larger ones, and typed fields above
    SMALL_REQUEST_BYTES (converted value by value), are decoded off the loop."""
    from tensorflow_serving.apis import predict_pb2

    from detserve.serving.codec import predict_call

    def call(shape, typed_values: bool = False):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "detector"
        proto = request.inputs["images"]
        if typed_values:
            proto.dtype = types_pb2.DT_UINT8
            for size in shape:
                proto.tensor_shape.dim.add().size = size
            proto.int_val.extend([7] * math.prod(shape))
        else:
            proto.CopyFrom(tensors.make_tensor_proto(np.zeros(shape, np.uint8)))
        return predict_call(request)

    assert call((1, 320, 320, 3)).small and call((1, 640, 640, 3)).small
    assert not call((1, 1024, 1024, 3)).small
    assert call((1, 100, 100, 3), typed_values=True).small  # 30 KB of int_val
    assert not call((1, 320, 320, 3), typed_values=True).small  # the same image as tensor_content is small


def test_the_server_freezes_what_it_imported_before_loading_so_unloaded_versions_are_still_collected(tmp_path):
    """EmbeddedServer.load() gc.freeze()s the objects it starts with (TensorFlow's modules: a full collection no
    longer traverses them, and one follows every unload). A version loaded after that must still be freed when
    it is unloaded: were the freeze after the first load, version 1 would stay in memory for good."""
    import gc
    import weakref

    from serving_harness import cached_model, install_version

    from detserve.serving.options import ServerOptions
    from detserve.serving.server import EmbeddedServer

    install_version(cached_model("tiny", tmp_path / "cache", warmup=None), tmp_path / "repo" / "detector", 1)
    server = EmbeddedServer(ServerOptions(file_system_poll_wait_seconds=0, enable_model_warmup=False),
                            cfg.ServingConfig(model_config=cfg.single_model_config("detector", str(tmp_path / "repo" / "detector"))))
    try:
        server.load()
        assert gc.get_freeze_count() > 0
        first = server.manager.acquire("detector")
        # A FuncGraph sits in reference cycles: only the cyclic collector frees it, and never a frozen one.
        graph = weakref.ref(first.servable.signatures["serving_default"].function.graph)
        first.release()
        del first
        install_version(cached_model("tiny", tmp_path / "cache", warmup=None), tmp_path / "repo" / "detector", 2)
        server.manager.sync()
        def version_1() -> State:
            return {s.version: s.state for s in server.manager.status("detector")}[1]

        deadline = time.monotonic() + 10
        while version_1() != State.END and time.monotonic() < deadline:
            time.sleep(0.01)
        assert version_1() == State.END
        assert graph() is None  # version 1's TensorFlow objects were collected, not frozen
    finally:
        server.manager.stop()
        server.executor.shutdown()
        gc.unfreeze()  # the rest of the test session collects as usual
