"""detserve.export without a model: version numbering, atomic publish, --keep, warmup batch sizes, matching."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from detserve.export import repository as repo
from detserve.export.cli import export as export_command
from detserve.export.exporter import (
    BuiltModel,
    ExportError,
    _export,
    default_batching_configs,
    default_serving_configs,
)
from detserve.export.verify import compare_detections
from detserve.export.warmup import warmup_batch_sizes
from k8s import rollout

ROOT = Path(__file__).resolve().parents[1]


def make_versions(model_dir: Path, *names: str) -> None:
    for name in names:
        (model_dir / name).mkdir(parents=True)
        (model_dir / name / "saved_model.pb").write_bytes(b"x")


def test_versions_are_the_integer_directories(tmp_path):
    assert repo.list_versions(tmp_path / "missing") == [] and repo.next_version(tmp_path / "missing") == 1
    make_versions(tmp_path, "1", "3", "10", ".tmp-export-1-ab", "latest", "0")
    (tmp_path / "11").write_text("a file, not a version")
    # TF Serving loads 0 too (any int64 name): the repository lists what the server would see.
    assert repo.list_versions(tmp_path) == [0, 1, 3, 10]
    assert repo.next_version(tmp_path) == 11
    only_zero = tmp_path / "only-zero"
    make_versions(only_zero, "0")
    assert repo.next_version(only_zero) == 1  # exports write positive versions


def test_prune_removes_versions_as_spelled_on_disk(tmp_path):
    make_versions(tmp_path, "007", "8", "9")
    result = repo.prune(tmp_path, keep=2)
    assert result.removed == [7] and sorted(p.name for p in tmp_path.iterdir()) == ["8", "9"]


def test_resized_copies_skip_images_already_at_the_input_size():
    import numpy as np

    from detserve.export.images import with_resized_copies

    images = [np.zeros((32, 32, 3), np.uint8), np.zeros((20, 40, 3), np.uint8)]
    copies = with_resized_copies(images, (32, 32))
    assert [c.shape for c in copies] == [(32, 32, 3), (20, 40, 3), (32, 32, 3)]


def test_an_existing_version_is_refused(tmp_path):
    make_versions(tmp_path, "02")
    with pytest.raises(repo.RepositoryError, match="version 2 already exists"):
        repo.check_version_free(tmp_path, 2)  # TF Serving reads "02" as version 2
    with pytest.raises(repo.RepositoryError, match="positive"):
        repo.check_version_free(tmp_path, 0)
    repo.check_version_free(tmp_path, 3)


def test_publish_renames_the_staged_directory_into_the_next_version(tmp_path):
    make_versions(tmp_path, "1", "4")
    with repo.staging_dir(tmp_path) as staged:
        assert staged.name.startswith(repo.TEMP_PREFIX) and not staged.exists()
        make_versions(staged, "variables")
        version, path = repo.publish(staged, tmp_path)
    assert (version, path) == (5, tmp_path / "5")
    assert (path / "variables" / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "4", "5"]


def test_publish_never_overwrites_an_explicit_version(tmp_path):
    make_versions(tmp_path, "2")
    with repo.staging_dir(tmp_path) as staged:
        make_versions(staged, "variables")
        with pytest.raises(repo.RepositoryError, match="already exists"):
            repo.publish(staged, tmp_path, version=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]  # the staged copy is gone too
    assert (tmp_path / "2" / "saved_model.pb").read_bytes() == b"x"


def failing_builder(staged: Path) -> BuiltModel:
    """Half a SavedModel, then a crash."""
    (staged / "variables").mkdir(parents=True)
    (staged / "saved_model.pb").write_bytes(b"partial")
    raise RuntimeError("crash while saving")


def test_a_failed_export_leaves_no_partial_version(tmp_path):
    make_versions(tmp_path / "detector", "1")
    with pytest.raises(RuntimeError, match="crash while saving"):
        _export(failing_builder, tmp_path, "detector", None, None, [], [], None)
    assert [p.name for p in (tmp_path / "detector").iterdir()] == ["1"]


def test_stale_staging_directories_of_dead_exports_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{repo.TEMP_PREFIX}{int(dead.stdout)}-0123abcd"
    alive = tmp_path / f"{repo.TEMP_PREFIX}{os.getpid()}-0123abcd"
    stale.mkdir()
    alive.mkdir()
    assert repo.remove_stale_temp_dirs(tmp_path) == [stale]
    assert alive.exists() and not stale.exists()


SERVING_CONFIG = """
model_config_list {
  config { name: "detector" base_path: "/models/detector" model_platform: "tensorflow"
           model_version_policy { specific { versions: 2 versions: 3 } }
           version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 } }
  config { name: "other" base_path: "/models/other" model_platform: "tensorflow"
           model_version_policy { specific { versions: 1 } } }
}
"""


def test_keep_prunes_old_versions_but_not_pinned_or_labelled_ones(tmp_path):
    (tmp_path / "models.config").write_text(SERVING_CONFIG)
    references = repo.serving_references([tmp_path / "models.config"], "detector")
    assert references.protected == {2, 3}
    assert "label 'stable'" in " ".join(references.pinned[2])
    make_versions(tmp_path / "detector", "1", "2", "3", "4", "5", "6")
    result = repo.prune(tmp_path / "detector", keep=2, references=references)
    assert result.removed == [1, 4]
    assert result.kept == [2, 3, 5, 6]
    assert set(result.protected) == {2, 3}
    assert not [p for p in (tmp_path / "detector").iterdir() if p.name.startswith(".")]
    with pytest.raises(repo.RepositoryError, match="at least 1"):
        repo.prune(tmp_path / "detector", keep=0)


def test_the_repository_serving_configs_protect_the_canary_versions():
    configs = default_serving_configs()
    assert {p.name for p in configs} >= {"models.config", "models.canary.config"}
    references = repo.serving_references(configs, "detector")
    assert references.latest_num_versions == 2  # models.config: latest { num_versions: 2 }
    # models.release.config pins the release; models.canary.config the candidate, as the model detector-canary.
    shipped = rollout.read()
    assert references.protected == {shipped.stable, shipped.canary}


def test_an_unparsable_serving_config_stops_pruning(tmp_path):
    (tmp_path / "bad.config").write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(repo.RepositoryError, match="bad.config"):
        repo.serving_references([tmp_path / "bad.config"], "detector")


def test_warmup_batch_sizes_cover_every_config_up_to_the_smallest_maximum(tmp_path):
    sizes = warmup_batch_sizes(default_batching_configs())
    # CPU pads to 1-8, 12, 16, 24, 32; GPU to powers of two up to 64. Batch 64 would be rejected by a CPU server
    # and fail the version's load; a GPU server pads a warmup batch of 3 to 4, which is harmless.
    assert sizes.sizes == [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32]
    assert len(sizes.sources) == 2
    # ... and the GPU shape left out is named (tests/test_warmup_coverage.py covers per-server exports).
    assert sizes.unwarmed == {str(default_batching_configs()[1]): [64]} and len(sizes.notes) == 1

    gpu = tmp_path / "gpu.config"
    gpu.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: [1, 4, 16]\n")
    cpu = tmp_path / "cpu.config"
    cpu.write_text("max_batch_size { value: 12 }\nallowed_batch_sizes: [1, 2, 3, 12]\n")
    assert warmup_batch_sizes([gpu, cpu]).sizes == [1, 2, 3, 4, 12]

    small = tmp_path / "small.config"
    small.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1 }\nallowed_batch_sizes: [2, 4, 8, 16]\n")
    result = warmup_batch_sizes([small, tmp_path / "missing.config"])
    assert result.sizes == [2, 4, 8]
    assert "missing.config not found" in result.notes[0]
    assert warmup_batch_sizes([]).sizes == [1, 2, 4, 8, 16, 32]


def detections(rows):
    """[(class, score, box)] -> a batch-of-one output dict padded to 6 slots."""
    boxes = np.zeros((1, 6, 4), np.float32)
    scores = np.zeros((1, 6), np.float32)
    classes = np.ones((1, 6), np.float32)
    for i, (cls, score, box) in enumerate(rows):
        boxes[0, i], scores[0, i], classes[0, i] = box, score, cls
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": np.array([len(rows)], np.float32)}


def test_detections_are_compared_as_sets_within_tolerance():
    a = detections([(1, 0.9, [0.1, 0.1, 0.5, 0.5]), (2, 0.6, [0.2, 0.2, 0.4, 0.4]), (2, 0.6, [0.5, 0.5, 0.9, 0.9])])
    # The two 0.6 detections swapped (an NMS near-tie) and tiny float noise: the same answer.
    b = detections([(1, 0.9001, [0.1, 0.1, 0.5, 0.5001]), (2, 0.6, [0.5, 0.5, 0.9, 0.9]), (2, 0.6, [0.2, 0.2, 0.4, 0.4])])
    result = compare_detections(a, b)
    assert result["ok"] and result["compared"] == 3
    assert result["max_score_diff"] == pytest.approx(1e-4, abs=1e-6)

    moved = detections([(1, 0.9, [0.1, 0.1, 0.5, 0.6]), (2, 0.6, [0.2, 0.2, 0.4, 0.4]), (2, 0.6, [0.5, 0.5, 0.9, 0.9])])
    assert not compare_detections(a, moved)["ok"]
    other_class = detections([(2, 0.9, [0.1, 0.1, 0.5, 0.5]), (2, 0.6, [0.2, 0.2, 0.4, 0.4]), (2, 0.6, [0.5, 0.5, 0.9, 0.9])])
    assert "class 1" in compare_detections(a, other_class)["problem"]
    extra = detections([(1, 0.9, [0.1, 0.1, 0.5, 0.5]), (2, 0.6, [0.2, 0.2, 0.4, 0.4]), (2, 0.6, [0.5, 0.5, 0.9, 0.9]),
                        (1, 0.8, [0.0, 0.0, 0.2, 0.2])])
    assert "exported detection" in compare_detections(a, extra)["problem"]


@pytest.mark.parametrize("args, message", [
    (["--model-dir", "{tmp}/missing"], "model directory not found: {tmp}/missing"),
    (["--model-dir", "{tmp}"], "pipeline config not found: {tmp}/pipeline.config"),
    (["--from-saved-model", "{tmp}/nothing"], "SavedModel not found: {tmp}/nothing"),
    (["--from-saved-model", "{tmp}"], "no SavedModel at {tmp}"),
    (["--model-dir", "{tmp}", "--label-map", "{tmp}/labels.pbtxt"], "label map not found: {tmp}/labels.pbtxt"),
    (["--model-dir", "{tmp}", "--serving-config", "{tmp}/models.config"], "config not found: {tmp}/models.config"),
])
def test_cli_errors_are_one_line_naming_the_path(tmp_path, args, message):
    result = CliRunner().invoke(export_command, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0
    assert message.format(tmp=tmp_path) in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_an_existing_version_before_building(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "pipeline.config").write_text("model { ssd { num_classes: 1 } }\n")
    make_versions(tmp_path / "models" / "detector", "3")
    result = CliRunner().invoke(export_command, ["--model-dir", str(tmp_path / "model"), "--repository",
                                                 str(tmp_path / "models"), "--version", "3"])
    assert result.exit_code != 0
    assert f"version 3 already exists in {tmp_path / 'models' / 'detector'}" in result.output


def test_export_is_a_detserve_subcommand():
    from detserve.client.cli import main

    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model-dir", "--repository", "--name", "--version", "--keep", "--from-saved-model", "--label-map",
                   "--serving-config"):
        assert option in result.output


def test_invalid_model_name_is_refused(tmp_path):
    with pytest.raises(ExportError, match="plain directory name"):
        _export(failing_builder, tmp_path, "../up", None, None, [], [], None)


def test_the_pipeline_s_nms_settings_reach_the_tolerance(tmp_path):
    """pipeline.config's batch_non_max_suppression -> the arguments measure_tolerance takes."""
    from detserve.export.parity import measure_tolerance
    from detserve.export.pipeline import NO_NMS, read_pipeline_config

    config = tmp_path / "pipeline.config"
    config.write_text("model { ssd { num_classes: 2 post_processing { batch_non_max_suppression {"
                      " score_threshold: 0.3 iou_threshold: 0.5 use_class_agnostic_nms: true } } } }")
    nms = read_pipeline_config(config).nms
    assert nms == pytest.approx((0.5, True, 0.3))
    tolerance = measure_tolerance(lambda batch: {}, [], [], *nms)
    assert (tolerance.nms_iou_threshold, tolerance.class_agnostic_nms) == (pytest.approx(0.5), True)
    assert tolerance.nms_score_threshold == pytest.approx(0.3)
    assert NO_NMS == (None, False, 0.0)  # what an adopted SavedModel without pipeline.config gets
