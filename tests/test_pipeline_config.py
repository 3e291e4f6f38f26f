"""pipeline.config generation from the zoo template."""

from __future__ import annotations

from pathlib import Path

import pytest

from detserve.training.data.label_map import write_label_map
from detserve.training.pipeline_config import (
    TrainingOptions,
    load_pipeline_config,
    render_pipeline_config,
    save_pipeline_config,
    set_step_budget,
    write_pipeline_config,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_label_map(["mask", "no_mask", "hat"], tmp_path / "label_map.pbtxt")
    return tmp_path


def test_rendered_config_parses_and_carries_the_options(data_dir: Path, tmp_path: Path) -> None:
    options = TrainingOptions(
        data_dir=data_dir, num_steps=1234, batch_size=6, learning_rate=0.05, warmup_steps=100,
        warmup_learning_rate=0.01, depth_multiplier=0.35, augmentations=["flip", "brightness"],
        fine_tune_checkpoint="/ckpt/backbone-1", fine_tune_checkpoint_type="classification", batch_norm_decay=0.9,
    )
    config = load_pipeline_config(write_pipeline_config(options, tmp_path / "run" / "pipeline.config"))

    ssd = config.model.ssd
    assert ssd.num_classes == 3  # from the label map
    assert ssd.feature_extractor.type == "ssd_mobilenet_v2_fpn_keras"
    assert ssd.feature_extractor.depth_multiplier == pytest.approx(0.35)
    assert ssd.feature_extractor.min_depth == 8
    assert ssd.image_resizer.fixed_shape_resizer.height == 320
    assert ssd.feature_extractor.conv_hyperparams.batch_norm.decay == pytest.approx(0.9)
    assert ssd.box_predictor.weight_shared_convolutional_box_predictor.conv_hyperparams.batch_norm.decay == pytest.approx(0.9)
    train = config.train_config
    assert (train.batch_size, train.num_steps) == (6, 1234)
    cosine = train.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert (cosine.learning_rate_base, cosine.total_steps, cosine.warmup_steps) == (pytest.approx(0.05), 1234, 100)
    assert [o.WhichOneof("preprocessing_step") for o in train.data_augmentation_options] == [
        "random_horizontal_flip", "random_adjust_brightness"]
    assert train.fine_tune_checkpoint == "/ckpt/backbone-1"
    assert train.fine_tune_checkpoint_type == "classification"
    assert config.train_input_reader.tf_record_input_reader.input_path[0] == str(data_dir.resolve() / "train-?????-of-?????.tfrecord")
    assert config.eval_input_reader[0].tf_record_input_reader.input_path[0].endswith("test-?????-of-?????.tfrecord")
    assert config.eval_input_reader[0].label_map_path == str(data_dir.resolve() / "label_map.pbtxt")


def test_from_scratch_has_no_fine_tune_checkpoint(data_dir: Path) -> None:
    text = render_pipeline_config(TrainingOptions(data_dir=data_dir, augmentations=[]))
    assert "fine_tune_checkpoint" not in text
    assert "data_augmentation_options" not in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_steps": 0}, "num_steps must be >= 1"),
        ({"warmup_steps": 5000}, "warmup_steps must be in [0, num_steps)"),
        ({"image_size": 300}, "image_size must be a multiple of 32"),
        ({"augmentations": ["flip", "mosaic"]}, "unknown augmentation(s) ['mosaic']"),
        ({"fine_tune_checkpoint_type": "full"}, "fine_tune_checkpoint_type must be one of"),
        ({"warmup_learning_rate": 1.0}, "warmup_learning_rate 1.0 must not exceed"),
        ({"batch_norm_decay": 1.0}, "batch_norm_decay must be in (0, 1)"),
    ],
)
def test_bad_options_are_named(data_dir: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        render_pipeline_config(TrainingOptions(data_dir=data_dir, **change))
    assert message in str(error.value)


def test_missing_label_map_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="detserve data"):
        render_pipeline_config(TrainingOptions(data_dir=tmp_path))


def test_derived_defaults_follow_the_other_options(data_dir: Path) -> None:
    scratch = TrainingOptions(data_dir=data_dir, num_steps=1000, learning_rate=0.06)
    assert (scratch.resolved_warmup_steps(), scratch.resolved_warmup_learning_rate()) == (100, 0.02)
    assert TrainingOptions(data_dir=data_dir, num_steps=5000).resolved_warmup_steps() == 300
    assert scratch.resolved_batch_norm_decay() == 0.9
    assert TrainingOptions(data_dir=data_dir, fine_tune_checkpoint="/ckpt/x-1").resolved_batch_norm_decay() == 0.997


def test_a_resumed_run_stretches_the_schedule_and_keeps_the_rest(data_dir: Path, tmp_path: Path) -> None:
    path = write_pipeline_config(TrainingOptions(data_dir=data_dir, num_steps=100), tmp_path / "pipeline.config")
    config = load_pipeline_config(path)
    set_step_budget(config, 300)
    save_pipeline_config(config, path)

    resumed = load_pipeline_config(path)
    assert resumed.train_config.num_steps == 300
    cosine = resumed.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert (cosine.total_steps, cosine.warmup_steps) == (300, 10)  # the warm-up of the 100-step run stays
    assert resumed.model == load_pipeline_config(write_pipeline_config(
        TrainingOptions(data_dir=data_dir, num_steps=300), tmp_path / "fresh" / "pipeline.config")).model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "label_map.pbtxt", "pipeline.config"]  # no staging left


def test_a_run_without_training_records_is_refused_naming_the_pattern(data_dir: Path, tmp_path: Path) -> None:
    # A test-only conversion (detserve data --split 0,0,1) has a label map and test shards, but nothing to train on.
    from detserve.training.run import TrainingRequest, prepare_run

    (data_dir / "test-00000-of-00001.tfrecord").write_bytes(b"")
    request = TrainingRequest(data_dir=data_dir, model_dir=tmp_path / "run", steps=10)
    with pytest.raises(FileNotFoundError, match=r"no training TFRecords: nothing matches .*train"):
        prepare_run(request, echo=None)
    assert not (tmp_path / "run" / "pipeline.config").exists()
