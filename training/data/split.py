"""Seeded, deterministic train/val/test split.

Records are ordered by a seeded hash of their key (the image file name) and cut by the fractions, so
the split depends only on the set of images and the seed: not on the order the files were listed in,
nor on the Python version (random.shuffle's algorithm is not guaranteed to stay the same).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .records import ImageRecord

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (or two values, test = 0) -> validated fractions summing to 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise ValueError(f"split {text!r}: expected numbers like 0.8,0.1,0.1") from e
    if len(values) == 2:
        values.append(0.0)
    return check_fractions(values)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"split {list(fractions)}: expected train,val,test fractions")
    # train may be 0: a held-out test (or val) set is converted on its own (--split 0,0,1).
    if any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"split {list(fractions)}: fractions must be >= 0")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split {list(fractions)}: fractions must sum to 1 (they sum to {sum(fractions):g})")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Image counts per split: largest remainder, then every split with a fraction > 0 gets at least
    one image when there are enough images (taken from the largest split)."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _rank(key: str, seed: int) -> tuple[bytes, str]:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest(), key


def split_records(
    records: Sequence[ImageRecord], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[ImageRecord]]:
    """{"train": [...], "val": [...], "test": [...]}; each list in the seeded hash order."""
    fractions = check_fractions(fractions)
    if len({r.key for r in records}) != len(records):
        raise ValueError("records with duplicate keys cannot be split deterministically; validate first")
    ordered = sorted(records, key=lambda r: _rank(r.key, seed))
    counts = split_counts(len(ordered), fractions)
    result, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        result[name] = ordered[start : start + count]
        start += count
    return result
