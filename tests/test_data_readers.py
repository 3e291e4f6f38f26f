"""Readers, validation, image conversion, class mapping, split and the synthetic generator (no TensorFlow)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detserve.training.data.class_map import (
    ClassMap,
    ClassMapError,
    apply_class_map,
    load_class_map,
    parse_class_map,
)
from detserve.training.data.coco import read_coco
from detserve.training.data.images import encode_image, inspect_image, to_rgb8
from detserve.training.data.records import BoxObject, Dataset, ImageRecord
from detserve.training.data.report import DatasetFormatError, DataValidationError, ValidationReport
from detserve.training.data.split import parse_fractions, split_counts, split_records
from detserve.training.data.synthetic import SHAPES, draw_shape, generate_voc_dataset
from detserve.training.data.validate import check_box, restrict_classes, validate_dataset
from detserve.training.data.voc import read_voc, write_voc_annotation
from detserve.training.data.yolo import read_names, read_yolo

# ---------------------------------------------------------------- helpers


def save_rgb(path: Path, size=(64, 48), fmt="JPEG") -> Path:
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def png16_rgb(width: int, height: int) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one; it reads it as 8-bit "RGB")."""
    rows = np.full((height, width, 3), 40000, dtype=">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def box(label: str, x0, y0, x1, y1, **kw) -> BoxObject:
    return BoxObject(label, x0, y0, x1, y1, **kw)


def kinds(report: ValidationReport) -> dict[str, int]:
    return report.counts()


def only(report: ValidationReport, kind: str):
    found = report.of_kind(kind)
    assert len(found) == 1, (kind, report.summary())
    return found[0]


# ---------------------------------------------------------------- VOC


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    """A VOC dataset with every broken case planted (one each), plus two good images."""
    images, ann = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    ann.mkdir()
    save_rgb(images / "good.jpg")
    write_voc_annotation(ann / "good.xml", "good.jpg", 64, 48, [box("cat", 0, 0, 64, 48), box("dog", 10, 10, 20, 20)])
    save_rgb(images / "empty.jpg")
    write_voc_annotation(ann / "empty.xml", "empty.jpg", 64, 48, [])
    write_voc_annotation(ann / "missing.xml", "ghost.jpg", 64, 48, [box("cat", 1, 1, 5, 5)])
    (images / "text.jpg").write_bytes(b"this is not an image")
    write_voc_annotation(ann / "unreadable.xml", "text.jpg", 64, 48, [box("cat", 1, 1, 5, 5)])
    data = (images / "good.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])
    write_voc_annotation(ann / "truncated.xml", "cut.jpg", 64, 48, [box("cat", 1, 1, 5, 5)])
    save_rgb(images / "boxes.jpg")
    write_voc_annotation(ann / "boxes.xml", "boxes.jpg", 64, 48, [
        box("cat", 1, 1, 65, 49),  # 0: 1 px over right and bottom -> clipped
        box("cat", 70, 10, 90, 20),  # 1: entirely outside -> skipped
        box("cat", 50, 10, 80, 20),  # 2: 16 px over -> skipped
        box("cat", 10, 10, 10, 30),  # 3: zero width -> skipped
        box("dog", 30, 30, 20, 40),  # 4: inverted -> skipped
        box("cat", 0, 0, 64, 48),  # 5: whole image, touching the borders -> kept as is
    ])
    save_rgb(images / "small.jpg")
    write_voc_annotation(ann / "size.xml", "small.jpg", 640, 480, [box("cat", 5, 5, 20, 20)])
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(images / "alpha.png")
    write_voc_annotation(ann / "rgba.xml", "alpha.png", 32, 32, [box("cat", 2, 2, 30, 30)])
    Image.new("L", (32, 32), 77).save(images / "grey.jpg")
    write_voc_annotation(ann / "grey.xml", "grey.jpg", 32, 32, [box("dog", 2, 2, 30, 30)])
    Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16)).save(images / "deep.png")
    write_voc_annotation(ann / "deep16.xml", "deep.png", 32, 32, [box("dog", 2, 2, 30, 30)])
    save_rgb(images / "reencoded.jpg")
    write_voc_annotation(ann / "renamed.xml", "reencoded.png", 64, 48, [box("cat", 5, 5, 20, 20)])
    save_rgb(images / "noext.jpg")
    write_voc_annotation(ann / "noext.xml", "noext", 64, 48, [])
    (ann / "broken.xml").write_text("<annotation><filename>good.jpg</filename><size>")
    (ann / "notvoc.xml").write_text("<html><body/></html>")
    (ann / "fields.xml").write_text(
        "<annotation><filename>good.jpg</filename><size><width>64</width><height>48</height></size>"
        "<object><name></name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>one</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>"
    )  # also lists good.jpg, before good.xml does -> duplicate_image
    return tmp_path


