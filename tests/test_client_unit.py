"""detserve-client pieces without a server: resizing, image inputs, tensors, addresses, retries, errors,
box mapping, annotation."""

from __future__ import annotations

import asyncio
import io
import random
import time
from functools import partial
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detserve.client import (
    AsyncDetector,
    Box,
    DeadlineExceeded,
    Detection,
    Detector,
    DetserveClientError,
    InvalidInput,
    ModelNotFound,
    RetryPolicy,
    ServerUnavailable,
)
from detserve.client import detector as detector_module
from detserve.client.address import parse_server
from detserve.client.core import DetectorCore
from detserve.client.detections import detections_from
from detserve.client.draw import annotate
from detserve.client.drivers import AsyncDriver, BlockingDriver
from detserve.client.errors import from_grpc_error, from_http_error
from detserve.client.images import encode_image, load_image, resize_bilinear
from detserve.client.metadata import Signature, TensorSpec
from detserve.client.protos import get_model_metadata_pb2, predict_pb2, types_pb2
from detserve.client.retry import NO_RETRY, retrying
from detserve.client.steps import Offload, Sleep
from detserve.client.tensors import json_to_ndarray, make_ndarray, make_tensor_proto


def _core(**overrides) -> DetectorCore:
    args = dict(server="grpc://localhost:8500", model="detector", version=None, label=None, encoding="auto",
                signature=None, score_threshold=0.0, max_detections=None, timeout=1.0, retry=None, headers=None,
                ca_cert=None, client_cert=None, client_key=None, server_name=None, max_message_bytes=1 << 26,
                input_size=None, resize_method="bilinear_legacy", jpeg_quality=95, max_batch_size=32)
    args.update(overrides)
    return DetectorCore(**args)


# ---------------------------------------------------------------------------------------------------------
# Resizing: TensorFlow's arithmetic, without TensorFlow


@pytest.mark.parametrize(("size", "out"), [((778, 1563), (320, 320)), ((1080, 1920), (320, 320)), ((100, 50), (320, 320)),
                                           ((320, 320), (300, 200)), ((7, 9), (3, 4)), ((1, 1), (5, 5))])
def test_resize_equals_tensorflow_bit_for_bit(size, out):
    image = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    legacy = tf.compat.v1.image.resize_bilinear(image[None], out, align_corners=False, half_pixel_centers=False)
    v2 = tf.image.resize(image[None].astype(np.float32), out, method="bilinear", antialias=False)
    assert np.array_equal(resize_bilinear(image, out, "bilinear_legacy", dtype=None), legacy.numpy()[0])
    assert np.array_equal(resize_bilinear(image, out, "bilinear", dtype=None), v2.numpy()[0])
    # uint8 output: the float result rounded to the nearest grey level.
    rounded = resize_bilinear(image, out, "bilinear_legacy")
    assert rounded.dtype == np.uint8 and np.abs(rounded - legacy.numpy()[0]).max() <= 0.5


def test_tfod2_fixed_shape_resizer_is_the_legacy_filter():
    """TFOD2's preprocessor.resize_image (tf.compat.v1 resize_images, align_corners=False) is what the
    client's default resize_method reproduces; tf.image.resize differs. (conftest imports TFOD2's compat
    layer first.)"""
    from object_detection.core import preprocessor

    image = np.random.default_rng(0).integers(0, 256, (333, 517, 3), dtype=np.uint8)
    resized, _ = preprocessor.resize_image(tf.constant(image, tf.float32), new_height=320, new_width=320)
    assert np.array_equal(resize_bilinear(image, (320, 320), "bilinear_legacy", dtype=None), resized.numpy())
    assert not np.array_equal(resize_bilinear(image, (320, 320), "bilinear", dtype=None), resized.numpy())


def test_resize_keeps_an_image_of_the_right_size():
    image = np.zeros((320, 320, 3), np.uint8)
    assert resize_bilinear(image, (320, 320)) is image


