"""``detserve data`` and ``detserve synth`` (plugged into the detserve CLI through entry points).

Bad input exits 1 with a one-line message (click.ClickException); the validation summary is printed
before that, so the line only has to say what failed.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..logs import quiet_tensorflow

quiet_tensorflow()

from .class_map import ClassMapError
from .report import DatasetFormatError, DataValidationError
from .split import parse_fractions
from .synthetic import DEFAULT_CLASSES


def _names_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise click.ClickException(f"--classes {text!r}: expected comma-separated class names")
    return names


@click.command("data")
@click.option("--format", "fmt", type=click.Choice(["voc", "coco", "yolo"]), required=True,
              help="Annotation format.")
@click.option("--images",
              help="Images directory (voc: default JPEGImages/ or images/ beside the annotations; "
                   "coco: default each json's folder, or one directory per json, comma-separated; "
                   "yolo: required unless --names is a data.yaml with train/val/test).")
@click.option("--annotations",
              help="voc: directory of xml; coco: the json file, or one json per split (comma-separated, or a "
                   "directory of them); yolo: labels directory (default: labels/ beside images/, else the images "
                   "directory).")
@click.option("--names", type=click.Path(path_type=Path), help="yolo: class names file (txt or data.yaml).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--split", "split_text", default="auto", show_default=True,
              help="train,val,test fractions (re-split every image, e.g. 0,0,1 for a test set alone); own: "
                   "the dataset's own split (error if it has none); auto: its own split when it declares one, "
                   "else 0.8,0.1,0.1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Split seed.")
@click.option("--label-map", type=click.Path(path_type=Path),
              help="Existing label_map.pbtxt whose ids to keep (e.g. the training set's, for a test set converted "
                   "apart); every class with a box must be in it.")
@click.option("--class-map", help="src=dst,src2=drop or a YAML file {src: dst}. Unmentioned classes keep their name.")
@click.option("--classes", help="Final classes in label-map order; objects of other classes are skipped.")
@click.option("--strict", is_flag=True, help="Fail (and write nothing) on any problem other than conversions/clips.")
@click.option("--shards", type=click.IntRange(min=1), help="Shards per split (default: one per 1000 images).")
@click.option("--overwrite", is_flag=True, help="Replace --out even if it is not a previous conversion.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def data(fmt, images, annotations, names, out_dir, split_text, seed, label_map, class_map, classes, strict, shards,
         overwrite, quiet) -> None:
    """Validate a VOC / COCO / YOLO dataset and write TFOD2 TFRecords, label_map.pbtxt and a report."""
    from .convert import OutputExistsError, convert_dataset

    fractions = None
    if split_text not in ("auto", "own"):
        try:
            fractions = parse_fractions(split_text)
        except ValueError as e:
            raise click.ClickException(f"--split: {e} (or own, or auto)") from e
    try:
        convert_dataset(
            fmt, out_dir, annotations=annotations, images=images, names=names, fractions=fractions,
            own_split=split_text == "own", label_map=label_map, seed=seed,
            class_map=class_map, classes=_names_list(classes), strict=strict, num_shards=shards,
            overwrite=overwrite, progress=not quiet, echo=click.echo,
        )
    except DataValidationError as e:
        n = len(e.report.fatal)
        raise click.ClickException(f"--strict: {n} problem(s), listed above; nothing written") from e
    except (DatasetFormatError, ClassMapError, OutputExistsError) as e:
        raise click.ClickException(str(e)) from e


@click.command("synth")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output directory (gets images/ and annotations/).")
@click.option("--images", "num_images", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--classes", default=",".join(DEFAULT_CLASSES), show_default=True,
              help="Class names; circle, square, triangle, diamond, cross, hexagon draw that shape.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(out_dir, num_images, classes, seed) -> None:
    """Generate a synthetic VOC dataset (shapes on textured backgrounds) for tests and demos."""
    from .synthetic import generate_voc_dataset

    try:
        result = generate_voc_dataset(out_dir, num_images=num_images, class_names=_names_list(classes), seed=seed)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    boxes = ", ".join(f"{c} {n}" for c, n in result.boxes_per_class.items())
    click.echo(f"Wrote {result.num_images} images to {result.images_dir} and VOC xml to "
               f"{result.annotations_dir} (boxes: {boxes})")
