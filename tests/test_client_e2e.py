"""detserve-client against a server, over gRPC and REST: detections, box mapping, metadata, retries,
deadlines, TLS, headers, asyncio and the `detserve detect|status|metadata` commands.

The server is test_client_testserver's TF Serving stand-in (official servicers + TF Serving's REST API)
around an in-process SavedModel with detserve's signatures, so "the in-process SavedModel's detections"
are computed from the very SavedModel the server answers with.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import synthetic_photo
from PIL import Image
from test_client_protos import NO_TENSORFLOW
from test_client_testserver import (
    LABEL_MAP,
    MODEL_NAME,
    TestServer,
    _ModelService,
    make_certificates,
    servable_for,
    tiny_model_dir,
)

from detserve.client import (
    AsyncDetector,
    DeadlineExceeded,
    Detector,
    DetserveClientError,
    InvalidInput,
    ModelNotFound,
    RetryPolicy,
    ServerUnavailable,
)
from detserve.client.cli import main as detserve
from detserve.client.images import encode_image, resize_bilinear
from detserve.export.verify import compare_detections

TRANSPORTS = ["grpc", "rest"]
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def servable():
    return servable_for(tiny_model_dir())


@pytest.fixture(scope="module")
def server(servable):
    server = TestServer(servable).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset_faults(servable):
    servable.faults.clear()
    servable.delay = 0.0
    yield
    servable.faults.clear()
    servable.delay = 0.0


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients, blobs and a little noise (detections vary across the image)."""
    return synthetic_photo(width, height, seed)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def in_process(servable, signature: str, value) -> dict[str, np.ndarray]:
    function = servable.loaded.signatures[signature]
    key = "images" if signature != "serving_bytes" else "encoded_images"
    return {k: v.numpy() for k, v in function(**{key: tf.constant(value)}).items()}


def as_outputs(detections) -> dict[str, np.ndarray]:
    """Client detections back in the model's output layout (batch of one), for compare_detections."""
    return {
        "detection_boxes": np.array([[[d.box_normalized.ymin, d.box_normalized.xmin, d.box_normalized.ymax,
                                       d.box_normalized.xmax] for d in detections]], np.float64).reshape(1, -1, 4),
        "detection_scores": np.array([[d.score for d in detections]], np.float64).reshape(1, -1),
        "detection_classes": np.array([[d.class_id for d in detections]], np.float64).reshape(1, -1),
        "num_detections": np.array([len(detections)], np.float64),
    }


def assert_identical(detections, reference: dict[str, np.ndarray], size: tuple[int, int]) -> None:
    """Bit-for-bit: every one of the model's num_detections, same order, same float32 values."""
    count = int(reference["num_detections"][0])
    assert len(detections) == count
    width, height = size
    for j, d in enumerate(detections):
        ymin, xmin, ymax, xmax = reference["detection_boxes"][0][j]
        assert d.score == float(reference["detection_scores"][0][j])
        assert d.class_id == int(reference["detection_classes"][0][j])
        assert d.label == reference["detection_class_names"][0][j].decode()
        assert tuple(d.box_normalized) == (float(xmin), float(ymin), float(xmax), float(ymax))
        assert tuple(d.box) == (float(xmin) * width, float(ymin) * height, float(xmax) * width, float(ymax) * height)


def assert_close(detections, expected) -> None:
    """Same detections up to float32 rounding (a batch of images runs through slightly different kernels
    than one image: scores differ by ~1e-8, as export/verify's batch-parity check allows)."""
    comparison = compare_detections(as_outputs(expected), as_outputs(detections), score_tolerance=1e-5,
                                    box_tolerance=1e-5, floor=0.0)
    assert comparison["ok"], comparison
    assert len(detections) == len(expected)