# ---------------------------------------------------------------------------------------------------------
# Image inputs


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def test_encoded_inputs_keep_their_bytes_and_read_only_the_header(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    for fmt, name in (("PNG", "png"), ("JPEG", "jpeg")):
        data = _encoded(image, fmt)
        path = tmp_path / f"x.{name}"
        path.write_bytes(data)
        for value in (path, str(path), data, bytearray(data), memoryview(data)):
            loaded = load_image(value)
            assert loaded.size == (50, 30) and loaded.encoded == data and loaded.encoded_format == name
            assert loaded._pixels is None  # not decoded yet
        assert loaded.pixels.shape == (30, 50, 3)
    png = load_image(_encoded(image, "PNG"))
    assert np.array_equal(png.pixels, image)


def test_other_formats_are_decoded():
    image = np.random.default_rng(0).integers(0, 256, (20, 10, 3), dtype=np.uint8)
    loaded = load_image(_encoded(image, "BMP"))
    assert loaded.encoded is None and np.array_equal(loaded.pixels, image)


def test_arrays_and_pil_images_become_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert load_image(gray).pixels.shape == (3, 4, 3)
    assert load_image(gray[..., None]).pixels.shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 255
    assert load_image(rgba).pixels.shape == (3, 4, 3)
    assert load_image(Image.fromarray(gray)).size == (4, 3)
    assert load_image(Image.fromarray(rgba)).pixels.shape == (3, 4, 3)
    assert load_image(Image.new("P", (5, 6))).pixels.shape == (6, 5, 3)
    sixteen = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert load_image(sixteen).pixels.max() == 255


@pytest.mark.parametrize(("value", "message"), [
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 2), np.uint8), "HxWx3"),
    (np.zeros((0, 4, 3), np.uint8), "HxWx3"),
    (b"not an image", "cannot read image"),
    ("/nonexistent/x.jpg", "cannot read image"),
    (42, "unsupported image type int"),
])
def test_bad_inputs_are_invalid_input(value, message):
    with pytest.raises(InvalidInput, match=message):
        load_image(value)


def test_truncated_jpeg_fails_on_decode_not_on_load():
    full = _encoded(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    data = full[: len(full) // 2]
    loaded = load_image(data)
    with pytest.raises(InvalidInput, match="cannot decode"):
        loaded.pixels  # noqa: B018


def test_encode_image():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(image, "png")))), image)
    assert encode_image(image, "jpeg")[:2] == b"\xff\xd8"
    with pytest.raises(ValueError):
        encode_image(image, "gif")


# ---------------------------------------------------------------------------------------------------------
# Tensors


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint32, np.uint64,
                                   np.float16, np.float32, np.float64, np.bool_])
def test_tensor_round_trip_and_tensorflow_agrees(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    proto = make_tensor_proto(array)
    assert make_ndarray(proto).dtype == array.dtype and np.array_equal(make_ndarray(proto), array)
    from tensorflow.core.framework import tensor_pb2

    official = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    assert np.array_equal(tf.make_ndarray(official), array)


def test_string_tensors_and_json():
    proto = make_tensor_proto([b"a", b"\xff\x00"])
    assert make_ndarray(proto).tolist() == [b"a", b"\xff\x00"]
    assert json_to_ndarray([["a", {"b64": "/wA="}]], string=True).tolist() == [[b"a", b"\xff\x00"]]
    assert json_to_ndarray([[1.5, 2.0]]).dtype == np.float64


# ---------------------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(("text", "expected"), [
    ("grpc://localhost:8500", ("grpc", False, "localhost", 8500, "grpc://localhost:8500")),
    ("localhost:9000", ("grpc", False, "localhost", 9000, "grpc://localhost:9000")),
    ("grpcs://models.example.com", ("grpc", True, "models.example.com", 8500, "grpcs://models.example.com:8500")),
    ("http://10.0.0.5", ("rest", False, "10.0.0.5", 8501, "http://10.0.0.5:8501")),
    ("https://gw.example.com:443/tfs/", ("rest", True, "gw.example.com", 443, "https://gw.example.com:443/tfs")),
    ("grpc://[::1]:8500", ("grpc", False, "::1", 8500, "grpc://[::1]:8500")),
])
def test_parse_server(text, expected):
    address = parse_server(text)
    assert (address.transport, address.tls, address.host, address.port, str(address)) == expected


