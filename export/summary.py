"""The summary ``detserve export`` prints on stdout (an example is in docs/export.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detserve.client.contract import DETECTION_SIGNATURES, PREDICT_METHOD

from .gate import format_gate
from .parity import MARGIN, MIN_TOLERANCE
from .repository import directory_size
from .verify import LATENCY_RUNS

if TYPE_CHECKING:
    from .exporter import ExportResult


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _shape(dims) -> str:
    return "?" if dims is None else "[" + ", ".join("-1" if d < 0 else str(d) for d in dims) + "]"


def format_summary(result: ExportResult) -> str:
    lines = [f"exported {result.path} (version {result.version})", f"  source      {result.source}"]
    saved_model_pb = result.path / "saved_model.pb"
    variables = directory_size(result.path / "variables") if (result.path / "variables").exists() else 0
    lines.append(f"  size        {_megabytes(result.size_bytes)} (saved_model.pb {_megabytes(saved_model_pb.stat().st_size)}, "
                 f"variables {_megabytes(variables)}, warmup {_megabytes(result.warmup.size_bytes)})")
    size = f"{result.input_size[0]}x{result.input_size[1]}" if result.input_size else "unknown"
    lines.append(f"  input size  {size} (model_info signature; images of any size are resized in the graph)")
    lines.append(f"  signatures  (method {PREDICT_METHOD})")
    for name, signature in result.signatures.items():
        inputs = ", ".join(f"{k} {dtype} {_shape(dims)}" for k, (dtype, dims) in signature["inputs"].items())
        lines.append(f"    {name:<16} {inputs}")
        for key, (dtype, dims) in signature["outputs"].items():
            lines.append(f"    {'':<16}   -> {key} {dtype} {_shape(dims)}")
    batch = ("mapped per image: the source SavedModel is fixed at batch 1" if result.batch_mapped
             else "dynamic (server-side batching merges requests)")
    lines.append(f"  batch       {batch}")
    warmup = result.warmup
    lines.append(f"  warmup      {warmup.records} PredictionLog records ({', '.join(warmup.signatures)} at batch "
                 f"{', '.join(map(str, warmup.batch_sizes))}), {_megabytes(warmup.size_bytes)}")
    lines.extend(_verification_lines(result.verification))
    if result.gate is not None:
        lines.append(f"  quality     {format_gate(result.gate)}")
    if result.pruned or result.protected:
        kept = ", ".join(f"{v} ({'; '.join(why)})" for v, why in sorted(result.protected.items()))
        lines.append(f"  pruned      versions {', '.join(map(str, result.pruned)) or 'none'}"
                     + (f"; kept for the serving config: {kept}" if kept else ""))
    for note in result.notes:
        lines.append(f"  note        {note}")
    return "\n".join(lines)


def _verification_lines(verification: dict) -> list[str]:
    """The verified, tolerance and latency lines, from detserve.export.verify's result."""
    checks = verification.get("checks", [])
    compared = sum(c.get("compared", 0) for c in checks)
    lines = [f"  verified    OK: {len(checks)} checks in a fresh process with plain TensorFlow, {compared} "
             f"detections matched (max |score diff| {verification.get('max_score_diff', 0):.1e}, "
             f"max |box diff| {verification.get('max_box_diff', 0):.1e}, NMS flips {verification.get('nms_flips', 0)})"]
    tolerance = verification.get("tolerance")
    if tolerance and tolerance.get("score_spread") is not None:
        lines.append(f"  tolerance   score {tolerance['score']:.1e}, box {tolerance['box']:.1e}: {MARGIN:g}x the source's own "
                     f"batch-vs-single spread on this machine (score {tolerance['score_spread']:.1e}, box "
                     f"{tolerance['box_spread']:.1e}), at least {MIN_TOLERANCE:.0e}; NMS IoU threshold "
                     f"{tolerance['nms_iou_threshold']:.3g}")
    latency = verification.get("latency_ms", {})
    if latency:
        image = verification.get("image_size", ["?", "?"])
        parts = []
        for signature in DETECTION_SIGNATURES:
            if signature in latency:
                parts.append(f"{signature} " + ", ".join(
                    f"batch {b}: {ms:.0f} ms ({ms / int(b):.0f} ms/image)" for b, ms in latency[signature].items()))
        lines.append(f"  latency     median of {LATENCY_RUNS} on {image[0]}x{image[1]} images, this machine: " + "; ".join(parts))
    return lines
