"""What "the same answer" means for a detector, and how close two answers of one model must be.

Two runs of one detector on one image differ by float rounding whenever the arithmetic differs: another
batch size (oneDNN and cuDNN pick kernels per shape), another device, TF32 on a GPU, another process. How
large that is depends on the hardware and the model, so no fixed tolerance fits every machine. The rule:

1. **Measure the noise.** The source model runs each parity image alone and inside a batch of copies of
   itself (same pixels, other kernels), in the exporting process, on the hardware that exports. The
   *spread* is the largest score and box-coordinate difference between the two runs' paired detections.
2. **Derive the tolerance**: ``MARGIN`` times the spread, at least ``MIN_TOLERANCE`` (float32 rounding of a
   score in [0, 1] is ~1e-7; runs in another process may round differently than the measured batches).
   A spread so large that the tolerance would pass ``MAX_TOLERANCE`` is refused: a real defect (a wrong
   resize shifts boxes and scores by 1e-2 and more) would hide in it.
3. **Compare detection sets.** Detections are paired one to one: same class, IoU >= ``PAIR_IOU`` (NMS
   keeps no two detections of a class overlapping by more than its IoU threshold, so a pair is
   unambiguous). A pair must agree within the tolerance. A detection without a partner is a difference
   unless one of the discontinuities of a detector's post-processing explains it:

   - the score floor or the top-k cut: its score is within the tolerance of where the comparison stops;
   - non-max suppression: the other side holds a detection of its class, scoring at least as high, whose
     IoU with it can reach NMS's IoU threshold within the box tolerance (a near-threshold overlap that
     rounding tips either way), or one that an already explained detection could have suppressed in
     turn (the cascade of one flip).

A swapped batch row, a different resize, or class ids shifted by the label offset move scores and boxes by
far more than any tolerance and leave detections without partners that nothing explains; ``diagnose``
names the likely cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from detserve.client.contract import DETECTION_BOXES, DETECTION_CLASSES, DETECTION_SCORES, NUM_DETECTIONS

MARGIN = 10.0  # over the measured spread: other images and another process may round a little worse
MIN_TOLERANCE = 1e-4
MAX_TOLERANCE = 0.02
PAIR_IOU = 0.9
SCORE_FLOOR = 0.05
MIN_COMPARED = 10  # lower the floor so that at least this many detections per image are compared
DEFAULT_NMS_IOU = 0.6  # TFOD2's SSD configs (batch_non_max_suppression.iou_threshold)
PARITY_BATCH = 8
# For comparisons without a measurement (e.g. a client's uint8 resize against the graph's float resize).
DEFAULT_TOLERANCE = 2e-3


@dataclass(frozen=True)
class Tolerance:
    """How far two runs of one model may differ (see the module docstring for where the numbers come from)."""

    score: float = DEFAULT_TOLERANCE
    box: float = DEFAULT_TOLERANCE
    nms_iou_threshold: float = DEFAULT_NMS_IOU
    class_agnostic_nms: bool = False
    nms_score_threshold: float = 0.0  # the model drops detections below it: a cut like the floor
    score_spread: float | None = None  # the measured noise the tolerances were derived from
    box_spread: float | None = None

    @classmethod
    def from_spread(cls, score_spread: float, box_spread: float, nms_iou_threshold: float | None = None,
                    class_agnostic_nms: bool = False, nms_score_threshold: float = 0.0) -> Tolerance:
        return cls(score=max(MARGIN * score_spread, MIN_TOLERANCE), box=max(MARGIN * box_spread, MIN_TOLERANCE),
                   nms_iou_threshold=DEFAULT_NMS_IOU if nms_iou_threshold is None else float(nms_iou_threshold),
                   class_agnostic_nms=class_agnostic_nms, nms_score_threshold=float(nms_score_threshold),
                   score_spread=float(score_spread), box_spread=float(box_spread))

    def problem(self) -> str:
        """Why these tolerances are too loose to verify anything, or ""."""
        if max(self.score, self.box) <= MAX_TOLERANCE:
            return ""
        measured = (f"the source model's own batch-vs-single spread (score {self.score_spread:.2e}, box "
                    f"{self.box_spread:.2e}) gives " if self.score_spread is not None else "")
        return (f"{measured}tolerances score {self.score:.2e}, box {self.box:.2e}, above {MAX_TOLERANCE}: too loose "
                "to tell a defect from rounding")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Tolerance:
        return cls(**dict(data))


@dataclass
class Detections:
    """One image's valid detections (num_detections slots), in score order as the model gave them."""

    boxes: np.ndarray  # [n, 4] normalised ymin, xmin, ymax, xmax
    scores: np.ndarray  # [n]
    classes: np.ndarray  # [n] int64
    slots: int  # the output's N: a full output may have been cut by top-k

    @classmethod
    def of(cls, outputs: Mapping[str, np.ndarray], index: int = 0) -> Detections:
        count = int(round(float(np.asarray(outputs[NUM_DETECTIONS])[index])))
        scores = np.asarray(outputs[DETECTION_SCORES], np.float64)
        return cls(boxes=np.asarray(outputs[DETECTION_BOXES], np.float64)[index][:count],
                   scores=scores[index][:count],
                   classes=np.rint(np.asarray(outputs[DETECTION_CLASSES])[index][:count]).astype(np.int64),
                   slots=int(scores.shape[-1]))

    def __len__(self) -> int:
        return len(self.scores)

    def describe(self, i: int) -> str:
        return f"class {self.classes[i]} score {self.scores[i]:.4f} box {np.round(self.boxes[i], 4).tolist()}"


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` (normalised ymin, xmin, ymax, xmax)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    inter_h = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_w = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_h * inter_w
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_range(box: np.ndarray, boxes: np.ndarray, slack: float) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest IoU of ``box`` with each of ``boxes`` when every coordinate of both may move
    by ``slack``: each side of the intersection and of either box changes by at most 2 * slack."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    inter_h = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    inter_w = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    d = 2 * slack

    def area(h, w, grow):
        return np.clip(h + grow, 0, None) * np.clip(w + grow, 0, None)

    h, w = box[2] - box[0], box[3] - box[1]
    hs, ws = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    inter_lo, inter_hi = area(inter_h, inter_w, -d), area(inter_h, inter_w, d)
    union_hi = area(h, w, d) + area(hs, ws, d) - inter_lo
    union_lo = np.maximum(area(h, w, -d) + area(hs, ws, -d) - inter_hi, inter_hi)
    low = np.where(union_hi > 0, inter_lo / np.where(union_hi > 0, union_hi, 1), 0.0)
    high = np.where(union_lo > 0, np.minimum(inter_hi / np.where(union_lo > 0, union_lo, 1), 1.0), 1.0)
    return low, high


def pair(reference: Detections, candidate: Detections, lowest: float, pair_iou: float = PAIR_IOU,
         same_class: bool = True) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) of the same detection: best reference scores first, each taking the unused
    candidate with IoU >= pair_iou (and the same class) whose score is closest."""
    used = np.zeros(len(candidate), bool)
    pairs = []
    for i in np.argsort(-reference.scores, kind="stable"):
        if reference.scores[i] < lowest:
            break
        close = ~used & (iou(reference.boxes[i], candidate.boxes) >= pair_iou)
        if same_class:
            close &= candidate.classes == reference.classes[i]
        if close.any():
            options = np.flatnonzero(close)
            j = int(options[np.argmin(np.abs(candidate.scores[options] - reference.scores[i]))])
            used[j] = True
            pairs.append((int(i), j))
    return pairs


def spread(reference: Detections, candidate: Detections, floor: float = SCORE_FLOOR) -> tuple[float, float]:
    """(max |score difference|, max |box coordinate difference|) over the paired detections of two runs."""
    score, box = 0.0, 0.0
    for i, j in pair(reference, candidate, _comparison_floor(reference, floor)):
        score = max(score, abs(float(reference.scores[i] - candidate.scores[j])))
        box = max(box, float(np.abs(reference.boxes[i] - candidate.boxes[j]).max()))
    return score, box


def _comparison_floor(reference: Detections, floor: float) -> float:
    ranked = np.sort(reference.scores)[::-1]
    if len(ranked) >= MIN_COMPARED:
        return min(floor, float(ranked[MIN_COMPARED - 1]))
    return min(floor, float(ranked[-1])) if len(ranked) else floor


def _explained_by_nms(side: Detections, i: int, other: Detections, tolerance: Tolerance,
                      explained_other: np.ndarray) -> bool:
    """Could non-max suppression on ``other`` have removed ``side``'s detection i (or kept it) by rounding?"""
    rivals = other.scores >= side.scores[i] - tolerance.score
    if not tolerance.class_agnostic_nms:
        rivals &= other.classes == side.classes[i]
    if not rivals.any():
        return False
    threshold = tolerance.nms_iou_threshold
    low, high = iou_range(side.boxes[i], other.boxes, tolerance.box)
    near_threshold = rivals & (low <= threshold) & (high >= threshold)
    # A rival that is itself an explained flip may suppress this one outright (the cascade of a flip).
    cascade = rivals & explained_other & (high >= threshold)
    return bool(near_threshold.any() or cascade.any())


def compare_detections(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                       ref_index: int = 0, cand_index: int = 0, score_tolerance: float | None = None,
                       box_tolerance: float | None = None, floor: float = SCORE_FLOOR,
                       tolerance: Tolerance | None = None) -> dict:
    """Compare one image's detections (batch rows ``ref_index``/``cand_index``) by the module's rule.

    ``tolerance`` (or the two scalar overrides, for ad-hoc comparisons) defaults to DEFAULT_TOLERANCE.
    Compared: every reference detection scoring at least ``floor`` (lowered to the MIN_COMPARED-th best
    score if fewer pass), and every candidate detection above that floor plus the score tolerance.
    Returns {"ok", "compared", "max_score_diff", "max_box_diff", "nms_flips", "problem"}.
    """
    tolerance = tolerance or Tolerance()
    if score_tolerance is not None:
        tolerance = replace(tolerance, score=score_tolerance)
    if box_tolerance is not None:
        tolerance = replace(tolerance, box=box_tolerance)
    ref, cand = Detections.of(reference, ref_index), Detections.of(candidate, cand_index)
    result = {"ok": True, "compared": 0, "max_score_diff": 0.0, "max_box_diff": 0.0, "nms_flips": 0, "problem": ""}
    lowest = _comparison_floor(ref, floor)

    pairs = pair(ref, cand, -np.inf)
    for i, j in pairs:
        if ref.scores[i] < lowest and cand.scores[j] < lowest + tolerance.score:
            continue
        score_diff = abs(float(ref.scores[i] - cand.scores[j]))
        box_diff = float(np.abs(ref.boxes[i] - cand.boxes[j]).max())
        result["compared"] += 1
        result["max_score_diff"] = max(result["max_score_diff"], score_diff)
        result["max_box_diff"] = max(result["max_box_diff"], box_diff)
        if result["ok"] and (score_diff > tolerance.score or box_diff > tolerance.box):
            result["ok"] = False
            result["problem"] = (f"reference detection {ref.describe(i)} differs from the exported one by score "
                                 f"{score_diff:.2e}, box {box_diff:.2e} (tolerances {tolerance.score:.1e}, "
                                 f"{tolerance.box:.1e})")

    def unpaired(side: Detections, paired: list[int], start: float) -> np.ndarray:
        mask = side.scores >= start
        mask[paired] = False
        return mask

    def cut(side: Detections, other: Detections, k: int, start: float) -> bool:
        """Within the tolerance of the floor, or of the lowest score of the other side's full output."""
        if side.scores[k] <= max(start, tolerance.nms_score_threshold) + tolerance.score:
            return True
        return len(other) == other.slots and side.scores[k] <= float(other.scores.min()) + tolerance.score

    lonely_ref = unpaired(ref, [i for i, _ in pairs], lowest)
    lonely_cand = unpaired(cand, [j for _, j in pairs], lowest + tolerance.score)
    for mask, side, other, start in ((lonely_ref, ref, cand, lowest), (lonely_cand, cand, ref, lowest)):
        for k in np.flatnonzero(mask):
            if cut(side, other, k, start):
                mask[k] = False
    # NMS flips, to a fixed point: explaining one detection may explain the one it suppresses. Not excused: two
    # overlapping detections of near-equal score that each side resolves the other way, which looks exactly like
    # one box moved (a defect); verification fails closed on it.
    explained_ref, explained_cand = np.zeros(len(ref), bool), np.zeros(len(cand), bool)
    changed = True
    while changed:
        changed = False
        for mask, explained, side, other, explained_other in (
                (lonely_ref, explained_ref, ref, cand, explained_cand),
                (lonely_cand, explained_cand, cand, ref, explained_ref)):
            for k in np.flatnonzero(mask & ~explained):
                if _explained_by_nms(side, k, other, tolerance, explained_other):
                    explained[k] = changed = True
    result["nms_flips"] = int(explained_ref.sum() + explained_cand.sum())
    if result["ok"]:
        for mask, explained, side, label in ((lonely_ref, explained_ref, ref, "reference"),
                                             (lonely_cand, explained_cand, cand, "exported")):
            left = np.flatnonzero(mask & ~explained)
            if len(left):
                result["ok"] = False
                result["problem"] = (f"{label} detection {side.describe(int(left[0]))} has no counterpart "
                                     f"(same class, IoU >= {PAIR_IOU}); {len(left)} such")
                break
    if not result["ok"]:
        cause = diagnose(ref, cand, lowest, tolerance)
        if cause:
            result["problem"] += f": {cause}"
    return result


def diagnose(ref: Detections, cand: Detections, lowest: float, tolerance: Tolerance) -> str:
    """A likely cause of a failed comparison, from how the detections differ ("" if none stands out)."""
    compared = int((ref.scores >= lowest).sum())
    if not compared:
        return ""
    # Class ids shifted by a constant (a label_id_offset dropped or applied twice).
    any_class = pair(ref, cand, lowest, same_class=False)
    shifts = [int(cand.classes[j] - ref.classes[i]) for i, j in any_class
              if abs(ref.scores[i] - cand.scores[j]) <= tolerance.score]
    if shifts:
        values, counts = np.unique(shifts, return_counts=True)
        shift, count = int(values[np.argmax(counts)]), int(counts.max())
        if shift != 0 and count >= max(2, compared // 2):
            return (f"class ids are shifted by {shift:+d} ({count} of {compared} detections match otherwise): "
                    "a label-map id offset dropped or applied twice?")
    # The same objects, found slightly elsewhere with other scores: another input than the source saw.
    loose = pair(ref, cand, lowest, pair_iou=0.5)
    if len(loose) >= max(2, compared // 2):
        box = max(float(np.abs(ref.boxes[i] - cand.boxes[j]).max()) for i, j in loose)
        score = max(abs(float(ref.scores[i] - cand.scores[j])) for i, j in loose)
        if box > tolerance.box or score > tolerance.score:
            return (f"{len(loose)} of {compared} detections overlap their counterpart (IoU >= 0.5) but move by up "
                    f"to {box:.3f} in box and {score:.3f} in score: the model saw another image than the source "
                    "did (a different resize, colour order or preprocessing?)")
    if len(loose) < compared // 2:
        return f"only {len(loose)} of {compared} detections have a counterpart even loosely: a different image or model?"
    return ""


def parity_group(images: Sequence[np.ndarray]) -> list[int]:
    """Indices of the largest set of equal-shape images (the first such set): the images a batch can hold."""
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    return max(groups.values(), key=len) if groups else []


def parity_rows(images: Sequence[np.ndarray], size: int = PARITY_BATCH) -> list[int]:
    """The images of the parity batch, by index: the equal-shape group repeated to ``size`` rows."""
    group = parity_group(images)
    if len(group) == 2:  # a a a b a b b b: no roll or reversal of it maps every row onto its own image
        return [group[bit] for bit in (0, 0, 0, 1, 0, 1, 1, 1)][:size]
    # a b c d | b c d a: rotated on each pass, so neither reversing nor rolling the rows maps every image
    # onto a row of itself
    return [group[(k + k // len(group)) % len(group)] for k in range(size)] if group else []


def measure_tolerance(run, images: Sequence[np.ndarray], reference: Sequence[Mapping[str, np.ndarray]],
                      nms_iou_threshold: float | None = None, class_agnostic_nms: bool = False,
                      nms_score_threshold: float = 0.0) -> Tolerance:
    """The tolerance for this model on this hardware: ``run`` (uint8 [B, H, W, 3] -> outputs) on each
    parity image inside a batch of PARITY_BATCH copies of itself, against its ``reference`` run alone."""
    score, box = 0.0, 0.0
    for index in parity_group(images):
        batched = run(np.repeat(images[index][np.newaxis], PARITY_BATCH, axis=0))
        alone = Detections.of(reference[index])
        for row in range(PARITY_BATCH):
            row_score, row_box = spread(alone, Detections.of(batched, row))
            score, box = max(score, row_score), max(box, row_box)
    return Tolerance.from_spread(score, box, nms_iou_threshold, class_agnostic_nms, nms_score_threshold)
