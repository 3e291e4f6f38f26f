"""Each compatibility patch is needed: TFOD2 fails on TF 2.21 without it and works with it.

Every case runs in a fresh interpreter (patches act at import time) with
DETSERVE_TFOD_COMPAT=manual, so the script applies all patches but the one under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import detserve.training.tfod_compat as compat
compat.apply(skip=SKIP)
"""


def run_python(code: str, skip: tuple[str, ...] = (), legacy_keras: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(DETSERVE_TFOD_COMPAT="manual", TF_CPP_MIN_LOG_LEVEL="3")
    if legacy_keras and "legacy_keras" in skip:
        env["TF_USE_LEGACY_KERAS"] = "0"
    script = PRELUDE.replace("SKIP", repr(skip)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


MODEL_BUILDER = """
from object_detection.builders import model_builder
print("OK")
"""

INPUTS = """
from object_detection import inputs
import tensorflow as tf
assert tf.compat.v1.estimator.ModeKeys.TRAIN == "train"
print("OK")
"""

SLIM_DECODE = """
import tensorflow as tf
from object_detection.data_decoders import tf_example_decoder
from PIL import Image
import io
buf = io.BytesIO(); Image.new("RGB", (8, 6), (10, 20, 30)).save(buf, "PNG")
feature = {
    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
    "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
    "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
    "image/object/bbox/xmax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
    "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.2])),
    "image/object/bbox/ymax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.6])),
    "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
}
example = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
decoded = tf_example_decoder.TfExampleDecoder().decode(tf.constant(example))
assert decoded["image"].shape == (6, 8, 3), decoded["image"].shape
print("OK")
"""

# model_builder imports freezable_sync_batch_norm, which subclasses a Keras 2 only layer.
KERAS_LAYERS = """
from object_detection.core import freezable_sync_batch_norm
print("OK")
"""


@pytest.mark.parametrize(
    ("patch", "code", "failure"),
    [
        ("tensorflow_io", MODEL_BUILDER, "No module named 'tensorflow_io'"),
        ("estimator", INPUTS, "cannot import name 'estimator'"),
        ("slim_control_flow", SLIM_DECODE, "has no attribute 'case'"),
        ("legacy_keras", KERAS_LAYERS, "has no attribute 'experimental'"),
    ],
)
def test_patch_is_needed_and_sufficient(patch: str, code: str, failure: str) -> None:
    without = run_python(code, skip=(patch,))
    assert without.returncode != 0, f"TFOD2 worked without the {patch} patch; the patch may be obsolete"
    assert failure in without.stderr, without.stderr[-3000:]
    assert_ok(run_python(code))


def test_tensorflow_io_placeholder_names_the_problem() -> None:
    result = run_python(
        """
        import tensorflow_io
        try:
            tensorflow_io.experimental
        except ImportError as error:
            assert "DeepMAC" in str(error)
            print("OK")
        """
    )
    assert_ok(result)


def test_tensorboard_is_required_for_model_lib_v2_summaries() -> None:
    # tf.summary.image, which model_lib_v2 calls every logged step, exists only with tensorboard.
    assert_ok(run_python("import tensorflow as tf\nassert hasattr(tf.summary, 'image')\nprint('OK')"))
    blocked = run_python(
        """
        import sys
        sys.modules["tensorboard"] = None  # as if not installed
        import importlib.util
        try:
            compat._require_tensorboard()
        except (compat.TFODCompatError, ValueError) as error:
            assert "tensorboard" in str(error)
            print("OK")
        """
    )
    assert_ok(blocked)


def test_tensorflow_imported_first_without_legacy_keras_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", "import tensorflow\nimport detserve.training.tfod_compat"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr
