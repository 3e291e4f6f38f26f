"""`--pretrained`: zoo models by name, offline. A zoo-format tarball (a real TFOD2 SSD FPN-Lite checkpoint of alpha
0.35 at 128 px, built with the kit's own config, and its pipeline.config) is served from 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from detserve.training.initialisation import WeightsHashError, file_sha256
from detserve.training.zoo import ZOO_MODELS, ZooError, resolve_pretrained

NAME = ZOO_MODELS[0]  # ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8, in the zoo's layout but tiny
ALPHA, SIZE = 0.35, 128
FIRST_CONV = "model/_feature_extractor/classification_backbone/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
MARK = 0.123  # the first backbone conv's every weight in the built checkpoint: recognisable after fine-tuning


@dataclass
class ZooServer:
    url: str
    tarball: Path  # the served file
    model_dir: Path  # the same model, extracted (<name>/pipeline.config, <name>/checkpoint/ckpt-0.*)
    requests: list[str]


def _build_zoo_model(data_dir: Path, root: Path) -> Path:
    """``root/<NAME>/``: pipeline.config and checkpoint/ckpt-0, saved as train_loop's ``model`` object."""
    import tensorflow as tf
    from object_detection.builders import model_builder

    from detserve.training.options import TrainingOptions
    from detserve.training.pipeline_config import build_pipeline_config, save_pipeline_config

    config = build_pipeline_config(TrainingOptions(data_dir=data_dir, depth_multiplier=ALPHA, image_size=SIZE))
    model = model_builder.build(model_config=config.model, is_training=True)
    images, shapes = model.preprocess(tf.zeros([1, SIZE, SIZE, 3]))
    model.predict(images, shapes)
    first_conv = next(layer for layer in model._feature_extractor.classification_backbone.layers if layer.weights).kernel
    first_conv.assign(tf.fill(first_conv.shape, MARK))
    directory = root / NAME
    checkpoint = tf.train.Checkpoint(model=model)
    checkpoint.save_counter  # noqa: B018 (creates it: a zoo checkpoint has one, and TFOD2's restore asserts it)
    checkpoint.write(str(directory / "checkpoint" / "ckpt-0"))
    save_pipeline_config(config, directory / "pipeline.config")
    return directory


@pytest.fixture(scope="module")
def zoo_server(synthetic_data: Path, tmp_path_factory) -> Iterator[ZooServer]:
    root = tmp_path_factory.mktemp("zoo")
    model_dir = _build_zoo_model(synthetic_data, root / "built")
    served = root / "served"
    served.mkdir()
    tarball = served / f"{NAME}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(model_dir, arcname=NAME)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ZooServer(f"http://127.0.0.1:{server.server_address[1]}/", tarball, model_dir, requests)
    finally:
        server.shutdown()
        server.server_close()


