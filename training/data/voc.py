"""PASCAL VOC xml annotations: reading into ImageRecords, and writing (for the synthetic generator).

Only what a detector needs is read: ``<filename>``, ``<size>``, and each ``<object>``'s ``<name>``,
``<bndbox>``, ``<difficult>`` and ``<truncated>``. Problems in one file (malformed xml, an object without
a name or with a non-numeric box) are reported and skipped; they never stop the run.
Coordinates are kept as written: VOC's xmin..xmax already span the object in pixel units.
"""

from __future__ import annotations

import math
from pathlib import Path

from lxml import etree

from .images import IMAGE_EXTENSIONS
from .records import BoxObject, Dataset, ImageRecord
from .report import (
    SKIPPED_IMAGE,
    SKIPPED_OBJECT,
    USED_IMAGE_SIZE,
    DatasetFormatError,
    ValidationReport,
)

# No entity expansion or network access: annotation files come from anywhere.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _annotation_files(annotations: Path) -> list[Path]:
    if annotations.is_file():
        return [annotations]
    if not annotations.is_dir():
        raise DatasetFormatError(f"VOC annotations not found: {annotations}")
    files = sorted(annotations.glob("*.xml"))
    if not files:
        raise DatasetFormatError(f"no .xml files in {annotations}")
    return files


def default_images_dir(annotations: Path) -> Path:
    """Where VOC images are when no images dir is given: VOC's JPEGImages/, an images/ beside the
    annotations dir, or the annotations dir itself."""
    ann_dir = annotations if annotations.is_dir() else annotations.parent
    for candidate in (ann_dir.parent / "JPEGImages", ann_dir.parent / "images"):
        if candidate.is_dir():
            return candidate
    return ann_dir


def _text(element, path: str) -> str | None:
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _flag(element, path: str) -> bool:
    text = _text(element, path)
    try:
        return bool(int(float(text))) if text else False
    except ValueError:
        return False


def _size(root) -> tuple[int, int] | None:
    try:
        width, height = int(float(_text(root, "size/width") or "")), int(float(_text(root, "size/height") or ""))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _find_image_by_stem(images_dir: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (images_dir / f"{stem}{ext}", images_dir / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_voc_file(xml_path: Path, images_dir: Path, report: ValidationReport) -> ImageRecord | None:
    """One VOC file -> ImageRecord (boxes as written, not yet checked against the image), or None."""
    source = str(xml_path)
    try:
        root = etree.parse(str(xml_path), _PARSER).getroot()
    except (etree.XMLSyntaxError, OSError) as e:
        report.add("malformed_xml", source, field="xml", value=str(e).strip() or type(e).__name__, action=SKIPPED_IMAGE)
        return None
    if root.tag != "annotation":
        report.add("malformed_xml", source, field="root", value=f"<{root.tag}>", action=SKIPPED_IMAGE)
        return None

    filename = _text(root, "filename")
    if filename:
        image_path = images_dir / filename
        if not image_path.exists():
            # <filename> without extension (some tools), or with the old one after a re-encode
            # (face-mask-853 was published as PNG, re-encoded to JPEG).
            found = _find_image_by_stem(images_dir, str(Path(filename).with_suffix("")))
            if found is not None:
                if image_path.suffix:
                    report.add("filename_mismatch", source, field="filename",
                               value=f"{filename} not found, {found.name} is", action=f"used {found.name}")
                image_path = found
    else:
        image_path = _find_image_by_stem(images_dir, xml_path.stem)
        report.add(
            "missing_field", source, field="filename", value="<empty>",
            action=f"used {image_path.name}" if image_path else SKIPPED_IMAGE,
        )
        if image_path is None:
            return None

    size = _size(root)
    if size is None:
        report.add(
            "size_missing", source, field="size",
            value=f"{_text(root, 'size/width')}x{_text(root, 'size/height')}", action=USED_IMAGE_SIZE,
        )
    width, height = size or (0, 0)  # 0x0: the validation step takes the real size and skips the mismatch check

    objects: list[BoxObject] = []
    for index, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        if not name:
            report.add("missing_field", source, object_index=index, field="name", value="<empty>", action=SKIPPED_OBJECT)
            continue
        raw = {k: _text(obj, f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")}
        try:
            coords = {k: float(v) for k, v in raw.items()}  # type: ignore[arg-type]
            if not all(math.isfinite(c) for c in coords.values()):
                raise ValueError("not finite")
        except (TypeError, ValueError):
            value = ",".join(f"{k}={v}" for k, v in raw.items())
            report.add("bad_box_value", source, object_index=index, field="bndbox", value=value, action=SKIPPED_OBJECT)
            continue
        objects.append(
            BoxObject(
                name, coords["xmin"], coords["ymin"], coords["xmax"], coords["ymax"],
                difficult=_flag(obj, "difficult"), truncated=_flag(obj, "truncated"), source_index=index,
            )
        )
    return ImageRecord(image_path=image_path, width=width, height=height, objects=objects, source=source)


def read_voc(annotations: Path | str, images: Path | str | None, report: ValidationReport) -> Dataset:
    """Read a directory of VOC xml files (or one file). ``images`` defaults to :func:`default_images_dir`.

    ``class_names`` of the result are the labels found, sorted (VOC declares no class list).
    """
    annotations = Path(annotations)
    files = _annotation_files(annotations)
    images_dir = Path(images) if images is not None else default_images_dir(annotations)
    if not images_dir.is_dir():
        raise DatasetFormatError(f"images directory not found: {images_dir}")
    records = [r for f in files if (r := read_voc_file(f, images_dir, report)) is not None]
    labels = sorted({o.label for r in records for o in r.objects})
    return Dataset(records=records, class_names=labels)


def voc_xml(
    filename: str, width: int, height: int, objects: list[BoxObject], folder: str = "images", depth: int = 3
) -> bytes:
    """A VOC annotation document (the LabelImg layout), as bytes."""
    root = etree.Element("annotation")

    def sub(parent, tag: str, text: object | None = None):
        element = etree.SubElement(parent, tag)
        if text is not None:
            element.text = str(text)
        return element

    sub(root, "folder", folder)
    sub(root, "filename", filename)
    size = sub(root, "size")
    sub(size, "width", width)
    sub(size, "height", height)
    sub(size, "depth", depth)
    sub(root, "segmented", 0)
    for obj in objects:
        element = sub(root, "object")
        sub(element, "name", obj.label)
        sub(element, "pose", "Unspecified")
        sub(element, "truncated", int(obj.truncated))
        sub(element, "difficult", int(obj.difficult))
        box = sub(element, "bndbox")
        for key in ("xmin", "ymin", "xmax", "ymax"):
            value = getattr(obj, key)
            sub(box, key, int(value) if float(value).is_integer() else value)
    return etree.tostring(root, pretty_print=True)


def write_voc_annotation(
    path: Path | str, filename: str, width: int, height: int, objects: list[BoxObject], folder: str = "images"
) -> Path:
    path = Path(path)
    path.write_bytes(voc_xml(filename, width, height, objects, folder=folder))
    return path