@pytest.mark.parametrize("text", ["ftp://x", "grpc://:80", "grpc://host:notaport", "grpc://host:8500/path"])
def test_parse_server_rejects(text):
    with pytest.raises(ValueError):
        parse_server(text)


def test_constructor_checks():
    with pytest.raises(ValueError, match="not both"):
        _core(version=1, label="stable")
    with pytest.raises(ValueError, match="encoding"):
        _core(encoding="webp")
    with pytest.raises(ValueError, match="resize_method"):
        _core(resize_method="area")


# ---------------------------------------------------------------------------------------------------------
# Retries


def call_with_retry(function, **options):
    """``retrying`` run as Detector runs it, ``function(remaining)`` standing in for the transport's send."""
    return BlockingDriver(None).run(retrying(lambda remaining: Offload(partial(function, remaining)), **options))


def _flaky(errors: list[Exception], result="ok"):
    calls = []

    def function(remaining):
        calls.append(remaining)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return function, calls


def test_retries_only_server_unavailable():
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)
    function, calls = _flaky([ServerUnavailable("busy"), ServerUnavailable("busy")])
    assert call_with_retry(function, policy=policy, timeout=5, what="t") == "ok" and len(calls) == 3
    for error in (InvalidInput("bad"), ModelNotFound("nope"), DeadlineExceeded("late"), DetserveClientError("x")):
        function, calls = _flaky([error])
        with pytest.raises(type(error)):
            call_with_retry(function, policy=policy, timeout=5, what="t")
        assert len(calls) == 1 and error.attempts == 1
    function, calls = _flaky([ServerUnavailable("busy")] * 10)
    with pytest.raises(ServerUnavailable) as info:
        call_with_retry(function, policy=policy, timeout=5, what="t")
    assert len(calls) == 4 and info.value.attempts == 4


def test_backoff_is_exponential_with_full_jitter():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    rng = random.Random(0)
    for retry, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        samples = [policy.backoff(retry, rng) for _ in range(300)]
        assert 0 <= min(samples) and max(samples) <= cap
        assert max(samples) > 0.8 * cap and min(samples) < 0.2 * cap  # spread over the whole range


def test_retries_stay_inside_the_deadline():
    policy = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.05)
    function, calls = _flaky([ServerUnavailable("busy")] * 1000)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        call_with_retry(function, policy=policy, timeout=0.3, what="t")
    # Without the deadline 100 attempts would take ~5 s; the slack over 0.3 s is for a loaded CI machine.
    assert time.monotonic() - started < 1.0
    assert all(remaining <= 0.3 for remaining in calls) and calls == sorted(calls, reverse=True)


def test_async_driver_runs_the_same_retries():
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)
    function, calls = _flaky([ServerUnavailable("busy"), ServerUnavailable("busy")])
    operation = retrying(lambda remaining: Offload(partial(function, remaining)), policy=policy, timeout=5, what="t")
    assert asyncio.run(AsyncDriver(lambda: None).run(operation)) == "ok" and len(calls) == 3
    function, calls = _flaky([InvalidInput("bad")])
    operation = retrying(lambda remaining: Offload(partial(function, remaining)), policy=policy, timeout=5, what="t")
    with pytest.raises(InvalidInput):
        asyncio.run(AsyncDriver(lambda: None).run(operation))
    assert len(calls) == 1


def test_retry_after_is_honoured():
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=1.0)
    error = ServerUnavailable("slow down")
    error.retry_after = 0.2
    function, calls = _flaky([error])
    started = time.monotonic()
    assert call_with_retry(function, policy=policy, timeout=5, what="t") == "ok"
    assert time.monotonic() - started >= 0.2