def test_voc_valid_reads_every_field(tmp_path: Path):
    save_rgb(tmp_path / "a.jpg")
    write_voc_annotation(tmp_path / "a.xml", "a.jpg", 64, 48,
                         [box("cat", 1.5, 2, 30, 40, difficult=True), box("dog", 3, 4, 5, 6, truncated=True)])
    report = ValidationReport()
    dataset = read_voc(tmp_path, None, report)  # images default to the annotations dir
    assert report.problems == []
    [record] = dataset.records
    assert (record.image_path, record.width, record.height) == (tmp_path / "a.jpg", 64, 48)
    assert record.objects == [box("cat", 1.5, 2, 30, 40, difficult=True), box("dog", 3, 4, 5, 6, truncated=True)]
    assert [o.source_index for o in record.objects] == [0, 1]
    assert dataset.class_names == ["cat", "dog"]


def test_voc_default_images_dir_beside_annotations(voc_dir: Path):
    dataset = read_voc(voc_dir / "annotations", None, ValidationReport())
    assert dataset.records[0].image_path.parent == voc_dir / "images"


def test_voc_broken_cases_are_each_named(voc_dir: Path):
    report = ValidationReport()
    raw = read_voc(voc_dir / "annotations", voc_dir / "images", report)
    dataset, infos = validate_dataset(raw, report)
    ann = voc_dir / "annotations"

    assert only(report, "image_missing").file.endswith("ghost.jpg")
    assert only(report, "image_unreadable").file.endswith("text.jpg")
    assert only(report, "image_corrupt").file.endswith("cut.jpg")
    for kind in ("image_missing", "image_unreadable", "image_corrupt"):
        assert only(report, kind).action == "skipped image"

    malformed = sorted(report.of_kind("malformed_xml"), key=lambda p: p.file)
    assert [Path(p.file).name for p in malformed] == ["broken.xml", "notvoc.xml"]
    assert malformed[1].value == "<html>"

    clipped = only(report, "box_clipped")
    assert (clipped.file, clipped.object_index, clipped.action) == (str(ann / "boxes.xml"), 0, "clipped")
    assert "xmax=65" in clipped.value and "64x48" in clipped.value
    outside = report.of_kind("box_outside_image")
    assert [(p.object_index, p.action) for p in outside] == [(1, "skipped object"), (2, "skipped object")]
    assert [p.object_index for p in report.of_kind("box_zero_area")] == [3, 4]

    mismatch = only(report, "size_mismatch")
    assert mismatch.file == str(ann / "size.xml") and mismatch.value == "annotation 640x480, image 64x48"

    assert only(report, "image_rgba").value == "RGBA"
    assert only(report, "image_grayscale").value == "L"
    assert only(report, "image_16bit").value == "I;16"
    for kind in ("image_rgba", "image_grayscale", "image_16bit"):
        assert only(report, kind).action == "converted"

    missing_name = only(report, "missing_field")
    assert (Path(missing_name.file).name, missing_name.object_index, missing_name.field) == ("fields.xml", 0, "name")
    bad_value = only(report, "bad_box_value")
    assert (bad_value.object_index, "ymin=one" in bad_value.value) == (1, True)
    duplicate = only(report, "duplicate_image")  # files are read in sorted order: fields.xml came first
    assert Path(duplicate.file).name == "good.xml" and duplicate.value.endswith("fields.xml")

    renamed = only(report, "filename_mismatch")  # noext.xml's <filename> has no extension: not a problem
    assert (Path(renamed.file).name, renamed.action) == ("renamed.xml", "used reencoded.jpg") and renamed.fatal

    # What is left: good, empty, boxes (2 boxes), small (real size), alpha, grey, deep, reencoded, noext.
    kept = {r.key: r for r in dataset.records}
    assert sorted(kept) == sorted(["good.jpg", "empty.jpg", "boxes.jpg", "small.jpg", "alpha.png", "grey.jpg", "deep.png",
                                   "reencoded.jpg", "noext.jpg"])
    assert kept["boxes.jpg"].objects == [box("cat", 1, 1, 64, 48), box("cat", 0, 0, 64, 48)]
    assert (kept["small.jpg"].width, kept["small.jpg"].height) == (64, 48)
    assert set(infos) == set(kept)

    summary = report.summary()
    for kind, count in report.counts().items():
        assert f"{kind}: {count}" in summary
    assert "boxes.xml object 0 [bndbox]" in summary and "ghost.jpg" in summary

    with pytest.raises(DataValidationError) as raised:
        report.check_strict()
    message = str(raised.value)
    assert "image_missing" in message and "box_clipped" not in message and "image_rgba" not in message
    assert json.loads(report.to_json())["counts"] == report.counts()