def detector(server, transport: str, **kwargs) -> Detector:
    kwargs.setdefault("retry", FAST_RETRY)
    return Detector(server.url(transport), model=MODEL_NAME, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Metadata and status


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata_gives_signatures_input_size_and_class_names(server, transport):
    with detector(server, transport) as client:
        meta = client.metadata(class_names=True)
    assert meta.model == MODEL_NAME and meta.version == 1
    assert meta.input_size == (320, 320)  # model_info's input shape
    assert meta.class_names == LABEL_MAP  # model_info's values
    assert meta.image_signature.name == "serving_default" and meta.image_signature.input.key == "images"
    assert meta.bytes_signature.name == "serving_bytes" and meta.bytes_signature.input.key == "encoded_images"
    assert meta.image_signature.input.shape == (None, None, None, 3)
    assert meta.signatures["serving_default"].outputs["detection_boxes"].shape == (None, 100, 4)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_status_and_wait_until_ready(server, transport):
    with detector(server, transport) as client:
        status = client.status()
        assert status.available and status.available_versions == [1]
        assert status.versions[0].state == "AVAILABLE" and status.versions[0].error_code == "OK"
        assert client.wait_until_ready(timeout=5).available
    with detector(server, transport, version=7) as client:
        with pytest.raises(DeadlineExceeded, match="not ready after"):
            client.wait_until_ready(timeout=0.6, interval=0.1)


def test_wait_until_ready_waits_for_a_server_that_starts_later(servable):
    from tensorflow_serving.apis import model_service_pb2_grpc

    late = grpc.server(futures.ThreadPoolExecutor(2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(servable), late)
    port = late.add_insecure_port("127.0.0.1:0")  # bound, not serving until start()
    starter = threading.Timer(0.7, late.start)
    started = time.monotonic()
    starter.start()
    try:
        with Detector(f"grpc://127.0.0.1:{port}", model=MODEL_NAME, timeout=1.0) as client:
            assert client.wait_until_ready(timeout=15, interval=0.1).available
        assert time.monotonic() - started >= 0.6
    finally:
        starter.join()
        late.stop(None)


# ---------------------------------------------------------------------------------------------------------
# Detections equal the in-process SavedModel's


def test_grpc_sends_a_resized_uint8_tensor_and_matches_the_in_process_model(server, servable):
    image = natural_image(777, 1031)
    with detector(server, "grpc") as client:
        detections = client.detect(image)
    # Exactly what the server ran: the client's resize of the original, as uint8 [1, 320, 320, 3].
    sent = resize_bilinear(image, (320, 320), "bilinear_legacy")
    assert_identical(detections, in_process(servable, "serving_default", sent[None]), (1031, 777))
    # And the in-process model on the full-size original: the graph resizes in float32, the client rounds
    # to uint8 first (<= 0.5 grey levels per pixel), so scores and boxes agree within parity.DEFAULT_TOLERANCE (2e-3).
    comparison = compare_detections(in_process(servable, "serving_default", image[None]), as_outputs(detections))
    assert comparison["ok"], comparison
    assert comparison["compared"] >= 10 and comparison["max_score_diff"] <= 2e-3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_encoded_files_are_sent_as_they_are_and_match_the_in_process_model(server, servable, transport, tmp_path):
    image = natural_image(600, 800, seed=1)
    path = tmp_path / "scene.png"
    path.write_bytes(png_bytes(image))
    with detector(server, transport, encoding="jpeg") as client:  # a PNG file is not re-encoded
        detections = client.detect(path)
    assert_identical(detections, in_process(servable, "serving_bytes", [path.read_bytes()]), (800, 600))
    # In-graph decode + resize of the PNG == the uint8 signature on the decoded original: identical.
    assert_identical(detections, in_process(servable, "serving_default", image[None]), (800, 600))


def test_rest_default_sends_a_resized_jpeg_of_an_array(server, servable):
    image = natural_image(1080, 1920, seed=2)
    with detector(server, "rest") as client:
        detections = client.detect(image)
    sent = encode_image(resize_bilinear(image, (320, 320), "bilinear_legacy"), "jpeg", 95)
    assert len(sent) < 60_000  # tens of KB, not a multi-MB JSON list of pixels
    assert_identical(detections, in_process(servable, "serving_bytes", [sent]), (1920, 1080))


@pytest.mark.parametrize(("transport", "encoding"), [("grpc", "raw"), ("grpc", "png"), ("rest", "raw"),
                                                     ("rest", "png")])
def test_all_transports_and_encodings_agree(server, servable, transport, encoding):
    image = natural_image(480, 640, seed=3)
    with detector(server, transport, encoding=encoding) as client:
        detections = client.detect(image)
    sent = resize_bilinear(image, (320, 320), "bilinear_legacy")
    assert_identical(detections, in_process(servable, "serving_default", sent[None]), (640, 480))


# ---------------------------------------------------------------------------------------------------------
# Boxes map back exactly


def rectangle_image(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    xmin, ymin, xmax, ymax = box
    image[ymin:ymax, xmin:xmax] = 255
    return image


@pytest.mark.parametrize(("transport", "encoding"), [("grpc", "raw"), ("rest", "png"), ("rest", "jpeg")])
@pytest.mark.parametrize(("width", "height", "box"), [
    (1600, 960, (400, 240, 1200, 720)),  # edges on the 320x320 sampling grid: exact in pixels
    (640, 320, (100, 40, 420, 300)),
    (1563, 778, (311, 97, 1002, 655)),  # the example image's size, edges off the grid
])
def test_boxes_map_back_to_the_original_image(server, servable, transport, encoding, width, height, box, tmp_path):
    image = rectangle_image(width, height, box)
    source = image
    if encoding == "jpeg":  # a PNG file: sent as is, decoded and resized in the graph
        source = tmp_path / "rectangle.png"
        source.write_bytes(png_bytes(image))
    with detector(server, transport, encoding=encoding) as client:
        (top, *_) = client.detect(source, score_threshold=0.9)
    assert top.label == "without_mask" and top.score == pytest.approx(0.999)
    # Pixel box = normalised box x original size, and the normalised box is the in-process model's on the
    # full-size original (normalised coordinates do not depend on the resolution).
    reference = in_process(servable, "serving_default", image[None])
    ymin, xmin, ymax, xmax = (float(v) for v in reference["detection_boxes"][0][0])
    assert tuple(top.box_normalized) == (xmin, ymin, xmax, ymax)
    assert tuple(top.box) == (xmin * width, ymin * height, xmax * width, ymax * height)
    # Against the drawn rectangle: within one model pixel (original size / 320).
    step_x, step_y = width / 320, height / 320
    assert abs(top.box.xmin - box[0]) < step_x and abs(top.box.xmax - box[2]) < step_x
    assert abs(top.box.ymin - box[1]) < step_y and abs(top.box.ymax - box[3]) < step_y
    if width % 320 == 0 and height % 320 == 0:
        assert tuple(top.box) == tuple(float(v) for v in box)


# ---------------------------------------------------------------------------------------------------------
# Inputs, batches, thresholds


def test_path_bytes_pil_and_numpy_inputs_give_the_same_detections(server, tmp_path):
    image = natural_image(300, 500, seed=4)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(image))
    with detector(server, "grpc") as client:
        results = [client.detect(value) for value in (path, str(path), path.read_bytes(), Image.fromarray(image),
                                                      image, Image.fromarray(image).convert("RGBA"))]
    assert all(result == results[0] for result in results[1:])
    assert len(results[0]) > 10


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_detect_batch_matches_single_calls_and_splits_requests(server, servable, transport):
    images = [natural_image(200 + 50 * i, 300 + 70 * i, seed=10 + i) for i in range(5)]
    with detector(server, transport, max_batch_size=2) as client:
        client.metadata()
        calls = servable.predict_calls
        batch = client.detect_batch(images)
        assert servable.predict_calls - calls == 3  # 2 + 2 + 1 images
        singles = [client.detect(image) for image in images]
    for detections, single in zip(batch, singles, strict=True):
        assert_close(detections, single)
    assert all(len(b) > 10 for b in batch)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_score_threshold_and_max_detections(server, transport):
    image = natural_image(240, 320, seed=5)
    with detector(server, transport, score_threshold=0.5) as client:
        everything = client.detect(image, score_threshold=0.0)
        default = client.detect(image)
        top3 = client.detect(image, max_detections=3)
    assert default == [d for d in everything if d.score >= 0.5]
    assert 0 < len(default) < len(everything)
    assert top3 == default[:3]
    assert all(a.score >= b.score for a, b in zip(everything, everything[1:], strict=False))


# ---------------------------------------------------------------------------------------------------------
# Production behaviour: retries, deadlines, errors, headers, message size, TLS


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retries_on_unavailable_then_succeeds(server, servable, transport):
    image = natural_image(100, 100)
    with detector(server, transport) as client:
        expected = client.detect(image)
        calls = servable.predict_calls
        # REST: 503 and 429 (TF Serving's RESOURCE_EXHAUSTED) are both retried.
        second = grpc.StatusCode.UNAVAILABLE if transport == "grpc" else grpc.StatusCode.RESOURCE_EXHAUSTED
        servable.faults.extend([grpc.StatusCode.UNAVAILABLE, second])
        assert client.detect(image) == expected
        assert servable.predict_calls - calls == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gives_up_after_max_attempts_with_the_servers_message(server, servable, transport):
    with detector(server, transport, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as client:
        client.metadata()
        calls = servable.predict_calls
        servable.faults.extend([grpc.StatusCode.UNAVAILABLE] * 5)
        with pytest.raises(ServerUnavailable, match="injected UNAVAILABLE") as info:
            client.detect(natural_image(50, 50))
    assert servable.predict_calls - calls == 3 and info.value.attempts == 3
    assert info.value.code == ("UNAVAILABLE" if transport == "grpc" else "HTTP 503")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_never_retries_invalid_argument(server, servable, transport):
    with detector(server, transport) as client:
        client.metadata()
        calls = servable.predict_calls
        servable.faults.append(grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(InvalidInput, match="injected INVALID_ARGUMENT") as info:
            client.detect(natural_image(50, 50))
        assert servable.predict_calls - calls == 1 and info.value.attempts == 1
        # A real one: an input the signature does not have; the server's own message comes through.
        with pytest.raises(InvalidInput, match="input tensor alias not found in signature: pictures"):
            client.predict("serving_default", {"pictures": np.zeros((1, 8, 8, 3), np.uint8)})
        assert servable.predict_calls - calls == 2 if transport == "grpc" else True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_deadline_fires(server, servable, transport):
    with detector(server, transport, timeout=0.3) as client:
        client.metadata()
        servable.delay = 2.0
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.detect(natural_image(50, 50))
        assert time.monotonic() - started < 1.5
        servable.delay = 0.0
        # A per-call timeout overrides the Detector's.
        servable.delay = 0.5
        assert client.detect(natural_image(50, 50), timeout=5.0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_model_is_model_not_found_with_the_servers_message(server, transport):
    with Detector(server.url(transport), model="nope", retry=FAST_RETRY) as client:
        with pytest.raises(ModelNotFound, match="nope"):
            client.detect(natural_image(50, 50))
        with pytest.raises(ModelNotFound):
            client.status()


def test_unreachable_server_is_server_unavailable_after_retries():
    for url in ("grpc://127.0.0.1:9", "http://127.0.0.1:9"):
        with Detector(url, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01), timeout=5) as client:
            with pytest.raises(ServerUnavailable) as info:
                client.status()
            assert info.value.attempts == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_headers_reach_the_server(server, servable, transport):
    headers = {"authorization": "Bearer s3cret", "x-request-id": "req-42"}
    with detector(server, transport, headers=headers) as client:
        client.detect(natural_image(40, 40))
    assert {k: servable.last_headers.get(k) for k in headers} == headers


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_message_size_is_enforced_on_the_client(server, servable, transport):
    with detector(server, transport, encoding="raw", max_message_bytes=200_000) as client:
        client.metadata()
        calls = servable.predict_calls
        with pytest.raises(DetserveClientError) as info:  # 320x320x3 uint8 = 307 KB
            client.detect(natural_image(400, 400))
    assert not isinstance(info.value, ServerUnavailable)  # not retried
    assert servable.predict_calls == calls


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(servable, certificates):
    server = TestServer(servable, certificates).start()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tls_with_a_self_signed_ca(tls_server, certificates, servable, transport):
    image = natural_image(120, 160)
    url = tls_server.url(transport)
    assert url.startswith(("grpcs://", "https://"))
    with Detector(url, model=MODEL_NAME, ca_cert=certificates.ca, headers={"authorization": "Bearer t"}) as client:
        assert client.status().available
        detections = client.detect(image)
    assert detections and servable.last_headers["authorization"] == "Bearer t"
    # CA given as PEM bytes; dialling the IP with the certificate's name.
    ip_url = url.replace("localhost", "127.0.0.1")
    with Detector(ip_url, model=MODEL_NAME, ca_cert=certificates.ca.read_bytes(), server_name="localhost") as client:
        assert client.detect(image) == detections
    # Without the CA the handshake fails: an error, quickly, not a hang.
    with Detector(url, model=MODEL_NAME, retry=RetryPolicy(max_attempts=1), timeout=5) as client:
        with pytest.raises(DetserveClientError):
            client.status()


def test_tls_options_need_a_tls_scheme(certificates):
    with pytest.raises(ValueError, match="grpcs:// or https://"):
        Detector("grpc://localhost:8500", ca_cert=certificates.ca)


# ---------------------------------------------------------------------------------------------------------
# asyncio


def test_async_grpc_many_concurrent_calls(server, servable):
    images = [natural_image(100 + 10 * i, 120 + 10 * i, seed=i) for i in range(8)]
    with detector(server, "grpc") as client:
        expected = [client.detect(image) for image in images]

    async def run():
        async with AsyncDetector(server.grpc_url, model=MODEL_NAME, retry=FAST_RETRY) as client:
            meta = await client.metadata(class_names=True)
            assert meta.class_names == LABEL_MAP
            assert (await client.status()).available
            servable.faults.append(grpc.StatusCode.UNAVAILABLE)  # retried inside one of the calls
            results = await asyncio.gather(*(client.detect(image) for image in images))
            batch = await client.detect_batch(images)
            return results, batch

    results, batch = asyncio.run(run())
    assert results == expected
    for detections, single in zip(batch, expected, strict=True):
        assert_close(detections, single)


def test_async_rest(server):
    image = natural_image(90, 90)
    with detector(server, "rest") as client:
        expected = client.detect(image)

    async def run():
        client = AsyncDetector(server.rest_url, model=MODEL_NAME, retry=FAST_RETRY)
        try:
            await client.wait_until_ready(timeout=5)
            return await asyncio.gather(client.detect(image), client.detect(image))
        finally:
            await client.close()

    assert asyncio.run(run()) == [expected, expected]


# ---------------------------------------------------------------------------------------------------------
# The CLI


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_detect_writes_annotated_pngs_for_the_photo(server, example_image, transport, tmp_path):
    example = example_image
    out = tmp_path / "annotated"
    result = CliRunner().invoke(detserve, ["detect", str(example), "--server", server.url(transport), "--model",
                                           MODEL_NAME, "--out", str(out), "--score-threshold", "0.3"])
    assert result.exit_code == 0, result.output
    annotated = out / "example_mask_detection_image.png"
    assert "example_mask_detection_image.png (1563x778): " in result.output and str(annotated) in result.output
    assert "label" in result.output and "xmin" in result.output
    with Image.open(annotated) as drawn, Image.open(example) as original:
        assert drawn.format == "PNG" and drawn.size == original.size == (1563, 778)
        difference = np.abs(np.asarray(drawn.convert("RGB"), np.int16) - np.asarray(original.convert("RGB"), np.int16))
    assert (difference.max(axis=-1) > 0).mean() > 0.002  # boxes and labels drawn


def test_cli_detect_json(server, example_image, tmp_path):
    example = example_image
    second = tmp_path / "small.png"
    second.write_bytes(png_bytes(natural_image(100, 150)))
    result = CliRunner().invoke(detserve, ["detect", str(example), str(second), "--server", server.grpc_url,
                                           "--model", MODEL_NAME, "--json", "--score-threshold", "0.2",
                                           "--max-detections", "5"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [(r["width"], r["height"]) for r in records] == [(1563, 778), (150, 100)]
    with Detector(server.grpc_url, model=MODEL_NAME) as client:
        expected = client.detect(example, score_threshold=0.2, max_detections=5)
    assert records[0]["detections"] == [d.to_dict() for d in expected]
    assert set(records[0]["detections"][0]) == {"label", "class_id", "score", "box", "box_normalized"}


def test_cli_status_and_metadata(server):
    runner = CliRunner()
    status = runner.invoke(detserve, ["status", "--server", server.rest_url, "--model", MODEL_NAME])
    assert status.exit_code == 0 and "version 1: AVAILABLE" in status.output
    waited = runner.invoke(detserve, ["status", "--server", server.grpc_url, "--model", MODEL_NAME, "--wait", "5",
                                      "--json"])
    assert waited.exit_code == 0 and json.loads(waited.output)["available"] is True
    meta = runner.invoke(detserve, ["metadata", "--server", server.grpc_url, "--model", MODEL_NAME])
    assert meta.exit_code == 0, meta.output
    assert "input size (WxH): 320x320" in meta.output and "1=with_mask" in meta.output
    assert "in  encoded_images: DT_STRING [-1]" in meta.output
    meta_json = json.loads(runner.invoke(detserve, ["metadata", "--server", server.rest_url, "--model", MODEL_NAME,
                                                    "--json"]).output)
    assert meta_json["input_size"] == {"height": 320, "width": 320}
    assert meta_json["class_names"] == {str(k): v for k, v in LABEL_MAP.items()}


@pytest.mark.parametrize(("args", "exit_code", "message"), [
    (["detect", "{image}", "--model", "nope"], 3, "ModelNotFound: Servable not found"),
    (["detect", "{missing}"], 4, "InvalidInput: cannot read image"),
    (["status", "--server", "grpc://127.0.0.1:9", "--timeout", "1"], 5, "ServerUnavailable:"),
    (["status", "--version", "3"], 3, "ModelNotFound:"),
    (["metadata", "--server", "ftp://x"], 2, "unsupported server scheme"),
])
def test_cli_errors_are_one_line_with_an_exit_code(server, tmp_path, args, exit_code, message):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(natural_image(30, 30)))
    args = [a.format(image=image, missing=tmp_path / "missing.jpg") for a in args]
    if "--server" not in args:
        args += ["--server", server.grpc_url]
    if "--model" not in args:
        args += ["--model", MODEL_NAME]
    result = CliRunner().invoke(detserve, args)
    assert result.exit_code == exit_code, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output


def test_cli_detect_runs_without_tensorflow(server, example_image, tmp_path):
    """The command, in a fresh process where importing tensorflow / tensorflow_serving fails."""
    example = example_image
    code = NO_TENSORFLOW + "from detserve.client.cli import main\nsys.exit(main())\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [sys.executable, "-c", code, "detect", str(example), "--server", server.rest_url, "--model", MODEL_NAME,
         "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["width"] == 1563 and Path(record["annotated"]).is_file()


# ---------------------------------------------------------------------------------------------------------
# The real detector: a TFOD2 SSD trained on synthetic shapes (conftest), exported by detserve export.


@pytest.fixture(scope="module")
def exported_version(published_version) -> Path:
    """The trained detector as `detserve export` published it (conftest)."""
    assert published_version.parent.name == MODEL_NAME
    return published_version


@pytest.mark.slow
def test_real_exported_detector_over_both_transports(exported_version, trained_model, example_image):
    """TFOD2's fixed_shape_resizer resizes with TF1 bilinear (half_pixel_centers=False): the client's default
    resize_method reproduces it, so gRPC's client-resized uint8 gives the in-process model's detections."""
    real = servable_for(exported_version)
    server = TestServer(real).start()
    try:
        with Image.open(example_image) as opened:
            image = np.asarray(opened.convert("RGB"))
        size = (image.shape[1], image.shape[0])
        with Detector(server.grpc_url, model=MODEL_NAME) as client:
            meta = client.metadata(class_names=True)
            input_size = (trained_model.image_size, trained_model.image_size)
            assert meta.input_size == input_size
            assert set(meta.class_names.values()) == {"circle", "square", "triangle"}
            grpc_detections = client.detect(image)
        sent = resize_bilinear(image, input_size, "bilinear_legacy")
        assert_identical(grpc_detections, in_process(real, "serving_default", sent[None]), size)
        comparison = compare_detections(in_process(real, "serving_default", image[None]),
                                        as_outputs(grpc_detections))
        assert comparison["ok"], comparison
        with Detector(server.rest_url, model=MODEL_NAME) as client:
            rest_detections = client.detect(example_image)  # the PNG file, as it is
        assert_identical(rest_detections, in_process(real, "serving_default", image[None]), size)
    finally:
        server.stop()