class _FakeClock:
    """Stands in for time.monotonic in detserve.client.retry; Sleep steps advance it instead of sleeping."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def run(self, operation):
        """Run a ``retrying`` operation whose attempts are Offload steps, sleeping on this clock."""
        value, error = None, None
        while True:
            try:
                step = operation.send(value) if error is None else operation.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if isinstance(step, Sleep):
                self.sleeps.append(step.seconds)
                self.now += step.seconds
                continue
            try:
                value = step.function()
            except Exception as raised:  # noqa: BLE001 - thrown into the operation, as the drivers do
                error = raised


@pytest.fixture
def clock(monkeypatch) -> _FakeClock:
    from detserve.client import retry as retry_module

    fake = _FakeClock()
    monkeypatch.setattr(retry_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _server_down_for(clock: _FakeClock, seconds: float, error=ServerUnavailable):
    """An attempt that fails (after 1 ms, a refused connection) until ``seconds`` of fake time have passed."""
    back_at = clock.now + seconds
    calls = []

    def function(remaining):
        calls.append(remaining)
        clock.now += 0.001
        if clock.now < back_at:
            raise error("cannot connect: Connection refused", code="CONNECT")
        return "ok"

    return function, calls


def _fake_retrying(clock: _FakeClock, function, *, policy: RetryPolicy | None = None, timeout: float | None = 10.0):
    return clock.run(retrying(lambda remaining: Offload(partial(function, remaining)), policy=policy or RetryPolicy(),
                              timeout=timeout, what="t", rng=random.Random(0)))


def test_the_default_policy_rides_through_an_outage_shorter_than_the_deadline(clock):
    """The old default (4 attempts, <= 0.7 s of sleep) lost every call of a restart longer than that."""
    function, calls = _server_down_for(clock, 8.0)
    assert _fake_retrying(clock, function) == "ok"
    assert len(calls) > 4 and clock.sleeps and max(clock.sleeps) <= RetryPolicy().max_backoff
    assert all(0 < remaining <= 10.0 for remaining in calls) and calls == sorted(calls, reverse=True)


def test_the_default_policy_gives_up_at_the_deadline_with_the_last_error(clock):
    started = clock.now
    function, calls = _server_down_for(clock, 3600.0)
    with pytest.raises(ServerUnavailable, match="Connection refused") as info:
        _fake_retrying(clock, function)
    assert info.value.attempts == len(calls) > 4
    assert started + 10.0 - RetryPolicy().max_backoff <= clock.now <= started + 10.0  # used its time, not more


def test_an_explicit_max_attempts_still_caps_the_default_policy(clock):
    function, calls = _server_down_for(clock, 3600.0)
    with pytest.raises(ServerUnavailable) as info:
        _fake_retrying(clock, function, policy=RetryPolicy(max_attempts=3))
    assert len(calls) == 3 == info.value.attempts
    function, calls = _server_down_for(clock, 3600.0)
    with pytest.raises(ServerUnavailable):
        _fake_retrying(clock, function, policy=NO_RETRY)
    assert len(calls) == 1


def test_without_a_deadline_the_default_policy_keeps_trying(clock):
    function, calls = _server_down_for(clock, 3600.0)  # an hour: past where the backoff's power overflows a float
    assert _fake_retrying(clock, function, timeout=None) == "ok" and len(calls) > 1100
    assert RetryPolicy().backoff(5000) <= RetryPolicy().max_backoff


@pytest.mark.parametrize("error", [ModelNotFound, InvalidInput, DeadlineExceeded, DetserveClientError])
def test_the_default_policy_fails_fast_on_what_a_retry_cannot_fix(clock, error):
    """NOT_FOUND included: a typo'd model name must fail at once (docs/client.md, Retries)."""
    function, calls = _server_down_for(clock, 3600.0, error)
    with pytest.raises(error):
        _fake_retrying(clock, function)
    assert len(calls) == 1 and clock.sleeps == []