def test_voc_missing_annotations_is_a_format_error(tmp_path: Path):
    with pytest.raises(DatasetFormatError, match="not found"):
        read_voc(tmp_path / "nope", None, ValidationReport())
    with pytest.raises(DatasetFormatError, match="no .xml"):
        read_voc(tmp_path, None, ValidationReport())


# ---------------------------------------------------------------- COCO


def coco_doc(**overrides) -> dict:
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [5.5, 6, 4, 4], "iscrowd": 1}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    doc.update(overrides)
    return doc


def write_coco(tmp_path: Path, doc: dict) -> Path:
    for name in ("a.jpg", "b.jpg"):
        save_rgb(tmp_path / name)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_valid(tmp_path: Path):
    report = ValidationReport()
    dataset = read_coco(write_coco(tmp_path, coco_doc()), None, report)
    assert report.problems == []
    assert dataset.class_names == ["cat", "dog"]  # category-id order
    a, b = dataset.records
    assert a.objects == [box("cat", 1, 2, 11, 22), box("dog", 5.5, 6, 9.5, 10, difficult=True)]
    assert [o.source_index for o in a.objects] == [10, 11]
    assert (b.key, b.objects) == ("b.jpg", [])  # listed without annotations: a negative image


def test_coco_bad_fields_are_each_named(tmp_path: Path):
    doc = coco_doc()
    doc["images"] += [{"id": 3}, {"id": 1, "file_name": "dup.jpg", "width": 1, "height": 1},
                      {"id": 4, "file_name": "b.jpg"}]
    doc["annotations"] += [
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]},
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [1, "2", 3, 4]},
        {"id": 14, "image_id": 99, "category_id": 3, "bbox": [1, 2, 3, 4]},
        {"id": 15, "image_id": 2, "category_id": 42, "bbox": [1, 2, 3, 4]},
        "not an object",
    ]
    doc["categories"].append({"id": 8})
    report = ValidationReport()
    dataset = read_coco(write_coco(tmp_path, doc), tmp_path, report)
    bad_boxes = report.of_kind("bad_box_value")
    assert [(p.object_index, p.value) for p in bad_boxes] == [(12, "[1, 2, 3]"), (13, '[1, "2", 3, 4]')]
    assert only(report, "unknown_class").object_index == 15 and only(report, "unknown_class").value == "42"
    fields = {(p.field, p.action) for p in report.of_kind("bad_field")}
    assert fields == {("images[2]", "skipped image"), ("images[3].id", "skipped image"), ("image_id", "skipped object"),
                      ("annotations[6]", "skipped object"), ("categories[2]", "ignored")}
    assert only(report, "size_missing").file.endswith("instances.json:b.jpg")
    assert len(dataset.records) == 3 and len(dataset.records[0].objects) == 2


@pytest.mark.parametrize(("text", "match"), [("{not json", "not valid JSON"), ("[]", "top level"),
                                             ('{"images": []}', "'annotations'")])
