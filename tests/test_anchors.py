"""Anchor scales fitted to the training boxes (training/anchors.py) and carried into pipeline.config."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from detserve.client.cli import main as detserve
from detserve.training.anchors import (
    MIN_ANCHOR_SCALE,
    ZOO_ANCHOR_SCALE,
    fit_anchor_scale,
    fit_anchor_scale_to_split,
)
from detserve.training.data.tfrecord import read_boxes, split_pattern
from detserve.training.pipeline_config import TrainingOptions, load_pipeline_config, render_pipeline_config
from detserve.training.run import TrainingRequest, prepare_run


def _square_boxes(side: float, count: int = 50) -> np.ndarray:
    """``count`` normalised boxes of ``side`` at the image's top left."""
    return np.tile([0.0, 0.0, side, side], (count, 1))


@pytest.mark.parametrize(("side_pixels", "scale"), [
    (6.0, MIN_ANCHOR_SCALE),     # tiny objects: no smaller than two strides
    (10.0, MIN_ANCHOR_SCALE),    # face-mask-853 at 320 (its 10th percentile)
    (21.0, 2.5),                 # 2.6 strides, rounded to the half
    (28.0, 3.5),
    (60.0, ZOO_ANCHOR_SCALE),    # large objects: the zoo's anchors
])
def test_the_smallest_anchor_is_fitted_to_the_small_boxes(side_pixels: float, scale: float) -> None:
    fit = fit_anchor_scale(_square_boxes(side_pixels / 320), 320)
    assert fit.scale == scale
    assert fit.side_pixels == pytest.approx(side_pixels)
    assert fit.boxes == 50


def test_the_fit_follows_the_input_size_and_a_low_percentile() -> None:
    # 90 large boxes and 10 small ones: the 10th percentile is still among the large ones.
    boxes = np.concatenate([_square_boxes(0.02, 9), _square_boxes(0.25, 91)])
    assert fit_anchor_scale(boxes, 320).scale == ZOO_ANCHOR_SCALE
    small = _square_boxes(0.06)  # 19 px at 320, 38 px at 640
    assert fit_anchor_scale(small, 320).scale == 2.5
    assert fit_anchor_scale(small, 640).scale == ZOO_ANCHOR_SCALE
    # Elongated boxes are fitted by their geometric side, as the anchors' area is.
    assert fit_anchor_scale(np.array([[0.1, 0.2, 0.125, 0.3]] * 20), 320).side_pixels == pytest.approx(16.0)


def test_no_boxes_keep_the_zoo_scale() -> None:
    fit = fit_anchor_scale(np.zeros((0, 4)), 320)
    assert (fit.scale, fit.boxes) == (ZOO_ANCHOR_SCALE, 0)
    assert "no boxes" in fit.describe()


def test_box_sizes_are_read_from_the_records_as_the_annotations_give_them(synthetic_data: Path) -> None:
    boxes = read_boxes(split_pattern(synthetic_data, "train"))
    expected = []
    for xml in sorted((synthetic_data.parent / "voc" / "annotations").glob("*.xml")):
        root = ET.parse(xml).getroot()
        width, height = (float(root.find(f"size/{key}").text) for key in ("width", "height"))
        for box in root.iter("bndbox"):
            xmin, ymin, xmax, ymax = (float(box.find(key).text) for key in ("xmin", "ymin", "xmax", "ymax"))
            expected.append((ymin / height, xmin / width, ymax / height, xmax / width))
    assert boxes.shape[1] == 4 and 0 < len(boxes) < len(expected)  # train is a part of the whole set
    # Every train box is one of the annotated boxes (to float32 precision).
    expected = np.asarray(expected)
    distances = np.abs(boxes[:, None, :] - expected[None, :, :]).max(axis=-1).min(axis=1)
    assert distances.max() < 1e-5


def test_prepare_run_writes_the_fitted_scale_and_says_so(synthetic_data: Path, tmp_path: Path) -> None:
    expected = fit_anchor_scale_to_split(synthetic_data, "train", 192)
    messages: list[str] = []
    config = prepare_run(TrainingRequest(data_dir=synthetic_data, model_dir=tmp_path / "run", image_size=192),
                         echo=messages.append)
    written = load_pipeline_config(tmp_path / "run" / "pipeline.config")
    for proto in (config, written):
        assert proto.model.ssd.anchor_generator.multiscale_anchor_generator.anchor_scale == expected.scale
    assert any(message.startswith(f"anchor scale {expected.scale:g} fitted to {expected.boxes} training boxes")
               for message in messages)


def test_an_explicit_scale_wins_and_a_detection_checkpoint_keeps_the_zoos(synthetic_data: Path) -> None:
    assert TrainingRequest(data_dir=synthetic_data, model_dir=Path("x"), anchor_scale=3.0).options().anchor_scale == 3.0
    zoo_start = TrainingRequest(data_dir=synthetic_data, model_dir=Path("x"), fine_tune_checkpoint="/zoo/ckpt-0")
    assert zoo_start.options().anchor_scale == ZOO_ANCHOR_SCALE
    text = render_pipeline_config(TrainingOptions(data_dir=synthetic_data, anchor_scale=1.5, augmentations=[]))
    assert "anchor_scale: 1.5" in text


def test_a_bad_scale_is_refused_by_name(synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="anchor_scale must be in"):
        TrainingOptions(data_dir=synthetic_data, anchor_scale=0.0).validate()
    result = CliRunner().invoke(detserve, ["train", "--data", str(synthetic_data), "--model-dir", str(tmp_path / "m"),
                                       "--anchor-scale", "0"])
    assert result.exit_code == 2 and "--anchor-scale" in result.output
    assert not (tmp_path / "m").exists()