def test_retry_policy_defaults_and_bad_values():
    assert RetryPolicy().max_attempts is None and _core().retry == RetryPolicy()
    assert NO_RETRY.max_attempts == 1
    for bad, message in (({"max_attempts": 0}, "max_attempts must be at least 1"),
                         ({"initial_backoff": 3.0, "max_backoff": 2.0}, "initial_backoff <= max_backoff"),
                         ({"multiplier": 0.5}, "multiplier must be at least 1")):
        with pytest.raises(ValueError, match=message):
            RetryPolicy(**bad)


# ---------------------------------------------------------------------------------------------------------
# Errors


class _RpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.NOT_FOUND, ModelNotFound), (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
    (grpc.StatusCode.FAILED_PRECONDITION, InvalidInput), (grpc.StatusCode.UNAVAILABLE, ServerUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded), (grpc.StatusCode.RESOURCE_EXHAUSTED, DetserveClientError),
    (grpc.StatusCode.INTERNAL, DetserveClientError)])
def test_grpc_errors(code, cls):
    error = from_grpc_error(_RpcError(code, "the server's words"), "grpc://h:1")
    assert type(error) is cls and error.message == "the server's words" and error.code == code.name
    assert error.retryable == (cls is ServerUnavailable)


@pytest.mark.parametrize(("status", "cls"), [(400, InvalidInput), (404, ModelNotFound), (429, ServerUnavailable),
                                             (503, ServerUnavailable), (504, DeadlineExceeded),
                                             (500, DetserveClientError)])
def test_http_errors(status, cls):
    error = from_http_error(status, '{"error": "Servable not found for request: Latest(x)"}', "http://h:1")
    assert type(error) is cls and error.message == "Servable not found for request: Latest(x)"
    assert str(error) == f"Servable not found for request: Latest(x) (HTTP {status} from http://h:1)"
    assert from_http_error(status, "<html>proxy says no</html>", "s").message == "<html>proxy says no</html>"


# ---------------------------------------------------------------------------------------------------------
# Box mapping and annotation


def _outputs(boxes, scores, classes, names=None):
    outputs = {"detection_boxes": np.array([boxes], np.float32), "detection_scores": np.array([scores], np.float32),
               "detection_classes": np.array([classes], np.float32), "num_detections": np.array([len(scores)], np.float32)}
    if names is not None:
        outputs["detection_class_names"] = np.array([names], dtype=object)
    return outputs


def test_detections_map_normalised_boxes_to_original_pixels():
    image = load_image(np.zeros((778, 1563, 3), np.uint8))
    outputs = _outputs([[0.25, 0.1, 0.75, 0.5], [0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]], [0.9, 0.6, 0.3],
                       [1, 2, 3], [b"with_mask", b"", b"x"])
    detections = detections_from(outputs, 0, image, 0.5, None, {2: "without_mask"})
    assert [d.label for d in detections] == ["with_mask", "without_mask"]  # "" falls back to the class names
    first = detections[0]
    assert first.box_normalized == Box(np.float32(0.1), np.float32(0.25), np.float32(0.5), np.float32(0.75))
    assert first.box == Box(float(np.float32(0.1)) * 1563, float(np.float32(0.25)) * 778,
                            float(np.float32(0.5)) * 1563, float(np.float32(0.75)) * 778)
    assert detections[1].box == Box(0.0, 0.0, 1563.0, 778.0)
    assert len(detections_from(outputs, 0, image, 0.0, 2, None)) == 2
    assert detections_from(outputs, 0, image, 0.0, None, None)[1].label == "2"  # no names anywhere: the id


def test_only_num_detections_are_read():
    outputs = _outputs([[0, 0, 1, 1]] * 3, [0.9, 0.8, 0.7], [1, 1, 1])
    outputs["num_detections"] = np.array([2.0], np.float32)
    assert len(detections_from(outputs, 0, load_image(np.zeros((4, 4, 3), np.uint8)), 0.0, None, None)) == 2