def test_coco_unreadable_file_is_a_format_error(tmp_path: Path, text: str, match: str):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(DatasetFormatError, match=match):
        read_coco(path, None, ValidationReport())


# ---------------------------------------------------------------- YOLO


def test_yolo_valid_and_broken(tmp_path: Path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    save_rgb(images / "a.jpg", size=(100, 50))
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # line 1: good
        "\n"
        "1 0.5 0.5 0.2\n"  # line 3: 4 fields
        "1 0.5 0.5 0.2 0.4 0.9\n"  # line 4: 6 fields
        "0 0.5 1.5 0.2 0.4\n"  # line 5: cy out of range
        "2 0.5 0.5 0.2 0.4\n"  # line 6: class 2 of 2 names
        "x 0.5 0.5 0.2 0.4\n"  # line 7: not a number
        "1 0.1 0.1 0.0 0.2\n"  # line 8: zero width (validation)
    )
    save_rgb(images / "b.png", size=(32, 32), fmt="PNG")  # no label file: no objects, not a problem
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (images / "bad.jpg").write_bytes(b"garbage")
    report = ValidationReport()
    dataset = read_yolo(images, None, tmp_path / "names.txt", report)  # labels/ found beside images/
    dataset, _ = validate_dataset(dataset, report)
    assert dataset.class_names == ["cat", "dog"]
    a, b = dataset.records
    assert a.objects == [box("cat", 40, 15, 60, 35)] and a.objects[0].source_index == 1
    assert (b.key, b.objects) == ("b.png", [])
    bad_lines = report.of_kind("yolo_bad_line")
    assert [(p.object_index, p.field) for p in bad_lines] == [(3, "fields"), (4, "fields"), (7, "value")]
    assert "4 fields" in bad_lines[0].value
    out_of_range = only(report, "yolo_value_out_of_range")
    assert (out_of_range.object_index, out_of_range.field, out_of_range.value) == (5, "cy", "1.5")
    assert only(report, "unknown_class").object_index == 6
    assert only(report, "box_zero_area").object_index == 8
    assert only(report, "image_missing").file.endswith("orphan.txt")
    assert only(report, "image_unreadable").file.endswith("bad.jpg")


def test_yolo_names_yaml(tmp_path: Path):
    (tmp_path / "data.yaml").write_text("names:\n  0: person\n  1: car\n")
    assert read_names(tmp_path / "data.yaml") == ["person", "car"]
    (tmp_path / "list.yaml").write_text("names: [a, b]\n")
    assert read_names(tmp_path / "list.yaml") == ["a", "b"]
    (tmp_path / "dup.txt").write_text("a\na\n")
    with pytest.raises(DatasetFormatError, match="duplicate"):
        read_names(tmp_path / "dup.txt")


# ---------------------------------------------------------------- validation rules


@pytest.mark.parametrize(
    ("coords", "expected", "kind"),
    [
        ((0, 0, 100, 50), (0, 0, 100, 50), None),  # touching every border: valid, untouched
        ((-1, -2, 101, 52), (0, 0, 100, 50), "box_clipped"),  # within 2 px
        ((-2.5, 0, 10, 10), None, "box_outside_image"),  # 2.5 px over
        ((100, 10, 120, 20), None, "box_outside_image"),  # starts at the right edge: nothing inside
        ((5, 5, 5, 9), None, "box_zero_area"),
        ((5, 5, float("nan"), 9), None, "bad_box_value"),
    ],
)
def test_box_rule(coords, expected, kind):
    report = ValidationReport()
    result = check_box(BoxObject("a", *coords, source_index=4), 100, 50, "f.xml", report)
    assert (None if result is None else (result.xmin, result.ymin, result.xmax, result.ymax)) == expected
    assert [p.kind for p in report.problems] == ([kind] if kind else [])
    if kind:
        assert report.problems[0].object_index == 4 and report.problems[0].file == "f.xml"


