"""Synthetic detection dataset: filled shapes of N classes on textured backgrounds, written as PASCAL VOC.

For tests and for the embedded demo (a fresh machine has no dataset). Each class is a shape (by name if
it is one of SHAPES, else by position) in its own saturated colour with a little jitter; backgrounds are
desaturated gradients + noise + lines, so the classes are learnable but not trivial.
Boxes are exact: a shape drawn in box (x0, y0, x1, y1) covers pixels x0..x1-1 and y0..y1-1 and touches
all four sides (tests check it). Objects do not overlap, so no box hides another.
Seeded: image i is drawn from its own generator seeded with (seed, i), so the same seed gives
byte-identical files (with the same numpy and Pillow), and image i does not depend on how many are made.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .records import BoxObject
from .voc import write_voc_annotation

DEFAULT_CLASSES = ("circle", "square", "triangle")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "hexagon")
JPEG_QUALITY = 90


@dataclass
class SyntheticDataset:
    root: Path
    images_dir: Path
    annotations_dir: Path
    class_names: list[str]
    num_images: int
    boxes_per_class: dict[str, int] = field(default_factory=dict)


def class_shape(name: str, index: int) -> str:
    return name if name in SHAPES else SHAPES[index % len(SHAPES)]


def class_colour(index: int, num_classes: int) -> tuple[int, int, int]:
    """Saturated colours evenly spaced in hue, so classes differ in colour as well as shape."""
    r, g, b = colorsys.hsv_to_rgb(index / max(num_classes, 1), 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def shape_points(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Polygon vertices of ``shape`` filling box (x0, y0, x1, y1), touching pixels x0..x1-1, y0..y1-1."""
    x0, y0, x1, y1 = box
    r, b = x1 - 1, y1 - 1
    cx, cy = (x0 + r) / 2, (y0 + b) / 2
    w, h = r - x0, b - y0
    if shape == "triangle":
        return [(x0, b), (r, b), (cx, y0)]
    if shape == "diamond":
        return [(cx, y0), (r, cy), (cx, b), (x0, cy)]
    if shape == "hexagon":
        q = w / 4
        return [(x0 + q, y0), (r - q, y0), (r, cy), (r - q, b), (x0 + q, b), (x0, cy)]
    if shape == "cross":
        ax, ay = w / 3, h / 3
        return [(x0 + ax, y0), (r - ax, y0), (r - ax, y0 + ay), (r, y0 + ay), (r, b - ay), (r - ax, b - ay),
                (r - ax, b), (x0 + ax, b), (x0 + ax, b - ay), (x0, b - ay), (x0, y0 + ay), (x0 + ax, y0 + ay)]
    raise ValueError(f"unknown polygon shape {shape!r}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    else:
        draw.polygon(shape_points(shape, box), fill=colour)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # Gradient between two muted colours along a random direction...
    c0, c1 = rng.uniform(40, 200, size=(2, 3))
    c1 = c0 + (c1 - c0) * 0.6
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs / width * np.cos(angle) + ys / height * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    pixels = c0 + t[..., None] * (c1 - c0)
    # ...plus blotchy low-frequency texture and per-pixel noise.
    blotches = Image.fromarray(rng.integers(0, 256, size=(6, 6), dtype=np.uint8))
    blotches = np.asarray(blotches.resize((width, height), Image.BILINEAR), dtype=np.float32)
    pixels += (blotches[..., None] - 128) * rng.uniform(0.1, 0.3)
    pixels += rng.normal(0, rng.uniform(4, 14), size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        grey = int(rng.integers(30, 220))
        draw.line([tuple(rng.uniform(0, [width, height])) for _ in range(2)], fill=(grey, grey, grey),
                  width=int(rng.integers(1, 4)))
    return image


def _place(rng: np.random.Generator, width: int, height: int, taken: list[tuple[int, int, int, int]]):
    """A box not overlapping ``taken`` (with a 2 px gap), or None after a few tries."""
    side = min(width, height)
    for _ in range(30):
        w = int(rng.integers(int(side * 0.15), int(side * 0.4) + 1))
        h = int(np.clip(round(w * rng.uniform(0.8, 1.25)), 8, height - 2))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1] or t[3] + 2 <= box[1] for t in taken):
            return box
    return None


def generate_voc_dataset(
    out_dir: Path | str,
    num_images: int = 200,
    class_names: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    image_size: tuple[int, int] = (160, 320),
    objects_per_image: tuple[int, int] = (1, 4),
) -> SyntheticDataset:
    """Write ``out_dir/images/synth_00000.jpg`` ... and ``out_dir/annotations/synth_00000.xml`` ...

    Width and height are drawn independently from ``image_size`` (inclusive); each image gets
    ``objects_per_image`` (inclusive) non-overlapping objects, fewer only if they do not fit.
    """
    class_names = list(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be non-empty and unique: {class_names}")
    if image_size[0] < 32 or image_size[1] < image_size[0]:
        raise ValueError(f"image_size {image_size}: need 32 <= min <= max")
    if objects_per_image[0] < 0 or objects_per_image[1] < objects_per_image[0]:
        raise ValueError(f"objects_per_image {objects_per_image}: need 0 <= min <= max")
    root = Path(out_dir)
    images_dir, annotations_dir = root / "images", root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    # A rerun with fewer images must not leave the previous run's extra files in the dataset.
    for stale in [*images_dir.glob("synth_*.jpg"), *annotations_dir.glob("synth_*.xml")]:
        stale.unlink()
    colours = [class_colour(i, len(class_names)) for i in range(len(class_names))]
    counts: Counter[str] = Counter()

    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        width, height = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, size=2))
        image = _background(rng, width, height)
        draw = ImageDraw.Draw(image)
        objects: list[BoxObject] = []
        taken: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
            box = _place(rng, width, height, taken)
            if box is None:
                break
            taken.append(box)
            cls = int(rng.integers(len(class_names)))
            colour = tuple(int(c) for c in np.clip(np.add(colours[cls], rng.integers(-20, 21, size=3)), 0, 255))
            draw_shape(draw, class_shape(class_names[cls], cls), box, colour)
            objects.append(BoxObject(class_names[cls], *box))
            counts[class_names[cls]] += 1
        name = f"synth_{index:05d}"
        image.save(images_dir / f"{name}.jpg", format="JPEG", quality=JPEG_QUALITY)
        write_voc_annotation(annotations_dir / f"{name}.xml", f"{name}.jpg", width, height, objects)

    return SyntheticDataset(
        root=root, images_dir=images_dir, annotations_dir=annotations_dir, class_names=class_names,
        num_images=num_images, boxes_per_class={c: counts[c] for c in class_names},
    )
