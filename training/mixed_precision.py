"""`detserve train --mixed-precision`: TFOD2's train_loop in Keras' ``mixed_float16``, with loss scaling.

Keras' mixed-precision guide: layers compute in float16 and keep float32 variables; a custom training loop must
scale the loss before the gradient and unscale the gradients after it (``LossScaleOptimizer``), or small float16
gradients underflow to zero. TFOD2's train_loop has neither (its own switch, ``use_bfloat16``, is for TPUs), so
this module wraps the optimizer TFOD2 builds, gives train_loop a train step that scales, and casts SSD's predictions
to float32 (TFOD2's losses and decoding mix them with float32 anchors and targets). It is a GPU feature:
float16 pays on Tensor Cores (compute capability 7.0 and later), while a CPU emulates it, slower than float32.
"""

from __future__ import annotations

POLICY = "mixed_float16"

_installed = False


def enable_mixed_precision(require_gpu: bool = True) -> None:
    """Set the global Keras policy and install loss scaling into TFOD2's loop, for the rest of the process.

    Raises ValueError without a GPU unless ``require_gpu`` is False (the tests run the float16 path on a CPU)."""
    from . import tfod_compat  # noqa: F401, I001  (before TensorFlow and TFOD2)
    import tensorflow as tf

    if require_gpu and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--mixed-precision needs a GPU (float16 pays on Tensor Cores; a CPU emulates it, slower "
                         "than float32): no GPU is visible to TensorFlow here, so train without it")
    tf.keras.mixed_precision.set_global_policy(POLICY)
    _install_loss_scaling()


def _install_loss_scaling() -> None:
    global _installed
    if _installed:
        return
    import tensorflow as tf
    from object_detection import model_lib, model_lib_v2
    from object_detection.builders import optimizer_builder
    from object_detection.meta_architectures import ssd_meta_arch

    build_optimizer, unscaled_step = optimizer_builder.build, model_lib_v2.eager_train_step

    def build(optimizer_config, global_step=None):
        optimizer, summary_vars = build_optimizer(optimizer_config, global_step=global_step)
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer), summary_vars

    def eager_train_step(detection_model, features, labels, unpad_groundtruth_tensors, optimizer, training_step,
                         add_regularization_loss=True, clip_gradients_value=None, num_replicas=1.0):
        """TFOD2's eager_train_step with the loss scaled before the gradient and the gradients unscaled after."""
        if not isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
            return unscaled_step(detection_model, features, labels, unpad_groundtruth_tensors, optimizer,
                                 training_step, add_regularization_loss, clip_gradients_value, num_replicas)
        detection_model._is_training = True  # noqa: SLF001  (as TFOD2's step does)
        tf.keras.backend.set_learning_phase(True)
        labels = model_lib.unstack_batch(labels, unpad_groundtruth_tensors=unpad_groundtruth_tensors)
        with tf.GradientTape() as tape:
            losses_dict, _ = model_lib_v2._compute_losses_and_predictions_dicts(  # noqa: SLF001
                detection_model, features, labels, training_step=training_step,
                add_regularization_loss=add_regularization_loss)
            losses_dict = model_lib_v2.normalize_dict(losses_dict, num_replicas)
            scaled_loss = optimizer.get_scaled_loss(tf.cast(losses_dict["Loss/total_loss"], tf.float32))
        variables = detection_model.trainable_variables
        gradients = optimizer.get_unscaled_gradients(tape.gradient(scaled_loss, variables))
        if clip_gradients_value:
            gradients, _ = tf.clip_by_global_norm(gradients, clip_gradients_value)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return losses_dict

    predict = ssd_meta_arch.SSDMetaArch.predict

    def float32_predict(self, preprocessed_inputs, true_image_shapes, **kwargs):
        """SSD's predictions in float32, as Keras' guide wants a model's outputs: TFOD2's losses, box decoding
        and NMS combine them with float32 anchors and targets."""
        predictions = predict(self, preprocessed_inputs, true_image_shapes, **kwargs)
        return tf.nest.map_structure(
            lambda t: tf.cast(t, tf.float32) if isinstance(t, tf.Tensor) and t.dtype == tf.float16 else t, predictions)

    ssd_meta_arch.SSDMetaArch.predict = float32_predict
    model_lib_v2.optimizer_builder.build = build
    model_lib_v2.eager_train_step = eager_train_step
    _installed = True
