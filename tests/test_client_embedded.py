"""detserve-client against the embedded server (`detserve serve` in a subprocess), over gRPC and REST.

The fault-injection tests (retries, deadlines) stay on test_client_testserver's stand-in, which can return
any status on demand; here the client meets the real server: same detections as the in-process SavedModel,
metadata, status, errors and the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_client_e2e import assert_identical, in_process, natural_image, rectangle_image
from test_client_testserver import LABEL_MAP, MODEL_NAME, servable_for, tiny_model_dir

from detserve.client import Detector, ModelNotFound
from detserve.client.cli import main as detserve
from detserve.client.images import resize_bilinear

testing = pytest.importorskip("serving_harness", reason="the embedded server (detserve serve) is not here")

TRANSPORTS = ["grpc", "rest"]


@pytest.fixture(scope="module")
def embedded():
    version_dir = tiny_model_dir()  # <root>/detector/1: <root> is a model repository
    server = testing.ServerProcess(["--repository", str(version_dir.parent.parent), "--model-name", MODEL_NAME,
                                    "--no-enable-model-warmup", "--file-system-poll-wait-seconds", "0"])
    server.start()
    try:
        server.wait_ready(MODEL_NAME, timeout=180)
        yield server
    finally:
        server.terminate()


def url(server, transport: str) -> str:
    return f"grpc://{server.grpc_target}" if transport == "grpc" else server.rest_url


@pytest.fixture(scope="module")
def servable():
    return servable_for(tiny_model_dir())  # the same SavedModel, in this process


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata_and_status_from_the_embedded_server(embedded, transport):
    with Detector(url(embedded, transport), model=MODEL_NAME) as client:
        assert client.wait_until_ready(timeout=30).available_versions == [1]
        meta = client.metadata(class_names=True)
    assert meta.input_size == (320, 320) and meta.class_names == LABEL_MAP
    assert (meta.image_signature.name, meta.bytes_signature.name) == ("serving_default", "serving_bytes")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_detections_equal_the_in_process_model(embedded, servable, transport, tmp_path):
    image = natural_image(777, 1031, seed=7)
    with Detector(url(embedded, transport), model=MODEL_NAME, encoding="raw") as client:
        raw = client.detect(image)
    sent = resize_bilinear(image, (320, 320), "bilinear_legacy")
    assert_identical(raw, in_process(servable, "serving_default", sent[None]), (1031, 777))
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    with Detector(url(embedded, transport), model=MODEL_NAME, encoding="jpeg") as client:
        encoded = client.detect(path)  # the PNG as it is, decoded and resized by the server's graph
    assert_identical(encoded, in_process(servable, "serving_default", image[None]), (1031, 777))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_boxes_map_back_through_the_embedded_server(embedded, transport):
    image = rectangle_image(1600, 960, (400, 240, 1200, 720))
    with Detector(url(embedded, transport), model=MODEL_NAME) as client:
        (top, *_) = client.detect(image, score_threshold=0.9)
    assert tuple(top.box) == (400.0, 240.0, 1200.0, 720.0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_from_the_embedded_server(embedded, transport):
    with Detector(url(embedded, transport), model="nope") as client:
        with pytest.raises(ModelNotFound) as info:
            client.detect(natural_image(20, 20))
    assert "nope" in info.value.message


def test_cli_against_the_embedded_server(embedded, example_image, tmp_path):
    example = example_image
    result = CliRunner().invoke(detserve, ["detect", str(example), "--server", embedded.rest_url, "--model",
                                           MODEL_NAME, "--out", str(tmp_path), "--json", "--score-threshold", "0.3"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.output)
    with Image.open(record["annotated"]) as drawn:
        assert drawn.size == (1563, 778)
    with Detector(f"grpc://{embedded.grpc_target}", model=MODEL_NAME) as client:
        expected = client.detect(example, score_threshold=0.3)
    # REST (the PNG file, decoded in the graph) and gRPC (client-resized uint8): same detections within
    # the uint8 rounding of the resize.
    assert [d["label"] for d in record["detections"]][:3] == [d.label for d in expected][:3]
    assert np.allclose([d["score"] for d in record["detections"]][:3], [d.score for d in expected][:3], atol=2e-3)
