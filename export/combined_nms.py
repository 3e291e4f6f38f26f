"""The export's non-max suppression: TFOD2's own ``use_combined_nms`` path where it gives the same detections.

TFOD2's default batch NMS (``core.post_processing.batch_multiclass_non_max_suppression``) runs a ``map_fn`` over
the batch and, per image and class, a NonMaxSuppressionV5 with gathers of the extra fields SSD carries
(multiclass scores, anchor indices), then a sort over the classes. Its ``use_combined_nms`` option does the same
selection in one ``CombinedNonMaxSuppression`` kernel for the whole batch: per class, greedy NMS with the same
score and IoU thresholds and ``max_detections_per_class``; then the best ``max_total_detections`` over all
classes; then the same clip to the image window. The contract's outputs (boxes, scores, classes, count) are
the same; the extra fields, which the contract does not return, are not computed. Measured on the face-mask
model (docs/performance.md): all 100 detections of each image identical, and post-processing 1.9 -> 1.0 ms at
batch 1, 6.7 -> 3.9 ms at batch 8 on 2 CPU cores.

Two differences remain by construction, both in the low-score tail in practice:

- after the cut to ``max_total_detections``, the combined path clamps each box to the image one-sidedly
  (``post_processing._clip_boxes``), where the default path clamps both sides, drops a box lying wholly
  outside the image (zero area) before the cut and fills its slot with the next one; the combined path returns
  such a box inverted and counts it in ``num_detections``;
- boxes of exactly equal score may be selected or ordered differently (NonMaxSuppressionV5 breaks ties by box
  index, the combined kernel's queue and sort do not).

The export verification compares the export against the model on TFOD2's own path for every detection above
its score floor (detserve.export.parity) and refuses the version if either reached it.

Only the signatures use it: the export's reference detections, like ``detserve evaluate``, keep the model's
configured NMS, so the verification compares against what was evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig


class CombinedNms(NamedTuple):
    """``function``: the NMS to trace the signatures with (None: keep the model's); ``reason``: why, for the log."""

    function: Callable | None
    reason: str


def combined_nms(config: TrainEvalPipelineConfig) -> CombinedNms:
    """TFOD2's batch NMS for ``config``'s model built with ``use_combined_nms``, when that gives the same
    detections as the configured one; otherwise no function and the setting that prevents it."""
    from object_detection.builders import post_processing_builder

    kind = config.model.WhichOneof("model")
    if kind != "ssd":
        return CombinedNms(None, f"a {kind} model (only SSD's post-processing is replaced)")
    post = config.model.ssd.post_processing
    if not post.HasField("batch_non_max_suppression"):
        return CombinedNms(None, "no batch_non_max_suppression in post_processing")
    nms = post.batch_non_max_suppression
    if nms.use_combined_nms:
        return CombinedNms(None, "the pipeline.config already sets use_combined_nms")
    # Each of these makes the default path select or lay out detections differently from the combined kernel.
    unsupported = [name for name, value in (
        ("use_class_agnostic_nms", nms.use_class_agnostic_nms),
        ("soft_nms_sigma", nms.soft_nms_sigma != 0.0),
        ("use_static_shapes", nms.use_static_shapes),  # pads per class instead of to max_total_detections
    ) if value]
    if unsupported:
        return CombinedNms(None, f"batch_non_max_suppression sets {', '.join(unsupported)}")
    if config.model.ssd.HasField("mask_head_config"):
        return CombinedNms(None, "the model predicts masks")
    # Only a fixed-shape resizer's clip window is the whole image, [0, 0, 1, 1]: no box of the image lies outside
    # it, and change_coordinate_frame (the proto's default: on; the combined path cannot do it) subtracts 0 and
    # scales by 1, exactly nothing, so the combined path may leave it off. With a padding resizer the window is
    # smaller, anchors over the padding give boxes outside it, and the two paths clip those differently.
    resizer = config.model.ssd.image_resizer.WhichOneof("image_resizer_oneof")
    if resizer != "fixed_shape_resizer":
        return CombinedNms(None, f"a {resizer} (its clip window is not always the whole image)")
    combined = type(post)()
    combined.CopyFrom(post)
    combined.batch_non_max_suppression.use_combined_nms = True
    combined.batch_non_max_suppression.change_coordinate_frame = False
    function, _ = post_processing_builder.build(combined)
    return CombinedNms(function, "CombinedNonMaxSuppression (TFOD2's use_combined_nms)")


@contextmanager
def nms_replaced(model, function: Callable | None) -> Iterator[None]:
    """Trace ``model.postprocess`` with ``function`` as its NMS inside the block (nothing changes for None).

    SSDMetaArch keeps the NMS that model_builder built from the config in ``_non_max_suppression_fn``; swapping
    it for one built from a modified config is what model_builder would have done with that config."""
    if function is None:
        yield
        return
    original = model._non_max_suppression_fn
    model._non_max_suppression_fn = function
    try:
        yield
    finally:
        model._non_max_suppression_fn = original
