"""Annotated images: labelled boxes drawn on the original image (Pillow only)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detections import Detection

__all__ = ["annotate", "color_for"]


def color_for(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated colour per class id (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size
        return ImageFont.load_default()


def annotate(image: Image.Image | np.ndarray, detections: Sequence[Detection]) -> Image.Image:
    """A copy of ``image`` (RGB) with each detection's box and ``label score`` drawn on it."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.size) / 640
    width = max(2, round(2 * scale))
    font = _font(max(11, round(12 * scale)))
    for detection in detections:
        color = color_for(detection.class_id)
        box = detection.box
        draw.rectangle([box.xmin, box.ymin, box.xmax, box.ymax], outline=color, width=width)
        text = f"{detection.label} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        x = min(max(0.0, box.xmin), max(0.0, canvas.width - text_w - 4))
        y = box.ymin - text_h - 4 if box.ymin - text_h - 4 >= 0 else box.ymin
        draw.rectangle([x, y, x + text_w + 4, y + text_h + 4], fill=color)
        draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if sum(color) > 382 else (255, 255, 255),
                  font=font)
    return canvas
