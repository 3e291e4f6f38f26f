"""The publishing quality gate (``detserve export --min-map X --data DIR``): a candidate is evaluated after its
verification and refused below the floor, leaving no version and no staging directory.

One real export through the CLI (build, fresh-process verification, gate, publish) shows the gate passing; the
other cases reuse the session's published version as the built candidate (copied into the staging directory,
verification stubbed), so the gate's evaluation is real but nothing is built or trained again. The known metrics
are the session checkpoint's on the test split (conftest.trained_model_metrics): an export evaluates within 0.005
of them (tests/test_export.py), so floors either side of them must pass and fail.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from detserve.client.contract import label_map_file
from detserve.export import exporter, gate
from detserve.export.cli import export as export_command
from detserve.export.summary import format_summary
from detserve.training.data.label_map import parse_label_map, write_label_map
from detserve.training.data.tfrecord import read_examples, split_pattern

pytestmark = pytest.mark.slow

MAP, MAP50 = gate.MAP, gate.MAP50
QUALITY_LINE = re.compile(r"^  quality     mAP (\d\.\d{4}), mAP@\.50 (\d\.\d{4}) on (\S+)/(\w+) \((\d+) images\): "
                          r"passed (.+)$", re.M)


def _copy_of(version: Path) -> Callable[[Path], exporter.BuiltModel]:
    """A builder whose candidate is a copy of an exported version (the exporter rewrites its label map and warmup)."""
    text = label_map_file(version).read_text()

    def build(staged: Path) -> exporter.BuiltModel:
        shutil.copytree(version, staged)
        return exporter.BuiltModel(source=f"copy of {version}", label_map=parse_label_map(text), label_map_text=text,
                                   input_size=None, samples=[], reference=[])

    return build


@pytest.fixture
def verified(monkeypatch) -> list[Path]:
    """Verification stubbed to pass (the copied candidate was verified when it was exported); records its calls."""
    calls: list[Path] = []

    def passed(path, built, measure_latency=True):
        calls.append(path)
        return {"ok": True, "checks": []}

    monkeypatch.setattr(exporter, "verify_in_subprocess", passed)
    return calls


def _entries(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir())


def _test_images(data: Path) -> int:
    return sum(1 for _ in read_examples(split_pattern(data, "test")))


def test_gate_below_the_known_metric_publishes_and_shows_the_metrics(trained_model, trained_model_metrics, tmp_path):
    known_map, known_map50 = trained_model_metrics[MAP], trained_model_metrics[MAP50]
    # Floors above 0 and well below the metrics (an export scores within 0.005 of them): floors that can fail.
    assert known_map > 0.02 and known_map50 > 0.02
    min_map, min_map50 = round(known_map / 2, 3), round(known_map50 / 2, 3)
    repository = tmp_path / "repository"
    result = CliRunner().invoke(export_command, [
        "--model-dir", str(trained_model.model_dir), "--repository", str(repository), "--name", "detector",
        "--min-map", str(min_map), "--min-map50", str(min_map50), "--data", str(trained_model.data_dir),
        "--split", "test"])
    assert result.exit_code == 0, result.output
    model_dir = repository / "detector"
    assert _entries(model_dir) == ["1"]
    assert (model_dir / "1" / "saved_model.pb").is_file()
    (line,) = QUALITY_LINE.findall(result.output)
    shown_map, shown_map50, data, split, images, passed = line
    assert float(shown_map) == pytest.approx(known_map, abs=0.005)
    assert float(shown_map50) == pytest.approx(known_map50, abs=0.005)
    assert (data, split, int(images)) == (str(trained_model.data_dir), "test", _test_images(trained_model.data_dir))
    assert passed == f"--min-map {min_map:g}, --min-map50 {min_map50:g}"


def test_gate_above_the_known_metric_refuses_with_both_numbers(trained_model, trained_model_metrics,
                                                               published_version, verified, tmp_path, monkeypatch):
    known_map, known_map50 = trained_model_metrics[MAP], trained_model_metrics[MAP50]
    assert known_map < 0.98 and known_map50 < 0.98  # floors halfway to 1: more than 0.005 above the metrics
    min_map, min_map50 = round((known_map + 1) / 2, 3), round((known_map50 + 1) / 2, 3)
    # The CLI's checkpoint export, with the session's published version as what it built.
    monkeypatch.setattr(exporter, "checkpoint_builder", lambda *args: _copy_of(published_version))
    repository = tmp_path / "repository"
    model_dir = repository / "detector"
    (model_dir / "1").mkdir(parents=True)  # an earlier version, which must stay the newest
    (model_dir / "1" / "saved_model.pb").write_bytes(b"old")

    result = CliRunner().invoke(export_command, [
        "--model-dir", str(trained_model.model_dir), "--repository", str(repository), "--name", "detector",
        "--min-map", str(min_map), "--min-map50", str(min_map50), "--data", str(trained_model.data_dir),
        "--split", "test"])
    assert result.exit_code == gate.REFUSED_EXIT_CODE == 3, result.output
    assert len(verified) == 1  # refused after the verification, by the gate
    message = result.output.strip().splitlines()[-1]
    match = re.fullmatch(rf"Error: export refused: mAP (\d\.\d{{4}}) < --min-map {min_map:g}, "
                         rf"mAP@\.50 (\d\.\d{{4}}) < --min-map50 {min_map50:g} on "
                         rf"{re.escape(str(trained_model.data_dir))}/test \((\d+) images\); nothing published", message)
    assert match, message
    assert float(match[1]) == pytest.approx(known_map, abs=0.005)
    assert float(match[2]) == pytest.approx(known_map50, abs=0.005)
    assert int(match[3]) == _test_images(trained_model.data_dir)
    assert _entries(model_dir) == ["1"]  # no new version, no staging directory


def test_gate_passing_on_the_default_split_puts_its_metrics_in_the_result(trained_model, published_version, verified,
                                                                          tmp_path):
    checked = gate.prepare_gate(trained_model.data_dir, min_map=0.0)
    assert checked.split == "val"  # the data has a val split: the gate's default
    result = exporter._export(_copy_of(published_version), tmp_path, "detector", None, None, [], [], None,
                              gate=checked)
    assert result.path == tmp_path / "detector" / "1" and _entries(tmp_path / "detector") == ["1"]
    assert result.gate is not None and result.gate.split == "val" and result.gate.num_images > 0
    assert result.gate.metrics[MAP] is not None
    (line,) = QUALITY_LINE.findall(format_summary(result))
    assert line[0] == f"{result.gate.metrics[MAP]:.4f}" and line[3:5] == ("val", str(result.gate.num_images))
    assert line[5] == "--min-map 0"


@pytest.fixture
def relabelled_data(trained_model, tmp_path) -> Path:
    """The session's data with two class names swapped in its label map: the ids no longer mean the model's."""
    data = tmp_path / "relabelled"
    data.mkdir()
    for shard in trained_model.data_dir.glob("*.tfrecord"):
        (data / shard.name).symlink_to(shard)
    names = list(parse_label_map((trained_model.data_dir / "label_map.pbtxt").read_text()).values())
    names[0], names[1] = names[1], names[0]
    write_label_map(names, data / "label_map.pbtxt")
    return data


def test_a_label_map_mismatch_is_refused_before_verification_and_evaluation(published_version, relabelled_data,
                                                                            verified, tmp_path, monkeypatch):
    def evaluated(*args, **kwargs):
        raise AssertionError("the gate evaluated a model whose classes are not the data's")

    monkeypatch.setattr(gate, "_evaluate", evaluated)
    checked = gate.prepare_gate(relabelled_data, min_map=0.0)
    with pytest.raises(gate.GateRefused) as refused:
        exporter._export(_copy_of(published_version), tmp_path, "detector", None, None, [], [], None, gate=checked)
    message = str(refused.value)
    assert message.startswith("export refused: the model's classes (its assets/label_map.pbtxt) do not match the "
                              f"data's label map ({relabelled_data / 'label_map.pbtxt'}): id 1: ")
    assert message.endswith("; nothing published")
    assert verified == []  # refused as soon as the label map was in the staging directory
    assert _entries(tmp_path / "detector") == []  # no version, no staging directory


def test_missing_or_empty_gate_data_fails_before_anything_is_built(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    repository = tmp_path / "repository"
    # No model directory either: the gate's data is checked first, before the export reads anything.
    base = ["--model-dir", str(tmp_path / "model"), "--repository", str(repository), "--min-map", "0.5"]
    missing = CliRunner().invoke(export_command, [*base, "--data", str(tmp_path / "missing")])
    assert missing.exit_code == 1
    assert f"Error: quality gate data directory not found: {tmp_path / 'missing'}" in missing.output
    nothing = CliRunner().invoke(export_command, [*base, "--data", str(empty)])
    assert nothing.exit_code == 1
    assert (f"Error: quality gate data {empty} has nothing to evaluate the candidate on: no file matches "
            f"{split_pattern(empty, 'val')} or {split_pattern(empty, 'test')}") in nothing.output
    assert not repository.exists()  # refused before the export started


def test_gate_options_need_each_other(synthetic_data, tmp_path):
    base = ["--model-dir", str(tmp_path / "model"), "--repository", str(tmp_path / "repository")]
    no_data = CliRunner().invoke(export_command, [*base, "--min-map", "0.5"])
    assert no_data.exit_code == 2 and "pass --data DIR" in no_data.output
    no_floor = CliRunner().invoke(export_command, [*base, "--data", str(synthetic_data)])
    assert no_floor.exit_code == 2 and "pass --min-map and/or --min-map50" in no_floor.output
    out_of_range = CliRunner().invoke(export_command, [*base, "--min-map", "50", "--data", str(synthetic_data)])
    assert out_of_range.exit_code == 2 and "--min-map" in out_of_range.output
    assert not (tmp_path / "repository").exists()


def test_the_split_is_val_else_test_and_an_absent_split_is_named(synthetic_data, tmp_path):
    assert gate.prepare_gate(synthetic_data, min_map=0.5).split == "val"
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    for shard in synthetic_data.glob("test-*.tfrecord"):
        (only_test / shard.name).symlink_to(shard)
    with pytest.raises(exporter.ExportError, match=re.escape(f"label map not found: {only_test / 'label_map.pbtxt'}")):
        gate.prepare_gate(only_test, min_map=0.5)
    shutil.copy(synthetic_data / "label_map.pbtxt", only_test)
    checked = gate.prepare_gate(only_test, min_map50=0.5)
    assert (checked.split, checked.pattern) == ("test", split_pattern(only_test, "test"))
    with pytest.raises(exporter.ExportError, match=re.escape(f"has no 'val' shards: nothing matches "
                                                             f"{split_pattern(only_test, 'val')}")):
        gate.prepare_gate(only_test, min_map=0.5, split="val")
