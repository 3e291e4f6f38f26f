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


EXAMPLE_IMAGE = "data/examples/example_mask_detection_image.png"
EXAMPLE_SIZE = (1563, 778)  # width, height of the shared photo


def synthetic_photo(width: int, height: int, seed: int = 0):
    """A photo-like uint8 RGB image: smooth colour gradients, blobs and a little noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 100 * np.sin(x / 53 + y / 97), 128 + 90 * np.cos(y / 41), 100 + 80 * np.sin((x + y) / 71)],
                     axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, 120)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
        image += blob * rng.uniform(-120, 120, size=3)
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def example_image(tmp_path_factory) -> Path:
    """The shared 1563x778 photo when ../shared is here, else a synthetic PNG of the same size: the tests that
    only need a picture run everywhere."""
    shared = SHARED_DIR / EXAMPLE_IMAGE
    if shared.is_file():
        return shared
    from PIL import Image

    path = tmp_path_factory.mktemp("example") / Path(EXAMPLE_IMAGE).name
    Image.fromarray(synthetic_photo(*EXAMPLE_SIZE)).save(path)
    return path


# The least mAP@.50 the trained_model fixture must reach on its test split, for the tests that need a detector (so that
# equal metrics mean something). The run is seeded, but another CPU rounds differently and its run diverges like
# another seed's would. Measured, 200 steps at 192x192 on 2 cores: AMD EPYC without AVX-512, seeds 0/1/2: 0.891, 0.380,
# 0.587; Intel Xeon with AVX-512: 0.278, 0.578, 0.521 (this recipe, once per seed, 2026-12-03); a model
# that learnt nothing scores ~0 (the former 30-step fixture: 0.0003). The floor is about half the lowest run seen on
# any CPU: far above chance, below every run. Tests compare against it, never against one machine's number.
MAP50_FLOOR = 0.15


@dataclass
class TrainedModel:
    """A small SSD FPN-Lite trained on synthetic shapes until it finds them (shared by the slow tests)."""

    data_dir: Path
    model_dir: Path
    steps: int
    image_size: int


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
    """200 seeded steps, batch 4, alpha 0.35, 192x192 input, from scratch (needs nothing from ../shared).

    A working detector, so that parity tests can fail: it answers each image differently, with confident,
    well-separated detections (a 30-step model answered every image alike). 192 rather than 320 pixels: 2.6x
    the training speed, and the synthetic shapes are large. Its test-split mAP@.50 depends on the CPU (0.89 on AMD
    EPYC, 0.28 on Intel Xeon with AVX-512, seed 0) in 45-145 s of training; see MAP50_FLOOR. Those were measured
    with the zoo's anchors (4.0), so the fixture keeps them rather than the scale fitted to its boxes (3.5).
    """
    from detserve.training.run import TrainingRequest, prepare_run
    from detserve.training.train import train

    steps, image_size = 200, 192
    model_dir = tmp_path_factory.mktemp("model")
    request = TrainingRequest(data_dir=synthetic_data, model_dir=model_dir, steps=steps, batch_size=4,
                              learning_rate=0.08, warmup_steps=20, depth_multiplier=0.35, image_size=image_size,
                              anchor_scale=4.0, augmentations=[])
    prepare_run(request, echo=None)
    # Checkpoints every 75 steps: train_loop alone would stop saving at 150; detserve saves the last step.
    train(model_dir, steps, checkpoint_every=75, preferred_steps_per_loop=1, progress=False, seed=0)
    return TrainedModel(data_dir=synthetic_data, model_dir=model_dir, steps=steps, image_size=image_size)


@pytest.fixture(scope="session")
def trained_model_metrics(trained_model, tmp_path_factory) -> dict:
    """COCO metrics of the trained checkpoint on its test split (``detserve evaluate --model-dir``'s path)."""
    from detserve.training.data.label_map import read_label_map
    from detserve.training.evaluation.evaluate import evaluate
    from detserve.training.evaluation.predictors import checkpoint_predictor

    labels = read_label_map(trained_model.data_dir / "label_map.pbtxt")
    predictor = checkpoint_predictor(trained_model.model_dir / "pipeline.config", trained_model.model_dir)
    return evaluate(predictor, trained_model.data_dir, labels, tmp_path_factory.mktemp("checkpoint-eval"),
                    grid_images=0, progress=False)


@pytest.fixture(scope="session")
def published_version(trained_model, tmp_path_factory) -> Path:
    """``<repository>/detector/1``: the trained detector as `detserve export` publishes it (warmup, verified)."""
    from detserve.export import exporter

    repository = tmp_path_factory.mktemp("repository")
    result = exporter.export_checkpoint(trained_model.model_dir / "pipeline.config", trained_model.model_dir,
                                        repository, "detector")
    return result.path


@pytest.fixture
def copy_root(tmp_path) -> Path:
    """A copy of k8s/ and serving/ (what the Kubernetes validator reads) to plant mistakes or run tools in."""
    import shutil

    for name in ("k8s", "serving"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / ".yamllint.yaml", tmp_path / ".yamllint.yaml")
    return tmp_path
