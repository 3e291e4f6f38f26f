"""Compatibility layer that lets TFOD2 (tf-object-detection-api==0.1) run on TensorFlow 2.21.

Import this module (or call :func:`apply`) before anything imports ``object_detection``.
Every patch is idempotent, only adds what is missing, and has a test in tests/test_tfod_compat.py
that fails without it. The breakages were measured on TF 2.21 + tf-keras 2.21:

1. ``TF_USE_LEGACY_KERAS=1``: TFOD2 uses ``tf.keras.layers.experimental`` (gone in Keras 3), so
   ``tf.keras`` must resolve to tf-keras 2.x. It only works if set before TensorFlow is imported.
2. ``tensorflow_io``: imported at module level by ``deepmac_meta_arch`` (which ``model_builder``
   imports); its last release does not load on TF 2.21 and only DeepMAC uses it. A placeholder
   module is registered that fails with a clear message if DeepMAC ever touches it.
3. ``tf.compat.v1.estimator``: removed in TF 2.16+. ``inputs.py`` and ``model_lib.py`` import it at
   module level; the TF2 path only uses ``ModeKeys``, which still exists inside TensorFlow.
4. tf-slim's ``tfexample_decoder`` calls ``control_flow_ops.case`` / ``cond`` (and other tf-slim
   modules ``while_loop``, ``Assert``); TF moved them to their own modules.
5. ``model_lib_v2`` writes image and scalar summaries through ``tf.summary``, which TensorFlow only
   provides when ``tensorboard`` is installed; we check for it and say so instead of an AttributeError.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

_APPLIED = False


class TFODCompatError(RuntimeError):
    """The environment cannot be made compatible (e.g. TensorFlow imported too early)."""


def _require_legacy_keras() -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        return
    if "tensorflow" in sys.modules:
        raise TFODCompatError(
            "TensorFlow was imported before detserve.training.tfod_compat with TF_USE_LEGACY_KERAS unset; "
            "TFOD2 needs tf.keras to be tf-keras 2.x. Set TF_USE_LEGACY_KERAS=1 in the environment "
            "or import detserve.training.tfod_compat first."
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


def _placeholder_tensorflow_io() -> None:
    if "tensorflow_io" in sys.modules:
        return
    # A real tensorflow_io is never imported here: 0.37.1 fails to load its ops on TF 2.21.
    module = types.ModuleType("tensorflow_io")
    module.__doc__ = "detserve placeholder: tensorflow_io does not load on TF 2.21 (only TFOD2 DeepMAC uses it)."

    def _missing(name: str):
        if name.startswith("__"):
            # Introspection (autograph, inspect) probes dunders; those must look merely absent.
            raise AttributeError(name)
        raise ImportError(
            f"tensorflow_io.{name} is not available: tensorflow_io does not load on TensorFlow 2.21 and "
            "detserve does not support DeepMAC models, the only TFOD2 code that uses it."
        )

    module.__getattr__ = _missing  # type: ignore[attr-defined]
    sys.modules["tensorflow_io"] = module


def _estimator_shim() -> None:
    import tensorflow as tf
    from tensorflow.python.saved_model.model_utils.mode_keys import EstimatorModeKeys

    compat_v1 = tf.compat.v1
    if hasattr(compat_v1, "estimator"):
        return
    shim = types.ModuleType("tensorflow.compat.v1.estimator")
    shim.__doc__ = "detserve shim: TF >= 2.16 has no estimator; TFOD2's TF2 path only needs ModeKeys."
    shim.ModeKeys = EstimatorModeKeys

    def _missing(name: str):
        raise AttributeError(
            f"tf.compat.v1.estimator.{name} does not exist in TensorFlow {tf.__version__}; "
            "the Estimator API (model_main.py, model_lib.py) is not supported, use the TF2 path (model_lib_v2)."
        )

    shim.__getattr__ = _missing  # type: ignore[attr-defined]
    compat_v1.estimator = shim
    sys.modules["tensorflow.compat.v1.estimator"] = shim


def _slim_control_flow_ops() -> None:
    from tensorflow.python.ops import control_flow_ops

    moved = {
        "case": ("tensorflow.python.ops.control_flow_case", "case"),
        "cond": ("tensorflow.python.ops.cond", "cond"),
        "while_loop": ("tensorflow.python.ops.while_loop", "while_loop"),
        "Assert": ("tensorflow.python.ops.control_flow_assert", "Assert"),
    }
    for name, (module_name, attr) in moved.items():
        if not hasattr(control_flow_ops, name):
            setattr(control_flow_ops, name, getattr(importlib.import_module(module_name), attr))


def _require_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise TFODCompatError(
            "tensorboard is not installed: TFOD2's model_lib_v2 writes summaries with tf.summary, which "
            "TensorFlow only provides with tensorboard. Run `make setup` (pins tensorboard==2.21.0)."
        )


# In the order they must run: the Keras switch before TensorFlow is imported.
PATCHES = {
    "legacy_keras": _require_legacy_keras,
    "tensorboard": _require_tensorboard,
    "tensorflow_io": _placeholder_tensorflow_io,
    "estimator": _estimator_shim,
    "slim_control_flow": _slim_control_flow_ops,
}


def apply(skip: tuple[str, ...] = ()) -> None:
    """Apply every patch (except those named in ``skip``) once. Safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    for name, patch in PATCHES.items():
        if name not in skip:
            patch()
    _APPLIED = not skip


# DETSERVE_TFOD_COMPAT=manual leaves applying to the caller: the tests use it to show that TFOD2
# fails without each patch.
if os.environ.get("DETSERVE_TFOD_COMPAT") != "manual":
    apply()