def test_unknown_class_with_class_list():
    record = ImageRecord(Path("a.jpg"), 10, 10, [box("cat", 0, 0, 5, 5, source_index=0),
                                                 box("bird", 0, 0, 5, 5, source_index=1)], source="a.xml")
    report = ValidationReport()
    dataset = restrict_classes(Dataset([record], ["bird", "cat"]), ["cat", "dog"], report)
    assert dataset.class_names == ["cat", "dog"]
    assert [o.label for o in dataset.records[0].objects] == ["cat"]
    problem = only(report, "unknown_class")
    assert (problem.file, problem.object_index, problem.value, problem.action) == ("a.xml", 1, "bird", "skipped object")


# ---------------------------------------------------------------- images


def test_rgb_jpeg_bytes_are_kept(tmp_path: Path):
    path = save_rgb(tmp_path / "a.jpg")
    encoded = encode_image(path)
    assert (encoded.data, encoded.format, encoded.width, encoded.height) == (path.read_bytes(), "jpeg", 64, 48)


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    info = inspect_image(tmp_path / "g.png")
    assert (info.mode, info.conversion) == ("I;16", "image_16bit")
    encoded = encode_image(tmp_path / "g.png", info)
    pixels = np.asarray(Image.open(io.BytesIO(encoded.data)))
    assert encoded.format == "png" and pixels.shape == (1, 4, 3)
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_rgb_png_is_detected(tmp_path: Path):
    (tmp_path / "c.png").write_bytes(png16_rgb(4, 3))
    info = inspect_image(tmp_path / "c.png")
    assert (info.mode, info.bit_depth, info.conversion) == ("RGB", 16, "image_16bit")
    pixels = np.asarray(Image.open(io.BytesIO(encode_image(tmp_path / "c.png", info).data)))
    assert abs(int(pixels[0, 0, 0]) - round(40000 / 257)) <= 1


def test_conversions_to_rgb8(tmp_path: Path):
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert to_rgb8(rgba).getpixel((0, 0)) == (10, 20, 30)  # alpha dropped, as decode_png(channels=3) does
    palette = Image.new("P", (2, 2))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "p.png")
    assert inspect_image(tmp_path / "p.png").conversion == "image_palette"
    decoded = Image.open(io.BytesIO(encode_image(tmp_path / "p.png").data))
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (200, 100, 50)
    Image.new("L", (8, 8), 99).save(tmp_path / "g.jpg")
    encoded = encode_image(tmp_path / "g.jpg")
    assert encoded.format == "jpeg" and Image.open(io.BytesIO(encoded.data)).mode == "RGB"


# ---------------------------------------------------------------- class mapping


def mapped_dataset() -> Dataset:
    objects = [box("with_mask", 0, 0, 1, 1), box("without_mask", 0, 0, 1, 1), box("mask_weared_incorrect", 0, 0, 1, 1),
               box("other", 0, 0, 1, 1)]
    return Dataset([ImageRecord(Path("a.jpg"), 2, 2, objects), ImageRecord(Path("b.jpg"), 2, 2, [objects[2]])],
                   ["mask_weared_incorrect", "other", "with_mask", "without_mask"])


def test_class_map_rename_and_drop():
    report = ValidationReport()
    cmap = parse_class_map(" with_mask=mask, without_mask = no_mask ,mask_weared_incorrect=drop")
    dataset, dropped = apply_class_map(mapped_dataset(), cmap, report)
    assert dataset.class_names == ["mask", "no_mask", "other"]  # targets in mapping order, then the rest
    assert [o.label for o in dataset.records[0].objects] == ["mask", "no_mask", "other"]  # unmentioned stays
    assert dataset.records[1].objects == [] and len(dataset.records) == 2  # images are kept
    assert dropped == {"mask_weared_incorrect": 2}
    assert report.problems == []


def test_class_map_merge_from_yaml(tmp_path: Path):
    (tmp_path / "map.yaml").write_text("with_mask: mask\nmask_weared_incorrect: mask\nwithout_mask: no_mask\nother: null\n")
    cmap = load_class_map(tmp_path / "map.yaml")
    assert cmap.mapping == {"with_mask": "mask", "mask_weared_incorrect": "mask", "without_mask": "no_mask", "other": None}
    dataset, dropped = apply_class_map(mapped_dataset(), cmap, ValidationReport())
    assert dataset.class_names == ["mask", "no_mask"]
    assert [o.label for o in dataset.records[0].objects] == ["mask", "no_mask", "mask"]
    assert dropped == {"other": 1}


