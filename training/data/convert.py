"""The data pipeline: read -> validate -> map classes -> split (the dataset's own, or seeded) -> TFRecord
shards + label map + metadata.

Output (``out_dir``)::

    train-00000-of-0000N.tfrecord ...   TFOD2 tf.Examples (also val-*, test-*; an empty split has no shards)
    label_map.pbtxt                     ids 1..N in class order, or an existing label map's (``label_map``)
    dataset.json                        counts per split and class, split source, seed, fractions, source, class map
    splits.json                         image keys (file names) per split
    report.json                         every validation problem

Everything is written into a temporary sibling directory that replaces ``out_dir`` only when complete, so
a failed or interrupted run (or ``strict`` mode finding problems, which fails before writing) never
leaves partial output. Nothing time-dependent is written: the same inputs give the same files.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .class_map import ClassMap, apply_class_map, load_class_map
from .images import ImageInfo, encode_image
from .label_map import LabelMapError, read_label_map, write_label_map, write_label_map_ids
from .own_split import OwnSplit, own_split_records
from .records import Dataset, ImageRecord
from .report import SKIPPED_IMAGE, SKIPPED_OBJECT, DatasetFormatError, ValidationReport
from .sources import OWN_SPLIT_WHERE, PathList, read_dataset
from .split import DEFAULT_FRACTIONS, SPLITS, check_fractions, split_records
from .tfrecord import make_example, write_shards
from .validate import BOX_TOLERANCE_PX, restrict_classes, validate_dataset

IMAGES_PER_SHARD = 1000  # automatic shard count: one shard per this many images


class OutputExistsError(FileExistsError):
    """``out_dir`` holds something that is not a previous detserve conversion (and no overwrite)."""


@dataclass
class ConversionResult:
    out_dir: Path
    class_names: list[str]
    shards: dict[str, list[Path]]  # split -> shard paths (empty list for an empty split)
    metadata: dict[str, Any]  # the content of dataset.json
    report: ValidationReport


def _count_objects(dataset: Dataset) -> int:
    return sum(len(r.objects) for r in dataset.records)


def load_dataset(
    fmt: str,
    report: ValidationReport,
    *,
    annotations: PathList | None = None,
    images: PathList | None = None,
    names: Path | str | None = None,
    class_map: ClassMap | str | Path | None = None,
    classes: Sequence[str] | None = None,
    box_tolerance: float = BOX_TOLERANCE_PX,
    progress: bool = False,
    own_requested: bool = False,
) -> tuple[Dataset, dict[str, ImageInfo], dict[str, int], OwnSplit | None]:
    """Read, validate, map and restrict classes. Returns the dataset ready to write, each image's info
    by key, the objects dropped by the class map per source class, and the dataset's own split (None
    when it declares none). Problems go to ``report``."""
    first = len(report.problems)
    raw, own = read_dataset(fmt, report, annotations, images, names, own_requested)
    # What the annotations listed = what the reader kept + what it had to skip.
    reader_skips = Counter(p.action for p in report.problems[first:])
    dataset, infos = validate_dataset(raw, report, box_tolerance=box_tolerance, progress=progress)
    dropped: dict[str, int] = {}
    if class_map is not None:
        class_map = load_class_map(class_map) if isinstance(class_map, str | Path) else class_map
        dataset, dropped = apply_class_map(dataset, class_map, report)
    if classes is not None:
        dataset = restrict_classes(dataset, classes, report)
    if len(set(dataset.class_names)) != len(dataset.class_names):
        raise DatasetFormatError(f"duplicate class names {dataset.class_names}")
    report.stats.update(
        images_read=len(raw.records) + reader_skips[SKIPPED_IMAGE],
        images_kept=len(dataset.records),
        objects_read=_count_objects(raw) + reader_skips[SKIPPED_OBJECT],
        objects_kept=_count_objects(dataset),
        objects_dropped_by_class_map=sum(dropped.values()),
    )
    return dataset, infos, dropped, own


def _read_fixed_label_map(label_map: Path) -> dict[int, str]:
    """An existing label map whose ids the conversion keeps (checked before the slow part)."""
    if not label_map.is_file():
        raise DatasetFormatError(f"--label-map {label_map}: file not found")
    try:
        id_to_name = read_label_map(label_map)
    except LabelMapError as e:
        raise DatasetFormatError(f"--label-map: {e}") from e
    names = list(id_to_name.values())
    if len(set(names)) != len(names):
        raise DatasetFormatError(f"--label-map {label_map}: a class name has two ids: {names}")
    return id_to_name


def _check_fixed_ids(id_to_name: dict[int, str], label_map: Path, records: list[ImageRecord]) -> None:
    """Every class with a box must have an id in the label map; its other classes are fine."""
    names = list(id_to_name.values())
    missing = [c for c in dict.fromkeys(o.label for r in records for o in r.objects) if c not in names]
    if missing:
        raise DatasetFormatError(f"{label_map} has no id for class(es) {', '.join(missing)} found in the data "
                                 f"(it has {', '.join(names)}); add them to it, or rename or drop them with --class-map")


def _shard_count(num_images: int, num_shards: int | None) -> int:
    wanted = num_shards if num_shards is not None else math.ceil(num_images / IMAGES_PER_SHARD)
    return max(1, min(wanted, num_images))


def _examples(
    records: list[ImageRecord], infos: dict[str, ImageInfo], label_to_id: dict[str, int], bar: tqdm
) -> Iterator:
    for record in records:
        image = encode_image(record.image_path, infos.get(record.key))
        yield make_example(record, image, label_to_id)
        bar.update()


def _split_stats(records: list[ImageRecord], class_names: list[str]) -> dict[str, Any]:
    boxes = Counter(o.label for r in records for o in r.objects)
    return {
        "images": len(records),
        "images_without_objects": sum(1 for r in records if not r.objects),
        "boxes": {c: boxes[c] for c in class_names},
        "difficult": sum(1 for r in records for o in r.objects if o.difficult),
    }


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists() or overwrite:
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not (out_dir / "dataset.json").is_file():
        raise OutputExistsError(f"{out_dir} is not empty and holds no previous conversion; use overwrite")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        old.rmdir()
        out_dir.rename(old)
        tmp.rename(out_dir)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()  # --overwrite of a plain file
    else:
        tmp.rename(out_dir)


def convert_dataset(
    fmt: str,
    out_dir: Path | str,
    *,
    annotations: PathList | None = None,
    images: PathList | None = None,
    names: Path | str | None = None,
    fractions: Sequence[float] | None = None,
    own_split: bool = False,
    label_map: Path | str | None = None,
    seed: int = 0,
    class_map: ClassMap | str | Path | None = None,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    num_shards: int | None = None,
    box_tolerance: float = BOX_TOLERANCE_PX,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
) -> ConversionResult:
    """Convert a VOC / COCO / YOLO dataset into TFOD2 TFRecords (see the module docstring for the layout).

    Split: ``fractions`` re-split every image (seeded); without them the dataset's own split is kept when
    it declares one (VOC ImageSets/Main lists, several COCO jsons, YOLO list files or data.yaml entries),
    else the default fractions are used. ``own_split``: require the dataset's own split. ``label_map``: an
    existing label_map.pbtxt whose ids (all of them) the output keeps; every class with a box must be in it.
    ``class_map``: a ClassMap, a ``src=dst,...`` spec or a YAML path. ``classes``: the final class list
    and label-map order (objects of other classes are skipped and reported). ``num_shards``: shards per
    split (at most one per image; default one per 1000 images). ``strict``: raise DataValidationError,
    before writing anything, if validation found any problem other than a conversion, a clip or a note.
    ``out_dir`` is replaced if it holds a previous conversion; anything else needs ``overwrite``.
    Raises DatasetFormatError when the input cannot be read at all or nothing usable is left.
    """
    if fractions is not None:
        if own_split:
            raise ValueError("give fractions or own_split, not both")
        fractions = check_fractions(fractions)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    if isinstance(class_map, str | Path):
        class_map = load_class_map(class_map)  # bad specs fail before the slow part
    id_to_name = _read_fixed_label_map(Path(label_map)) if label_map is not None else None

    report = ValidationReport()
    dataset, infos, dropped, own = load_dataset(
        fmt, report, annotations=annotations, images=images, names=names, class_map=class_map,
        classes=classes, box_tolerance=box_tolerance, progress=progress, own_requested=own_split,
    )
    if own_split and own is None:
        raise DatasetFormatError(f"--split own: the {fmt} dataset declares no split ({OWN_SPLIT_WHERE[fmt]})")
    if fractions is None and own is not None:
        splits = own_split_records(dataset.records, own, report)  # images in no split are reported here
        split_source = f"own: {own.source}"
    else:
        fractions = DEFAULT_FRACTIONS if fractions is None else fractions
        splits = split_records(dataset.records, fractions, seed)
        split_source = f"seeded: {','.join(f'{f:g}' for f in fractions)} with seed {seed}"
    records = [r for s in SPLITS for r in splits[s]]
    report.stats.update(images_kept=len(records), objects_kept=_count_objects(Dataset(records, [])))
    if echo is not None:
        echo(report.summary())
    if strict:
        report.check_strict()
    if not records:
        raise DatasetFormatError("no usable images left after validation")
    if id_to_name is not None:
        _check_fixed_ids(id_to_name, Path(label_map), records)  # type: ignore[arg-type]
    if not dataset.class_names and id_to_name is None:
        raise DatasetFormatError("no classes: the dataset has no objects and no class list was given")
    class_names = list(id_to_name.values()) if id_to_name is not None else list(dataset.class_names)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the result is an ordinary shared data directory
    try:
        label_map_path = tmp / "label_map.pbtxt"
        id_to_name = (write_label_map(class_names, label_map_path) if id_to_name is None
                      else write_label_map_ids(id_to_name, label_map_path))
        label_to_id = {name: i for i, name in id_to_name.items()}
        shards: dict[str, list[Path]] = {}
        with tqdm(total=len(records), desc="write", unit="img", disable=not progress) as bar:
            for split in SPLITS:
                if not splits[split]:
                    shards[split] = []
                    continue
                paths = write_shards(_examples(splits[split], infos, label_to_id, bar), tmp, split,
                                     _shard_count(len(splits[split]), num_shards))
                shards[split] = [out_dir / p.name for p in paths]

        metadata = {
            "format": fmt,
            "source": {"annotations": _str(annotations), "images": _str(images), "names": _str(names)},
            "split_source": split_source,
            "seed": seed,
            "fractions": None if fractions is None else dict(zip(SPLITS, fractions, strict=True)),
            "class_map": dict(class_map.mapping) if isinstance(class_map, ClassMap) else None,
            "classes": class_names,
            "label_map": {str(i): n for i, n in id_to_name.items()},
            "label_map_source": _str(label_map),
            "splits": {
                split: {**_split_stats(splits[split], class_names),
                        "shards": [p.name for p in shards[split]]}
                for split in SPLITS
            },
            "total": _split_stats(records, class_names),
            "dropped_by_class_map": dropped,
            "problems": report.counts(),
        }
        (tmp / "dataset.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (tmp / "splits.json").write_text(
            json.dumps({s: sorted(r.key for r in splits[s]) for s in SPLITS}, indent=1) + "\n"
        )
        (tmp / "report.json").write_text(report.to_json() + "\n")
        _check_out_dir(out_dir, overwrite)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if echo is not None:
        echo(_written_summary(out_dir, metadata))
    return ConversionResult(out_dir, class_names, shards, metadata, report)


def _str(path: PathList | None) -> str | None:
    if path is None:
        return None
    return str(path) if isinstance(path, Path | str) else ",".join(str(p) for p in path)


def _written_summary(out_dir: Path, metadata: dict[str, Any]) -> str:
    lines = [f"Wrote {out_dir} (classes: {', '.join(metadata['classes'])})", f"  split {metadata['split_source']}"]
    if metadata["label_map_source"]:
        ids = [int(i) for i in metadata["label_map"]]
        gaps = " (ids with gaps: fine for evaluation; detserve train expects 1..N)" if ids != list(
            range(1, len(ids) + 1)) else ""
        lines.append(f"  label-map ids from {metadata['label_map_source']}{gaps}")
    for split, stats in metadata["splits"].items():
        boxes = ", ".join(f"{c} {n}" for c, n in stats["boxes"].items())
        lines.append(f"  {split}: {stats['images']} images, {len(stats['shards'])} shard(s); boxes: {boxes}")
    if metadata["dropped_by_class_map"]:
        dropped = ", ".join(f"{c} {n}" for c, n in metadata["dropped_by_class_map"].items())
        lines.append(f"  dropped by class map: {dropped}")
    return "\n".join(lines)