def test_a_new_per_detection_output_reaches_detection_extras(monkeypatch):
    # docs/architecture.md: a new output tensor is its name in the contract and its value in the export; the
    # client carries every per-detection contract output it does not model itself in Detection.extras.
    from detserve.client import detections as detections_module

    monkeypatch.setattr(detections_module, "DETECTION_OUTPUTS",
                        (*detections_module.DETECTION_OUTPUTS, "detection_multiclass_scores"))
    outputs = _outputs([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0.9, 0.2], [1, 2], [b"a", b"b"])
    outputs["detection_multiclass_scores"] = np.array([[[0.05, 0.9, 0.05], [0.7, 0.1, 0.2]]], np.float32)
    outputs["not_in_the_contract"] = np.array([[7.0, 8.0]], np.float32)
    image = load_image(np.zeros((4, 4, 3), np.uint8))
    found = detections_from(outputs, 0, image, 0.0, None, None)
    assert [d.extras for d in found] == [{"detection_multiclass_scores": pytest.approx([0.05, 0.9, 0.05])},
                                         {"detection_multiclass_scores": pytest.approx([0.7, 0.1, 0.2])}]
    assert found[0].to_dict()["extras"]["detection_multiclass_scores"] == pytest.approx([0.05, 0.9, 0.05])
    assert len({*found}) == 2  # still hashable (extras take no part in the hash)
    monkeypatch.undo()
    plain = detections_from(outputs, 0, image, 0.0, None, None)[0]
    assert plain.extras == {} and "extras" not in plain.to_dict()  # today's outputs: to_dict is unchanged


def test_plan_groups_requests_and_resizes():
    from detserve.client.metadata import ModelMetadata

    spec = TensorSpec("images", "DT_UINT8", (None, None, None, 3))
    outputs = {k: TensorSpec(k, "DT_FLOAT", None) for k in ("detection_boxes", "detection_scores",
                                                           "detection_classes", "num_detections")}
    meta = ModelMetadata("detector", 1, {"serving_default": Signature("serving_default", "", {"images": spec}, outputs)},
                         input_size=(64, 48))
    images = [np.zeros((10 + i, 20, 3), np.uint8) for i in range(5)]
    plan = _core(max_batch_size=2).plan(meta, images)
    assert [b.indices for b in plan.batches] == [[0, 1], [2, 3], [4]] and plan.signature.name == "serving_default"
    assert plan.batches[0].payload.shape == (2, 64, 48, 3) and plan.batches[0].payload.dtype == np.uint8
    # Without an input size, images are sent as they are, and only equal shapes share a request.
    meta.input_size = None
    plan = _core().plan(meta, [images[0], images[0], images[1]])
    assert [b.indices for b in plan.batches] == [[0, 1], [2]]
    # No string signature: encoded requests name the problem.
    with pytest.raises(ModelNotFound, match="encoded images"):
        _core(encoding="jpeg").plan(meta, images)


class _ScriptedTransport:
    """A gRPC server in memory: one uint8 detection signature, one detection per image (score = its index)."""

    def __init__(self):
        self.sent: list[str] = []
        signatures = get_model_metadata_pb2.SignatureDefMap()
        definition = signatures.signature_def["serving_default"]
        definition.inputs["images"].dtype = types_pb2.DT_UINT8
        for _ in range(4):
            definition.inputs["images"].tensor_shape.dim.add().size = -1
        for key in ("detection_boxes", "detection_scores", "detection_classes", "num_detections"):
            definition.outputs[key].dtype = types_pb2.DT_FLOAT
        self.metadata = get_model_metadata_pb2.GetModelMetadataResponse()
        self.metadata.model_spec.name = "detector"
        self.metadata.metadata["signature_def"].Pack(signatures)
        self.images = 0

    def send(self, request, timeout):
        self.sent.append(request.rpc)
        if request.rpc == "GetModelMetadata":
            return self.metadata
        batch = make_ndarray(request.message.inputs["images"]).shape[0]
        scores = np.arange(self.images, self.images + batch, dtype=np.float32)[:, None]
        self.images += batch
        response = predict_pb2.PredictResponse()
        for key, value in (("detection_boxes", np.full((batch, 1, 4), 0.5, np.float32)), ("detection_scores", scores),
                           ("detection_classes", np.ones((batch, 1), np.float32)),
                           ("num_detections", np.ones(batch, np.float32))):
            response.outputs[key].CopyFrom(make_tensor_proto(value))
        return response

    def close(self):
        pass