def test_found_by_name_downloaded_once_and_read_from_the_model(zoo_server: ZooServer, tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.setenv("DETSERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("DETSERVE_ZOO_URL", zoo_server.url)
    before = len(zoo_server.requests)
    model = resolve_pretrained(NAME)
    assert zoo_server.requests[before:] == [f"/{NAME}.tar.gz"]
    assert (model.depth_multiplier, model.image_size, model.name) == (ALPHA, SIZE, NAME)
    assert model.checkpoint_prefix.endswith(f"{NAME}/checkpoint/ckpt-0")
    cache = tmp_path / "zoo"
    assert model.sha256 == file_sha256(zoo_server.tarball) == file_sha256(cache / f"{NAME}.tar.gz")
    # No published hash: the first download's is recorded, and later uses are checked against it.
    assert (cache / f"{NAME}.tar.gz.sha256").read_text().split()[0] == model.sha256

    again = resolve_pretrained(NAME)
    assert len(zoo_server.requests) == before + 1  # from the cache
    assert again == model
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no partial download or staging left


def test_wrong_sha256_fails_naming_both_and_caches_nothing(zoo_server: ZooServer, tmp_path: Path) -> None:
    actual, wrong = file_sha256(zoo_server.tarball), "0" * 64
    with pytest.raises(WeightsHashError, match=rf"sha256 {actual}, expected {wrong}"):
        resolve_pretrained(NAME, sha256=wrong, cache=tmp_path, base_url=zoo_server.url)
    assert list(tmp_path.iterdir()) == []
    # The right pin passes.
    assert resolve_pretrained(NAME, sha256=actual.upper(), cache=tmp_path, base_url=zoo_server.url).sha256 == actual
    assert (tmp_path / f"{NAME}.tar.gz.sha256").read_text().split()[0] == actual


def test_a_changed_cached_tarball_is_refused(zoo_server: ZooServer, tmp_path: Path) -> None:
    recorded = resolve_pretrained(NAME, cache=tmp_path, base_url=zoo_server.url).sha256
    cached = tmp_path / f"{NAME}.tar.gz"
    cached.write_bytes(b"not the tarball")
    with pytest.raises(WeightsHashError, match=rf"{cached}: sha256 {file_sha256(cached)}, expected {recorded}"):
        resolve_pretrained(NAME, cache=tmp_path, base_url=zoo_server.url)


def test_fine_tunes_from_the_zoo_checkpoint_by_name(zoo_server: ZooServer, synthetic_data: Path, tmp_path: Path,
                                                    monkeypatch) -> None:
    """`detserve train --pretrained NAME` with the CLI's default width (0.5) and size (320): both come from the
    model instead, and the run starts from its weights."""
    import tensorflow as tf

    from detserve.training.cli import train
    from detserve.training.pipeline_config import load_pipeline_config

    monkeypatch.setenv("DETSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETSERVE_ZOO_URL", zoo_server.url)
    run_dir = tmp_path / "run"
    # A tiny learning rate: after 2 steps the restored weights are still recognisably the zoo model's.
    result = CliRunner().invoke(train, ["--data", str(synthetic_data), "--model-dir", str(run_dir), "--pretrained", NAME,
                                        "--steps", "2", "--batch-size", "2", "--learning-rate", "1e-4",
                                        "--warmup-steps", "0", "--augment", "", "--seed", "0", "--no-progress",
                                        "--eval-every", "0"])  # no validation: this test is about the start
    assert result.exit_code == 0, result.output
    assert f"pretrained {NAME}: depth multiplier {ALPHA}, image size {SIZE} (the model's)" in result.output
    assert "trained steps 0->2 " in result.output
    config = load_pipeline_config(run_dir / "pipeline.config")
    assert config.train_config.fine_tune_checkpoint.endswith(f"{NAME}/checkpoint/ckpt-0")
    assert config.train_config.fine_tune_checkpoint_type == "detection"
    assert config.model.ssd.feature_extractor.depth_multiplier == pytest.approx(ALPHA)
    assert config.model.ssd.image_resizer.fixed_shape_resizer.height == SIZE
    first_conv = tf.train.load_variable(str(run_dir), FIRST_CONV)
    assert np.allclose(first_conv, MARK, atol=1e-2), "the run did not start from the zoo checkpoint"


def test_explicit_depth_multiplier_must_match_the_model(zoo_server: ZooServer, tmp_path: Path) -> None:
    with pytest.raises(ZooError, match=rf"--depth-multiplier 1.0 does not match .* depth_multiplier is {ALPHA}"):
        resolve_pretrained(str(zoo_server.tarball), depth_multiplier=1.0, cache=tmp_path)
    assert resolve_pretrained(str(zoo_server.model_dir), depth_multiplier=ALPHA).depth_multiplier == ALPHA

    from detserve.training.cli import train

    result = CliRunner().invoke(train, ["--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                        "--pretrained", str(zoo_server.model_dir), "--depth-multiplier", "0.5"])
    assert result.exit_code == 1
    assert f"--depth-multiplier 0.5 does not match the pretrained model {NAME}, whose depth_multiplier is {ALPHA}" \
        in result.output


@pytest.mark.parametrize("other", [["--backbone-weights", "imagenet"], ["--fine-tune-checkpoint", "x/ckpt-0"]])
def test_pretrained_with_other_weights_is_a_usage_error(other: list[str], tmp_path: Path) -> None:
    from detserve.training.cli import train

    result = CliRunner().invoke(train, ["--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                        "--pretrained", NAME, *other])
    assert result.exit_code == 2 and "give it without --backbone-weights and --fine-tune-checkpoint" in result.output


def test_pretrained_sha256_needs_pretrained(tmp_path: Path) -> None:
    from detserve.training.cli import train

    result = CliRunner().invoke(train, ["--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                        "--pretrained-sha256", "0" * 64])
    assert result.exit_code == 2 and "--pretrained-sha256 checks --pretrained: give both" in result.output


def _tarball(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_traversal_tarball_is_refused(kind: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    if kind == "symlink":
        member = tarfile.TarInfo(f"{NAME}/pipeline.config")
        member.type, member.linkname = tarfile.SYMTYPE, str(outside)
    else:
        member = tarfile.TarInfo(f"{NAME}/../../outside.txt" if kind == "dotdot" else str(outside))
    tarball = _tarball(tmp_path / "evil.tar.gz", member, b"" if kind == "symlink" else b"escaped")
    cache = tmp_path / "cache"
    with pytest.raises(ZooError, match=rf"zoo tarball {tarball} is unsafe, not extracted"):
        resolve_pretrained(str(tarball), cache=cache)
    assert not outside.exists()
    assert list(cache.iterdir()) == []  # the staging directory is gone too


def test_unknown_and_unbuildable_names_are_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="this kit builds SSD MobileNetV2 FPN-Lite only"):
        resolve_pretrained("ssd_resnet50_v1_fpn_640x640_coco17_tpu-8", cache=tmp_path, base_url="http://127.0.0.1:9/")
    with pytest.raises(ZooError, match=f"known zoo model; known: {NAME}"):
        resolve_pretrained("ssd_mobilenet_v9", cache=tmp_path, base_url="http://127.0.0.1:9/")
    assert list(tmp_path.iterdir()) == []