def test_class_map_unused_entry_is_reported():
    report = ValidationReport()
    apply_class_map(mapped_dataset(), ClassMap({"with_mask": "mask", "wthout_mask": "no_mask"}), report)
    problem = only(report, "class_map_unused")
    assert (problem.field, problem.value, problem.fatal) == ("wthout_mask", "no_mask", True)


@pytest.mark.parametrize(("spec", "match"), [("a", "source=target"), ("a=b=c", "source=target"), ("a=", "empty target"),
                                             ("=b", "empty source"), ("a=b,a=c", "mapped twice"), (",", "empty class mapping"),
                                             ("missing.yaml", "not found")])
def test_class_map_errors(spec: str, match: str):
    with pytest.raises(ClassMapError, match=match):
        load_class_map(spec)


# ---------------------------------------------------------------- split


def records(names: list[str]) -> list[ImageRecord]:
    return [ImageRecord(Path(f"/d/{n}.jpg"), 1, 1) for n in names]


def keys(split: dict) -> dict[str, list[str]]:
    return {name: [r.key for r in rs] for name, rs in split.items()}


def test_split_is_deterministic_and_order_independent():
    names = [f"img{i:03d}" for i in range(50)]
    first = keys(split_records(records(names), (0.8, 0.1, 0.1), seed=0))
    assert [len(v) for v in first.values()] == [40, 5, 5]
    assert first == keys(split_records(records(names), (0.8, 0.1, 0.1), seed=0))
    assert first == keys(split_records(records(names[::-1]), (0.8, 0.1, 0.1), seed=0))
    other = keys(split_records(records(names), (0.8, 0.1, 0.1), seed=1))
    assert other != first and sorted(sum(other.values(), [])) == sorted(f"{n}.jpg" for n in names)


def test_split_counts_keep_every_split_non_empty():
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(11, (0.8, 0.1, 0.1)) == [9, 1, 1]
    assert split_counts(2, (0.8, 0.1, 0.1)) == [2, 0, 0]  # not enough images: as the fractions say
    assert split_counts(10, (0.9, 0.1, 0.0)) == [9, 1, 0]
    assert parse_fractions("0.9,0.1") == (0.9, 0.1, 0.0)
    assert parse_fractions("0,0,1") == (0.0, 0.0, 1.0)  # a held-out test set converted on its own
    assert split_counts(3, (0.0, 0.0, 1.0)) == [0, 0, 3]
    for bad in ("0.5,0.1,0.1", "a,b,c", "0,0,0", "0.8,0.3,-0.1", "0.5,0.5,nan"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_and_reads_back_clean(tmp_path: Path):
    first = generate_voc_dataset(tmp_path / "a", num_images=6, seed=3)
    second = generate_voc_dataset(tmp_path / "b", num_images=6, seed=3)
    other = generate_voc_dataset(tmp_path / "c", num_images=6, seed=4)
    files = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    assert len(files) == 12
    assert all((first.root / f).read_bytes() == (second.root / f).read_bytes() for f in files)
    assert (first.images_dir / "synth_00000.jpg").read_bytes() != (other.images_dir / "synth_00000.jpg").read_bytes()
    generate_voc_dataset(tmp_path / "c", num_images=2, seed=4)  # a smaller rerun replaces the files
    assert len(list((tmp_path / "c" / "annotations").iterdir())) == 2
    report = ValidationReport()
    dataset, _ = validate_dataset(read_voc(first.annotations_dir, first.images_dir, report), report)
    assert report.problems == [] and len(dataset.records) == 6
    counts = {c: sum(o.label == c for r in dataset.records for o in r.objects) for c in first.class_names}
    assert counts == first.boxes_per_class and sum(counts.values()) >= 6


@pytest.mark.parametrize("shape", SHAPES)
def test_synthetic_boxes_are_exact(shape: str):
    from PIL import ImageDraw

    image = Image.new("L", (60, 50))
    draw_shape(ImageDraw.Draw(image), shape, (7, 9, 38, 44), 255)
    ys, xs = np.nonzero(np.asarray(image))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (7, 9, 38, 44)
