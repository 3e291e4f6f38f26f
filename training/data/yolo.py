"""YOLO txt labels: one ``<stem>.txt`` per image, lines ``class cx cy w h`` normalised to [0, 1],
plus a names file (one class name per line, or a YOLO ``data.yaml`` with ``names``).

The image list drives the reading: an image without a txt has no objects (a negative example);
a txt without an image is reported. Converting to pixels needs the image size, so this reader opens
each image's header (not the pixels) and reports images it cannot open.
Problems name the object by its 1-based line number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import yaml

from .images import IMAGE_EXTENSIONS, ImageLoadError, open_image
from .own_split import read_image_list
from .records import BoxObject, Dataset, ImageRecord
from .report import SKIPPED_IMAGE, SKIPPED_OBJECT, DatasetFormatError, ValidationReport

_RANGE_EPS = 1e-6  # float noise from tools that compute the normalised values
_NOT_LABELS = ("classes.txt", "train.txt", "val.txt", "valid.txt", "test.txt")


def read_names(path: Path | str) -> list[str]:
    """Class names by YOLO index: a txt file (one per line) or a yaml with ``names`` (list or {index: name})."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"YOLO names file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        try:
            names = (yaml.safe_load(path.read_text()) or {}).get("names")
        except (yaml.YAMLError, AttributeError) as e:
            raise DatasetFormatError(f"{path}: not a YOLO data yaml with 'names': {e}") from e
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list):
            raise DatasetFormatError(f"{path}: 'names' is missing or not a list")
        names = [str(n).strip() for n in names]
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetFormatError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise DatasetFormatError(f"{path}: duplicate class names {names}")
    return names


def default_labels_dir(images_dir: Path) -> Path:
    """The ultralytics layout (``.../images/x`` -> ``.../labels/x``) if it exists, else the images dir."""
    parts = images_dir.parts
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        candidate = Path(*parts[:i], "labels", *parts[i + 1:])
        if candidate.is_dir():
            return candidate
    return images_dir


def _parse_line(line: str, names: list[str], source: str, line_no: int, report: ValidationReport):
    """-> (label, cx, cy, w, h) or None after reporting why the line is skipped."""
    fields = line.split()
    if len(fields) != 5:
        report.add("yolo_bad_line", source, object_index=line_no, field="fields",
                   value=f"{len(fields)} fields: {line.strip()!r}", action=SKIPPED_OBJECT)
        return None
    try:
        class_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        report.add("yolo_bad_line", source, object_index=line_no, field="value",
                   value=repr(line.strip()), action=SKIPPED_OBJECT)
        return None
    if not class_value.is_integer() or not 0 <= class_value < len(names):
        report.add("unknown_class", source, object_index=line_no, field="class",
                   value=f"{fields[0]} (names has {len(names)})", action=SKIPPED_OBJECT)
        return None
    for i, (key, value) in enumerate(zip(("cx", "cy", "w", "h"), values, strict=True)):
        if not math.isfinite(value) or not -_RANGE_EPS <= value <= 1 + _RANGE_EPS:
            report.add("yolo_value_out_of_range", source, object_index=line_no, field=key,
                       value=fields[1 + i], action=SKIPPED_OBJECT)
            return None
    return (names[int(class_value)], *values)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_yolo_images(image_files: list[Path], labels_dir_of: Callable[[Path], Path], class_names: list[str],
                     report: ValidationReport) -> list[ImageRecord]:
    """One record per image (size from its header), objects from ``labels_dir_of(image)/<stem>.txt``."""
    records: list[ImageRecord] = []
    for image_path in image_files:
        try:
            with open_image(image_path) as image:
                width, height = image.size
        except ImageLoadError as e:
            report.add(e.kind, str(image_path), field="image", value=str(e), action=SKIPPED_IMAGE)
            continue
        label_path = labels_dir_of(image_path) / f"{image_path.stem}.txt"
        record = ImageRecord(image_path=image_path, width=width, height=height,
                             source=str(label_path if label_path.exists() else image_path))
        if label_path.exists():
            for line_no, line in enumerate(label_path.read_text(errors="replace").splitlines(), start=1):
                if not line.strip():
                    continue
                parsed = _parse_line(line, class_names, record.source, line_no, report)
                if parsed is None:
                    continue
                label, cx, cy, w, h = parsed
                record.objects.append(BoxObject(
                    label, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                    source_index=line_no,
                ))
        records.append(record)
    return records


