"""Fixtures shared by the test suite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before any test module imports TensorFlow: TFOD2 needs tf-keras selected at TensorFlow's first import.
import detserve.training.tfod_compat  # noqa: F401, I001

REPO_ROOT = Path(__file__).resolve().parents[1]
# Datasets and weights live beside the checkout (../shared), not in the repository.
SHARED_DIR = REPO_ROOT.parent / "shared"


def _shared_path(relative: str) -> Path:
    """``../shared/<relative>``, or skip the calling test saying what is missing."""
    path = SHARED_DIR / relative
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs the shared datasets/weights beside the checkout")
    return path


@pytest.fixture
def shared_path() -> Callable[[str], Path]:
    """``shared_path("data/face-mask-853")`` -> the path under ../shared, or skip the test saying why."""
    return _shared_path


@dataclass
class TrainedModel:
    """A tiny SSD FPN-Lite trained for a few steps on synthetic shapes (shared by the slow tests)."""

    data_dir: Path
    model_dir: Path
    steps: int


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """Synthetic VOC shapes converted to TFRecords + label_map.pbtxt (train/val/test)."""
    from detserve.training.data.convert import convert_dataset
    from detserve.training.data.synthetic import generate_voc_dataset

    root = tmp_path_factory.mktemp("synthetic")
    voc = generate_voc_dataset(root / "voc", num_images=60, seed=0, image_size=(160, 256))
    data_dir = root / "data"
    convert_dataset("voc", data_dir, annotations=voc.annotations_dir, images=voc.images_dir, seed=0,
                    progress=False, echo=None)
    return data_dir


@pytest.fixture(scope="session")
def trained_model(synthetic_data, tmp_path_factory) -> TrainedModel:
    """30 seeded steps, batch 4, alpha 0.35, from scratch (needs nothing from ../shared)."""
    from detserve.training.run import TrainingRequest, prepare_run
    from detserve.training.train import train

    steps = 30
    model_dir = tmp_path_factory.mktemp("model")
    request = TrainingRequest(data_dir=synthetic_data, model_dir=model_dir, steps=steps, batch_size=4,
                              learning_rate=0.08, warmup_steps=3, depth_multiplier=0.35, augmentations=[])
    list(prepare_run(request))
    train(model_dir, steps, checkpoint_every=25, preferred_steps_per_loop=1, progress=False, seed=0)
    return TrainedModel(data_dir=synthetic_data, model_dir=model_dir, steps=steps)
