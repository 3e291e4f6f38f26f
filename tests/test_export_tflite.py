"""`detserve export --format tflite`: the session's trained detector as a float16 and an int8 .tflite, scored by the
same evaluator as the SavedModel it was also published as (conftest.published_version), in the same run.

One conversion per format (module fixtures, through the CLI). The float16 file must detect what the SavedModel
detects: its COCO metrics on the test split within METRIC_TOLERANCE of the SavedModel's, and each image's best
score within SCORE_TOLERANCE. Measured (synthetic 200-step model, 6 test images, Intel Xeon, 2 threads): mAP 0.0712
vs 0.0732, mAP@.50 0.2713 vs 0.2785, best scores within 0.001. What differs is TFLite's fast NMS (one class per
box) against TFOD2's per-class NMS, not the arithmetic; the tolerances leave room for another CPU's XNNPACK
kernels (AVX2 vs AVX-512 rounding) flipping a near tie.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import detserve.training.tfod_compat  # noqa: F401  (before TensorFlow, so TFOD2 works in this process)

# isort: split
import numpy as np
import pytest
from click.testing import CliRunner

from detserve.export.cli import export as export_command
from detserve.export.errors import ExportError
from detserve.export.tflite import export_tflite
from detserve.training.data.label_map import read_label_map
from detserve.training.data.tfrecord import read_examples, split_pattern
from detserve.training.evaluation.cli import evaluate as evaluate_command
from detserve.training.evaluation.evaluate import evaluate
from detserve.training.evaluation.predictors import saved_model_predictor
from detserve.training.evaluation.tflite_predictor import (
    TFLiteModelError,
    load_interpreter,
    tflite_predictor,
)

MAP, MAP50 = "DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU"
METRIC_TOLERANCE = 0.03
SCORE_TOLERANCE = 0.01
INT8_TOLERANCE = 0.1  # int8 rounds activations too (measured: mAP@.50 0.2691 vs the SavedModel's 0.2785)
CALIBRATION_IMAGES = 10  # enough for a real calibration, quick on 2 cores


@dataclass
class Exported:
    path: Path
    output: str
    directory: Path


def _export(trained_model, directory: Path, *options: str) -> Exported:
    result = CliRunner().invoke(export_command, [
        "--format", "tflite", "--model-dir", str(trained_model.model_dir), "--tflite-dir", str(directory),
        "--name", "detector", *options])
    assert result.exit_code == 0, result.output
    quantize = options[options.index("--quantize") + 1] if "--quantize" in options else "float16"
    return Exported(directory / f"detector-{quantize}.tflite", result.output, directory)


@pytest.fixture(scope="module")
def fp16(trained_model, tmp_path_factory) -> Exported:
    return _export(trained_model, tmp_path_factory.mktemp("tflite"))  # float16 is the default


@pytest.fixture(scope="module")
def int8(trained_model, tmp_path_factory) -> Exported:
    return _export(trained_model, tmp_path_factory.mktemp("tflite-int8"), "--quantize", "int8",
                   "--calibration-data", str(trained_model.data_dir), "--calibration-images", str(CALIBRATION_IMAGES))


@pytest.fixture(scope="module")
def labels(trained_model) -> dict[int, str]:
    return read_label_map(trained_model.data_dir / "label_map.pbtxt")


def _evaluate(predictor, trained_model, labels, out: Path) -> dict:
    return evaluate(predictor, trained_model.data_dir, labels, out, split="test", grid_images=0, progress=False)


@pytest.fixture(scope="module")
def saved_model_metrics(published_version, trained_model, labels, tmp_path_factory) -> dict:
    return _evaluate(saved_model_predictor(published_version), trained_model, labels, tmp_path_factory.mktemp("sm"))


def _dtypes(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tensor in load_interpreter(path).get_tensor_details():
        name = np.dtype(tensor["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.slow
def test_fp16_export_writes_the_tflite_its_sidecar_and_the_label_map(fp16, trained_model):
    assert fp16.path.is_file() and f"exported {fp16.path}" in fp16.output
    sidecar = json.loads(fp16.path.with_suffix(".json").read_text())
    size = trained_model.image_size
    assert sidecar["input_size"] == [size, size] and sidecar["quantize"] == "float16"
    # MobileNet's preprocessing, (2 / 255) x - 1, measured on the model.
    assert sidecar["mean"] == pytest.approx(127.5) and sidecar["std"] == pytest.approx(127.5)
    assert sidecar["max_detections"] == 100 and sidecar["calibration"] is None
    label_map = fp16.directory / sidecar["label_map"]
    assert label_map.name == "detector-label_map.pbtxt"
    assert read_label_map(label_map) == read_label_map(trained_model.data_dir / "label_map.pbtxt")
    assert not [path for path in fp16.directory.iterdir() if path.name.startswith(".")]  # no partial files left
    # float32 input of the model's size; float16 weights, nothing int8.
    (detail,) = load_interpreter(fp16.path).get_input_details()
    assert detail["shape"].tolist() == [1, size, size, 3] and detail["dtype"] == np.float32
    dtypes = _dtypes(fp16.path)
    assert dtypes.get("float16", 0) > 20 and "int8" not in dtypes


@pytest.mark.slow
def test_fp16_detects_what_the_saved_model_detects(fp16, published_version, trained_model, labels,
                                                   saved_model_metrics, tmp_path):
    metrics = _evaluate(tflite_predictor(fp16.path), trained_model, labels, tmp_path)
    assert saved_model_metrics[MAP50] > 0.1  # a model that finds something: the comparison can fail
    for key in (MAP, MAP50):
        assert abs(metrics[key] - saved_model_metrics[key]) <= METRIC_TOLERANCE, (key, metrics[key],
                                                                                  saved_model_metrics[key])
    saved_model, tflite = saved_model_predictor(published_version), tflite_predictor(fp16.path)
    for example in read_examples(split_pattern(trained_model.data_dir, "test")):
        expected, got = saved_model(example.image[np.newaxis]), tflite(example.image[np.newaxis])
        assert abs(got["detection_scores"].max() - expected["detection_scores"].max()) <= SCORE_TOLERANCE
        assert got["detection_boxes"].min() >= 0.0 and got["detection_boxes"].max() <= 1.0
        assert set(np.unique(got["detection_classes"])) <= set(labels)


@pytest.mark.slow
def test_int8_export_has_int8_weights_and_still_detects(int8, fp16, trained_model, labels, saved_model_metrics,
                                                        tmp_path):
    sidecar = json.loads(int8.path.with_suffix(".json").read_text())
    assert sidecar["quantize"] == "int8"
    assert sidecar["calibration"] == (f"{CALIBRATION_IMAGES} images of "
                                      f"{split_pattern(trained_model.data_dir, 'train')}")
    dtypes = _dtypes(int8.path)
    assert dtypes.get("int8", 0) > 50, dtypes
    assert int8.path.stat().st_size < fp16.path.stat().st_size
    assert f"calibration {CALIBRATION_IMAGES} images" in int8.output
    metrics = _evaluate(tflite_predictor(int8.path), trained_model, labels, tmp_path)
    assert not math.isnan(metrics[MAP50]) and metrics[MAP50] > 0.0
    # Calibrated on inputs prepared like the predictor's: a wrong normalisation would cost far more than this.
    assert abs(metrics[MAP50] - saved_model_metrics[MAP50]) <= INT8_TOLERANCE, (metrics[MAP50],
                                                                               saved_model_metrics[MAP50])


@pytest.mark.slow
def test_evaluate_cli_scores_a_tflite_like_the_python_api(fp16, trained_model, labels, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(evaluate_command, ["--model", str(fp16.path), "--data", str(trained_model.data_dir),
                                                   "--split", "test", "--out", str(out), "--grid-images", "0"])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "metrics.json").read_text())
    assert document["model"]["kind"] == "tflite"
    expected = _evaluate(tflite_predictor(fp16.path), trained_model, labels, tmp_path / "api")
    assert document["metrics"][MAP50] == pytest.approx(expected[MAP50])


@pytest.mark.slow
def test_a_tflite_without_its_sidecar_is_refused_naming_the_file(fp16, tmp_path):
    lonely = tmp_path / "model.tflite"
    shutil.copy(fp16.path, lonely)
    with pytest.raises(TFLiteModelError, match=r"model\.json not found"):
        tflite_predictor(lonely)


@pytest.mark.parametrize(("options", "message"), [
    (["--quantize", "int8"], "only with --format tflite: --quantize"),
    (["--tflite-dir", "out", "--calibration-images", "5"], "only with --format tflite: --tflite-dir, --calibration-images"),
    (["--format", "tflite", "--keep", "2", "--version", "3"], "not a repository version): --version, --keep"),
    (["--format", "tflite", "--min-map", "0.5", "--data", "."], "not with --format tflite (it writes a file from a checkpoint, not a repository version): --min-map, --data"),
    (["--format", "tflite", "--warmup-batches", "largest"], "not a repository version): --warmup-batches"),
    (["--warmup-batches", "some"], "'some' is not one of 'all', 'largest', 'smallest'"),
    (["--format", "tflite", "--quantize", "int4"], "'int4' is not one of 'float16', 'int8'"),
    (["--format", "tflite", "--calibration-data", "."], "--calibration-data calibrates --quantize int8"),
    (["--format", "onnx"], "'onnx' is not one of 'saved_model', 'tflite'"),
])
def test_bad_options_are_refused_before_anything_is_built(options, message, tmp_path):
    result = CliRunner().invoke(export_command, [*options, "--model-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_int8_without_calibration_data_names_the_missing_pattern(trained_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match=r"int8 calibration data not found: no TFRecord matches .*empty/train-"):
        export_tflite(trained_model.model_dir / "pipeline.config", trained_model.model_dir, tmp_path / "out",
                      quantize="int8", calibration_data=empty)
    with pytest.raises(ExportError, match=r"--quantize 'int4' is not supported: use float16 or int8"):
        export_tflite(trained_model.model_dir / "pipeline.config", quantize="int4")
    assert not (tmp_path / "out").exists()
