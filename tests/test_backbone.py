"""ImageNet MobileNetV2 weights (.h5) into TFOD2's SSD FPN-Lite backbone."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from detserve.training import initialisation
from detserve.training.backbone import BackboneWeightsError, alpha_from_filename, import_backbone_weights
from detserve.training.data.label_map import write_label_map
from detserve.training.initialisation import (
    KERAS_WEIGHTS_SHA256,
    WeightsHashError,
    keras_weights_filename,
    resolve_backbone_weights,
)
from detserve.training.pipeline_config import TrainingOptions, parse_pipeline_config, render_pipeline_config

H5_035 = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
H5_05 = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"


def model_config(tmp_path: Path, depth_multiplier: float, min_depth: int = 8):
    write_label_map(["a", "b"], tmp_path / "label_map.pbtxt")
    options = TrainingOptions(data_dir=tmp_path, depth_multiplier=depth_multiplier, min_depth=min_depth)
    return parse_pipeline_config(render_pipeline_config(options)).model


def test_alpha_is_read_from_keras_file_names() -> None:
    assert alpha_from_filename(keras_weights_filename(0.35)) == 0.35
    assert alpha_from_filename("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5") == 1.0
    assert alpha_from_filename("my_weights.h5") is None


def test_alpha_mismatch_is_a_clear_error(tmp_path: Path, shared_path) -> None:
    h5 = shared_path(H5_035)
    with pytest.raises(BackboneWeightsError, match=r"alpha 0.35.*depth_multiplier is 0.5.*--depth-multiplier 0.35"):
        import_backbone_weights(h5, model_config(tmp_path, 0.5), tmp_path / "ckpt" / "backbone")


@pytest.mark.slow
def test_min_depth_16_does_not_fit_and_says_why(tmp_path: Path, shared_path) -> None:
    # TFOD2's default min_depth widens the 8-filter expanded_conv_project layer to 16.
    h5 = shared_path(H5_035)
    with pytest.raises(BackboneWeightsError, match="min_depth <= 8"):
        import_backbone_weights(h5, model_config(tmp_path, 0.35, min_depth=16), tmp_path / "ckpt" / "backbone")


@pytest.mark.slow
def test_every_imagenet_tensor_lands_in_the_backbone_checkpoint(tmp_path: Path, shared_path) -> None:
    import tensorflow as tf

    h5 = shared_path(H5_035)
    result = import_backbone_weights(h5, model_config(tmp_path, 0.35), tmp_path / "ckpt" / "backbone")
    assert (result.layers, result.tensors) == (104, 260)
    assert result.truncated == ["Conv_1/kernel:0", "Conv_1_bn/gamma:0", "Conv_1_bn/beta:0",
                                "Conv_1_bn/moving_mean:0", "Conv_1_bn/moving_variance:0"]

    saved = {name: shape for name, shape in tf.train.list_variables(result.checkpoint_prefix)}
    kernels = sorted(n for n in saved if n.startswith("feature_extractor/") and n.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    assert kernels, saved
    with h5py.File(h5) as weights:
        first_conv = np.asarray(weights["Conv1"]["Conv1"]["kernel:0"])
        last_conv = np.asarray(weights["Conv_1"]["Conv_1"]["kernel:0"])
    values = [tf.train.load_variable(result.checkpoint_prefix, name) for name in kernels]
    # The first conv is copied as is; Conv_1 (1280 filters in Keras) is truncated to TFOD2's alpha-scaled width.
    assert any(v.shape == first_conv.shape and np.array_equal(v, first_conv) for v in values)
    truncated = [v for v in values if v.shape[:-1] == last_conv.shape[:-1] and v.shape[-1] < last_conv.shape[-1]]
    assert len(truncated) == 1 and np.array_equal(truncated[0], last_conv[..., : truncated[0].shape[-1]])


@pytest.fixture
def no_network(monkeypatch) -> None:
    """Any connection attempt fails the test: `imagenet` must resolve from the cache alone."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def keras_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Keras cache ($KERAS_HOME/models) for `imagenet`."""
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return cache


@pytest.mark.parametrize(("relative", "alpha"), [(H5_035, 0.35), (H5_05, 0.5)])
def test_imagenet_uses_the_keras_cache_without_network(keras_cache: Path, shared_path, no_network,
                                                       relative: str, alpha: float) -> None:
    # With the file in Keras' cache (as after one online run), `imagenet` resolves offline; its sha256 is the known one.
    h5 = shared_path(relative)
    (keras_cache / keras_weights_filename(alpha)).symlink_to(h5)
    assert resolve_backbone_weights("imagenet", alpha).resolve() == h5.resolve()


def test_imagenet_refuses_a_cached_file_with_the_wrong_sha256(keras_cache: Path, no_network) -> None:
    cached = keras_cache / keras_weights_filename(0.35)
    cached.write_bytes(b"truncated download")
    actual = hashlib.sha256(b"truncated download").hexdigest()
    expected = KERAS_WEIGHTS_SHA256[cached.name]
    with pytest.raises(WeightsHashError, match=rf"{cached.name}.*sha256 {actual}, expected {expected}; not used"):
        resolve_backbone_weights("imagenet", 0.35)
    # Not used, not deleted: moved aside, so that the next run downloads the file again.
    assert not cached.exists()
    assert (keras_cache / f"{cached.name}.rejected-{actual}").read_bytes() == b"truncated download"


def test_imagenet_checks_what_keras_downloads(tmp_path: Path, monkeypatch) -> None:
    downloaded = tmp_path / keras_weights_filename(0.5)

    def download(filename: str) -> Path:
        downloaded.write_bytes(b"not the weights")
        return downloaded

    monkeypatch.setattr(initialisation, "_keras_download", download)
    with pytest.raises(WeightsHashError, match=KERAS_WEIGHTS_SHA256[downloaded.name]):
        resolve_backbone_weights("imagenet", 0.5)
    assert not downloaded.exists()


def test_imagenet_at_an_alpha_without_known_sha256_is_refused_before_downloading(monkeypatch) -> None:
    monkeypatch.setattr(initialisation, "_keras_download", pytest.fail)
    with pytest.raises(WeightsHashError, match=r"no known sha256 for .*_0\.75_224_no_top\.h5.*"
                                               r"--backbone-weights PATH.*--backbone-weights-sha256"):
        resolve_backbone_weights("imagenet", 0.75)


def test_an_explicit_sha256_admits_another_alpha_and_checks_local_files(keras_cache: Path, no_network) -> None:
    cached = keras_cache / keras_weights_filename(0.75)
    cached.write_bytes(b"alpha 0.75 weights")
    good = hashlib.sha256(b"alpha 0.75 weights").hexdigest()
    assert resolve_backbone_weights("imagenet", 0.75, good.upper()) == cached
    # A local file is the user's own: a mismatch is refused, but the file stays where it is.
    with pytest.raises(WeightsHashError, match=rf"sha256 {good}, expected {'0' * 64}"):
        resolve_backbone_weights(str(cached), 0.75, "0" * 64)
    assert cached.exists()
    with pytest.raises(ValueError, match="not a sha256"):
        resolve_backbone_weights(str(cached), 0.75, "abc")


def test_backbone_weights_sha256_needs_backbone_weights(tmp_path: Path) -> None:
    from detserve.training.cli import train

    result = CliRunner().invoke(train, ["--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                        "--backbone-weights-sha256", "0" * 64])
    assert result.exit_code == 2 and "give both" in result.output


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.h5 not found"):
        resolve_backbone_weights(str(tmp_path / "nothing.h5"), 0.5)