def read_yolo(
    images: Path | str, labels: Path | str | None, names: Path | str, report: ValidationReport
) -> Dataset:
    """Read every image in ``images`` with its label file from ``labels`` (default :func:`default_labels_dir`).

    ``class_names`` are the names file's, in YOLO index order.
    """
    images_dir = Path(images)
    if not images_dir.is_dir():
        raise DatasetFormatError(f"images directory not found: {images_dir}")
    labels_dir = Path(labels) if labels is not None else default_labels_dir(images_dir)
    if not labels_dir.is_dir():
        raise DatasetFormatError(f"YOLO labels directory not found: {labels_dir}")
    class_names = read_names(names)

    image_files = _image_files(images_dir)
    stems = {p.stem for p in image_files}
    names_path = Path(names).resolve()
    for txt in sorted(labels_dir.glob("*.txt")):
        # classes.txt is where LabelImg puts the names, next to the labels; train.txt etc. list images.
        if txt.stem not in stems and txt.resolve() != names_path and txt.name not in _NOT_LABELS:
            report.add("image_missing", str(txt), field="image", value=f"no image named {txt.stem}.*",
                       action=SKIPPED_IMAGE)
    records = read_yolo_images(image_files, lambda _: labels_dir, class_names, report)
    return Dataset(records=records, class_names=class_names)


def yaml_splits(path: Path | str) -> dict[str, list[str]]:
    """A data.yaml's ``train`` / ``val`` / ``test`` entries (each a string or a list), by split; {} for a txt
    names file or a yaml without them."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError):
        return {}  # read_names says what is wrong with the file
    if not isinstance(data, dict):
        return {}
    found = {}
    for split in ("train", "val", "test"):
        value = data.get(split)
        if value:
            found[split] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return found


def _resolve_entry(yaml_path: Path, base: Path, split: str, entry: str) -> Path:
    candidate = Path(entry) if Path(entry).is_absolute() else base / entry
    if not candidate.exists() and entry.startswith("../"):
        candidate = base / entry[3:]  # Roboflow's data.yaml says ../train/images for train/images beside it
    if not candidate.exists():
        raise DatasetFormatError(f"{yaml_path}: {split}: {entry!r} not found (looked for {candidate})")
    return candidate


def read_yolo_yaml_splits(names: Path | str, report: ValidationReport) -> tuple[Dataset, dict[str, list[Path]]]:
    """Read the images a data.yaml's train/val/test entries name (folders of images, or txt lists of image
    paths; relative to its ``path``, else to the yaml's folder), labels from the ``labels/`` folder that
    mirrors each image's ``images/`` folder. Returns the dataset and the image files per split."""
    yaml_path = Path(names)
    class_names = read_names(yaml_path)
    splits = yaml_splits(yaml_path)
    if not splits:
        raise DatasetFormatError(f"{yaml_path}: no train/val/test entries; pass --images")
    declared = (yaml.safe_load(yaml_path.read_text()) or {}).get("path")
    base = yaml_path.parent / declared if declared else yaml_path.parent
    files_by_split: dict[str, list[Path]] = {}
    for split, entries in splits.items():
        files: list[Path] = []
        for entry in entries:
            target = _resolve_entry(yaml_path, base, split, entry)
            if target.is_dir():
                files.extend(_image_files(target))
            else:
                files.extend(image for _, image in read_image_list(target))
        files_by_split[split] = files
    records = read_yolo_images([f for fs in files_by_split.values() for f in fs],
                               lambda image: default_labels_dir(image.parent), class_names, report)
    return Dataset(records=records, class_names=class_names), files_by_split