class _AsyncScriptedTransport(_ScriptedTransport):
    async def send(self, request, timeout):
        await asyncio.sleep(0)  # let the concurrent calls interleave
        return super().send(request, timeout)

    async def close(self):
        pass


def test_detector_and_async_detector_run_the_same_operations(monkeypatch):
    transports = {False: _ScriptedTransport(), True: _AsyncScriptedTransport()}
    monkeypatch.setattr(detector_module, "open_transport", lambda address, asynchronous, **_: transports[asynchronous])
    images = [np.zeros((10 + i, 20, 3), np.uint8) for i in range(5)]
    with Detector("grpc://localhost:1", max_batch_size=2, input_size=(8, 8)) as detector:
        blocking = detector.detect_batch(images)
    assert [[d.score for d in found] for found in blocking] == [[0.0], [1.0], [2.0], [3.0], [4.0]]
    assert blocking[0][0].box == Box(10.0, 5.0, 10.0, 5.0)  # 0.5 of 20x10, x first
    assert transports[False].sent == ["GetModelMetadata", "Predict", "Predict", "Predict"]

    async def run():
        async with AsyncDetector("grpc://localhost:1", max_batch_size=2, input_size=(8, 8)) as detector:
            return await asyncio.gather(detector.detect_batch(images), detector.detect_batch(images))

    first, second = asyncio.run(run())
    assert [len(found) for found in first + second] == [1] * 10
    # One GetModelMetadata for the concurrent first calls; each call's three Predicts run together.
    assert transports[True].sent.count("GetModelMetadata") == 1 and transports[True].sent.count("Predict") == 6


def test_a_cached_metadata_never_waits_for_a_refresh_in_progress(monkeypatch):
    import threading

    class Stalling(_ScriptedTransport):
        def __init__(self):
            super().__init__()
            self.stall, self.stalled, self.release = False, threading.Event(), threading.Event()

        def send(self, request, timeout):
            if request.rpc == "GetModelMetadata" and self.stall:
                self.stalled.set()
                self.release.wait(30)
            return super().send(request, timeout)

    transport = Stalling()
    monkeypatch.setattr(detector_module, "open_transport", lambda address, asynchronous, **_: transport)
    image = np.zeros((8, 8, 3), np.uint8)
    with Detector("grpc://localhost:1", input_size=(8, 8)) as detector:
        detector.detect(image)  # fills the metadata cache
        transport.stall = True
        refresh = threading.Thread(target=detector.metadata, kwargs={"refresh": True})
        refresh.start()
        assert transport.stalled.wait(10)
        done = threading.Event()
        caller = threading.Thread(target=lambda: (detector.detect(image), done.set()))
        caller.start()
        finished = done.wait(10)  # would block until the refresh is released if a cache hit took the lock
        transport.release.set()
        refresh.join(10), caller.join(10)
    assert finished


def test_annotate_draws_labelled_boxes():
    image = np.full((200, 300, 3), 30, np.uint8)
    detections = [Detection("with_mask", 1, 0.93, Box(20, 30, 120, 150), Box(20 / 300, 30 / 200, 0.4, 0.75)),
                  Detection("without_mask", 2, 0.51, Box(150, 0, 290, 60), Box(0.5, 0, 290 / 300, 0.3))]
    drawn = np.asarray(annotate(image, detections))
    assert drawn.shape == image.shape
    changed = np.abs(drawn.astype(int) - image).max(axis=-1) > 0
    assert changed[30:150, 20].all() and changed[30:150, 119].all()  # left and right edges of the first box
    assert not changed[100, 200]  # outside every box and label
    assert np.array_equal(annotate(Image.fromarray(image), []), Image.fromarray(image))
