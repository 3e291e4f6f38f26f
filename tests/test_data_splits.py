"""Data the way datasets come: each format's own split (VOC ImageSets, one COCO json per split, YOLO lists and
data.yaml), a test-only conversion, label-map ids kept across separately converted sets, and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from lxml import etree

from detserve.training.data.cli import data
from detserve.training.data.convert import convert_dataset
from detserve.training.data.label_map import label_map_mismatch, read_label_map, write_label_map_ids
from detserve.training.data.report import DatasetFormatError
from detserve.training.data.synthetic import generate_voc_dataset
from detserve.training.data.tfrecord import read_examples

QUIET = {"progress": False, "echo": None}
CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """8 synthetic images (synth_00000.jpg ...) with VOC xml in annotations/."""
    root = tmp_path_factory.mktemp("voc")
    generate_voc_dataset(root, num_images=8, class_names=CLASSES, seed=3)
    return root


def stems(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "images").glob("*.jpg"))


def splits_json(out: Path) -> dict[str, list[str]]:
    return json.loads((out / "splits.json").read_text())


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def coco_doc(voc_root: Path, names: list[str], categories: list[str] = CLASSES) -> dict:
    """The VOC annotations of ``names`` (stems) as one COCO document."""
    doc = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(categories)]}
    for image_id, stem in enumerate(names, start=1):
        root = etree.parse(str(voc_root / "annotations" / f"{stem}.xml")).getroot()
        doc["images"].append({"id": image_id, "file_name": root.findtext("filename"),
                              "width": int(root.findtext("size/width")), "height": int(root.findtext("size/height"))})
        for obj in root.iter("object"):
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": categories.index(obj.findtext("name")) + 1,
                                       "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0})
    return doc


def yolo_labels(voc_root: Path, labels: Path, names: list[str]) -> None:
    """YOLO txt for ``names`` (stems) in ``labels``."""
    labels.mkdir(parents=True, exist_ok=True)
    for stem in names:
        root = etree.parse(str(voc_root / "annotations" / f"{stem}.xml")).getroot()
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        lines = []
        for obj in root.iter("object"):
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            lines.append(f"{CLASSES.index(obj.findtext('name'))} {(x0 + x1) / 2 / w:.8f} {(y0 + y1) / 2 / h:.8f} "
                         f"{(x1 - x0) / w:.8f} {(y1 - y0) / h:.8f}")
        (labels / f"{stem}.txt").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- VOC


def voc_copy(voc_root: Path, tmp_path: Path) -> tuple[Path, list[str], Path]:
    """A copy of the synthetic VOC set to add ImageSets/Main lists to: (root, image stems, Main dir)."""
    root = tmp_path / "VOC"
    shutil.copytree(voc_root, root)
    return root, stems(root), root / "ImageSets" / "Main"


def test_voc_imagesets_are_kept_and_fractions_still_resplit(voc_root: Path, tmp_path: Path):
    root, names, main = voc_copy(voc_root, tmp_path)
    write_lines(main / "train.txt", names[:4])
    write_lines(main / "val.txt", names[4:6])
    write_lines(main / "test.txt", [names[6], "ghost_0001"])  # names[7] is in no list; ghost has no image
    write_lines(main / "trainval.txt", names[:6])  # redundant with train + val: not used

    result = convert_dataset("voc", tmp_path / "own", annotations=root / "annotations", **QUIET)
    assert splits_json(tmp_path / "own") == {"train": [f"{n}.jpg" for n in names[:4]],
                                             "val": [f"{n}.jpg" for n in names[4:6]], "test": [f"{names[6]}.jpg"]}
    assert result.metadata["split_source"].startswith(f"own: {main}") and result.metadata["fractions"] is None
    unlisted = result.report.of_kind("not_in_split")
    assert [p.file for p in unlisted] == [str(root / "annotations" / f"{names[7]}.xml")]
    unused = result.report.of_kind("split_entry_unused")
    assert len(unused) == 1 and unused[0].file == f"{main / 'test.txt'} line 2" and "ghost_0001" in unused[0].value
    assert result.metadata["total"]["images"] == 7

    # Explicit fractions re-split every image; --split own insists on the lists.
    resplit = convert_dataset("voc", tmp_path / "seeded", annotations=root / "annotations", fractions=(0.5, 0.25, 0.25),
                              **QUIET)
    assert resplit.metadata["total"]["images"] == 8 and resplit.metadata["split_source"].startswith("seeded: 0.5,")
    assert not resplit.report.of_kind("not_in_split")
    with pytest.raises(DatasetFormatError, match="--split own: the voc dataset declares no split"):
        convert_dataset("voc", tmp_path / "none", annotations=voc_root / "annotations", own_split=True, **QUIET)


def test_voc_trainval_only_and_an_image_in_two_splits(voc_root: Path, tmp_path: Path):
    root, names, main = voc_copy(voc_root, tmp_path)
    write_lines(main / "trainval.txt", names[:6])
    write_lines(main / "test.txt", names[6:])
    result = convert_dataset("voc", tmp_path / "o", annotations=root / "annotations", **QUIET)
    assert [len(v) for v in splits_json(tmp_path / "o").values()] == [6, 0, 2]  # trainval is the train split

    write_lines(main / "test.txt", names[5:])  # names[5] in trainval and test: a leak
    with pytest.raises(DatasetFormatError) as raised:
        convert_dataset("voc", tmp_path / "o2", annotations=root / "annotations", **QUIET)
    message = str(raised.value)
    assert f"{main / 'trainval.txt'} line 6" in message or f"{main / 'test.txt'} line 1" in message
    assert names[5] in message and "one split only" in message
    assert result.report.problems == []


# ---------------------------------------------------------------- COCO


def test_coco_one_json_per_split_as_list_and_directory(voc_root: Path, tmp_path: Path):
    names = stems(voc_root)
    ann = tmp_path / "annotations"
    ann.mkdir()
    parts = {"instances_train2017.json": names[:5], "instances_val2017.json": names[5:7],
             "image_info_test2017.json": names[7:]}
    for file_name, part in parts.items():
        (ann / file_name).write_text(json.dumps(coco_doc(voc_root, part)))
    expected = {"train": [f"{n}.jpg" for n in names[:5]], "val": [f"{n}.jpg" for n in names[5:7]],
                "test": [f"{n}.jpg" for n in names[7:]]}

    listed = ",".join(str(ann / f) for f in parts)
    result = convert_dataset("coco", tmp_path / "list", annotations=listed, images=str(voc_root / "images"), **QUIET)
    assert splits_json(tmp_path / "list") == expected and result.report.problems == []
    assert result.metadata["split_source"] == "own: " + ", ".join(
        f"{s}: {ann / f}" for s, f in zip(("train", "val", "test"), parts, strict=True))
    convert_dataset("coco", tmp_path / "dir", annotations=ann, images=voc_root / "images", **QUIET)
    assert splits_json(tmp_path / "dir") == {"train": expected["train"], "val": expected["val"], "test": expected["test"]}

    # One json is the whole dataset (seeded split) unless --split own reads the split from its name.
    single = convert_dataset("coco", tmp_path / "one", annotations=ann / "image_info_test2017.json",
                             images=voc_root / "images", **QUIET)
    assert single.metadata["split_source"].startswith("seeded")
    convert_dataset("coco", tmp_path / "one_own", annotations=ann / "image_info_test2017.json",
                    images=voc_root / "images", own_split=True, **QUIET)
    assert splits_json(tmp_path / "one_own") == {"train": [], "val": [], "test": expected["test"]}


def test_coco_roboflow_layout_with_images_beside_each_json(voc_root: Path, tmp_path: Path):
    names = stems(voc_root)
    for folder, part in (("train", names[:6]), ("valid", names[6:])):
        (tmp_path / "rf" / folder).mkdir(parents=True)
        for stem in part:
            shutil.copy(voc_root / "images" / f"{stem}.jpg", tmp_path / "rf" / folder)
        (tmp_path / "rf" / folder / "_annotations.coco.json").write_text(json.dumps(coco_doc(voc_root, part)))
    result = convert_dataset("coco", tmp_path / "o", annotations=tmp_path / "rf", **QUIET)
    assert [len(v) for v in splits_json(tmp_path / "o").values()] == [6, 2, 0] and result.report.problems == []


def test_coco_cli_one_images_dir_per_json(voc_root: Path, tmp_path: Path):
    names = stems(voc_root)
    args = []
    for split, part in (("train", names[:6]), ("val", names[6:])):
        (tmp_path / f"{split}2017").mkdir()
        for stem in part:
            shutil.copy(voc_root / "images" / f"{stem}.jpg", tmp_path / f"{split}2017")
        (tmp_path / f"instances_{split}2017.json").write_text(json.dumps(coco_doc(voc_root, part)))
        args.append((str(tmp_path / f"instances_{split}2017.json"), str(tmp_path / f"{split}2017")))
    common = ["--format", "coco", "--annotations", ",".join(a for a, _ in args), "--quiet"]
    result = CliRunner().invoke(data, [*common, "--images", ",".join(i for _, i in args), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "split own: train: " in result.output and "Data validation: 0 problem(s)" in result.output
    assert [len(v) for v in splits_json(tmp_path / "o").values()] == [6, 2, 0]
    three = ",".join([args[0][1]] * 3)
    result = CliRunner().invoke(data, [*common, "--images", three, "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "--images: 3 directories for 2 annotation files" in result.output


@pytest.mark.parametrize(("files", "match"), [
    (["instances_train.json", "extra.json"], "extra.json: cannot tell which split it is"),
    (["instances_train.json", "person_train.json"], "two annotation files for split train"),
])
def test_coco_split_errors_name_the_file(voc_root: Path, tmp_path: Path, files: list[str], match: str):
    for file_name in files:
        (tmp_path / file_name).write_text(json.dumps(coco_doc(voc_root, stems(voc_root)[:2])))
    with pytest.raises(DatasetFormatError, match=match):
        convert_dataset("coco", tmp_path / "o", annotations=",".join(str(tmp_path / f) for f in files),
                        images=voc_root / "images", **QUIET)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- YOLO


def test_yolo_list_files_beside_the_images(voc_root: Path, tmp_path: Path):
    root = tmp_path / "yolo"
    shutil.copytree(voc_root / "images", root / "images")
    names = stems(voc_root)
    yolo_labels(voc_root, root / "labels", names)
    write_lines(root / "names.txt", CLASSES)
    # Paths as written on another machine: the file name is what counts.
    write_lines(root / "train.txt", [f"/content/data/images/{n}.jpg" for n in names[:6]])
    write_lines(root / "val.txt", [f"./images/{n}.jpg" for n in names[6:]])
    result = convert_dataset("yolo", tmp_path / "o", images=root / "images", names=root / "names.txt", **QUIET)
    assert splits_json(tmp_path / "o") == {"train": [f"{n}.jpg" for n in names[:6]],
                                           "val": [f"{n}.jpg" for n in names[6:]], "test": []}
    assert result.report.problems == [] and result.metadata["split_source"].startswith("own: ")


def test_yolo_data_yaml_splits(voc_root: Path, tmp_path: Path):
    root = tmp_path / "ds"
    names = stems(voc_root)
    for split, part in (("train", names[:5]), ("val", names[5:7]), ("test", names[7:])):
        (root / "images" / split).mkdir(parents=True)
        for stem in part:
            shutil.copy(voc_root / "images" / f"{stem}.jpg", root / "images" / split)
        yolo_labels(voc_root, root / "labels" / split, part)
    # test as a txt list of image paths (relative to the list), train / val as folders, Roboflow's ../ form.
    write_lines(root / "test.txt", [f"./images/test/{n}.jpg" for n in names[7:]])
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"train": "../images/train", "val": "images/val", "test": "test.txt",
                                         "names": CLASSES}))
    result = convert_dataset("yolo", tmp_path / "o", names=data_yaml, **QUIET)
    assert splits_json(tmp_path / "o") == {"train": [f"{n}.jpg" for n in names[:5]],
                                           "val": [f"{n}.jpg" for n in names[5:7]], "test": [f"{n}.jpg" for n in names[7:]]}
    assert result.report.problems == [] and result.metadata["total"]["images"] == 8
    # Fractions pool the yaml's images and re-split them.
    resplit = convert_dataset("yolo", tmp_path / "r", names=data_yaml, fractions=(0.5, 0.5, 0.0), **QUIET)
    assert [len(v) for v in splits_json(tmp_path / "r").values()] == [4, 4, 0]
    assert resplit.metadata["total"] == result.metadata["total"]

    data_yaml.write_text(yaml.safe_dump({"train": "images/train", "val": "images/nope", "names": CLASSES}))
    with pytest.raises(DatasetFormatError, match=r"data.yaml: val: 'images/nope' not found"):
        convert_dataset("yolo", tmp_path / "bad", names=data_yaml, **QUIET)
    write_lines(root / "names.txt", CLASSES)
    with pytest.raises(DatasetFormatError, match="names.txt has none"):
        convert_dataset("yolo", tmp_path / "bad", names=root / "names.txt", **QUIET)


# ---------------------------------------------------------------- test-only conversion and fixed ids


def test_test_only_conversion_from_the_cli(voc_root: Path, tmp_path: Path):
    out = tmp_path / "heldout"
    result = CliRunner().invoke(data, ["--format", "voc", "--annotations", str(voc_root / "annotations"),
                                       "--out", str(out), "--split", "0,0,1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "split seeded: 0,0,1 with seed 0" in result.output
    meta = json.loads((out / "dataset.json").read_text())
    assert [meta["splits"][s]["images"] for s in ("train", "val", "test")] == [0, 0, 8]
    assert sorted(p.name for p in out.glob("*.tfrecord")) == ["test-00000-of-00001.tfrecord"]


def class_ids_by_name(out: Path) -> set[tuple[str, int]]:
    return {(n, int(i)) for e in read_examples(str(out / "*.tfrecord"))
            for n, i in zip(e.class_names, e.class_ids, strict=True)}


def test_label_map_ids_are_kept_across_two_conversions(voc_root: Path, tmp_path: Path):
    train = convert_dataset("voc", tmp_path / "train", annotations=voc_root / "annotations", **QUIET)
    assert read_label_map(tmp_path / "train" / "label_map.pbtxt") == {1: "circle", 2: "square", 3: "triangle"}
    # A second set whose own class order differs (COCO category order triangle, circle, square).
    other = ["triangle", "circle", "square"]
    (tmp_path / "test.json").write_text(json.dumps(coco_doc(voc_root, stems(voc_root)[:3], categories=other)))
    args = {"annotations": tmp_path / "test.json", "images": voc_root / "images", "fractions": (0, 0, 1)}
    plain = convert_dataset("coco", tmp_path / "plain", **args, **QUIET)
    assert plain.metadata["label_map"]["1"] == "triangle"  # without --label-map the ids would differ
    fixed = convert_dataset("coco", tmp_path / "fixed", label_map=tmp_path / "train" / "label_map.pbtxt", **args,
                            **QUIET)
    assert (tmp_path / "fixed" / "label_map.pbtxt").read_bytes() == (tmp_path / "train" / "label_map.pbtxt").read_bytes()
    assert fixed.metadata["label_map"] == train.metadata["label_map"]
    assert fixed.metadata["label_map_source"] == str(tmp_path / "train" / "label_map.pbtxt")
    ids = class_ids_by_name(tmp_path / "fixed")
    assert ids and ids <= {("circle", 1), ("square", 2), ("triangle", 3)}
    assert class_ids_by_name(tmp_path / "plain") != ids
    # What evaluate checks (label_map_mismatch): the model trained on the first set now meets the same ids.
    model = read_label_map(tmp_path / "train" / "label_map.pbtxt")
    assert label_map_mismatch(model, read_label_map(tmp_path / "fixed" / "label_map.pbtxt"), "m", "d") is None
    assert label_map_mismatch(model, read_label_map(tmp_path / "plain" / "label_map.pbtxt"), "m", "d") is not None


def test_label_map_extra_classes_and_gaps_are_kept_missing_ones_are_an_error(voc_root: Path, tmp_path: Path):
    coco_like = write_label_map_ids({1: "person", 3: "circle", 7: "square", 9: "triangle"}, tmp_path / "lm.pbtxt")
    result = convert_dataset("voc", tmp_path / "o", annotations=voc_root / "annotations", label_map=tmp_path / "lm.pbtxt",
                             fractions=(0, 0, 1), **QUIET)
    assert read_label_map(tmp_path / "o" / "label_map.pbtxt") == coco_like
    assert result.class_names == ["person", "circle", "square", "triangle"]
    assert class_ids_by_name(tmp_path / "o") <= {("circle", 3), ("square", 7), ("triangle", 9)}
    assert "ids with gaps" in CliRunner().invoke(data, [
        "--format", "voc", "--annotations", str(voc_root / "annotations"), "--out", str(tmp_path / "o"), "--quiet",
        "--label-map", str(tmp_path / "lm.pbtxt")]).output

    write_label_map_ids({1: "circle", 2: "dog"}, tmp_path / "small.pbtxt")
    runner = CliRunner()
    result = runner.invoke(data, ["--format", "voc", "--annotations", str(voc_root / "annotations"), "--out",
                                  str(tmp_path / "x"), "--label-map", str(tmp_path / "small.pbtxt"), "--quiet"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: {tmp_path / 'small.pbtxt'} has no id for class(es) square, triangle") or \
        last.startswith(f"Error: {tmp_path / 'small.pbtxt'} has no id for class(es) triangle, square"), last
    assert "--class-map" in last and not (tmp_path / "x").exists()
    # Renaming / dropping with --class-map fixes it.
    result = runner.invoke(data, ["--format", "voc", "--annotations", str(voc_root / "annotations"), "--out",
                                  str(tmp_path / "x"), "--label-map", str(tmp_path / "small.pbtxt"), "--quiet",
                                  "--class-map", "square=dog,triangle=drop"])
    assert result.exit_code == 0, result.output
    assert "label-map ids from" in result.output

    for bad, message in ((tmp_path / "missing.pbtxt", "file not found"), (write_lines(tmp_path / "e.pbtxt", ["x"]),
                                                                           "no items found")):
        result = runner.invoke(data, ["--format", "voc", "--annotations", str(voc_root / "annotations"), "--out",
                                      str(tmp_path / "y"), "--label-map", str(bad), "--quiet"])
        assert result.exit_code == 1 and message in result.output and str(bad) in result.output, result.output


@pytest.mark.parametrize(("split", "message"), [("own", "--split own: the voc dataset declares no split"),
                                                ("half", "--split: split 'half': expected numbers")])
def test_cli_split_errors(voc_root: Path, tmp_path: Path, split: str, message: str):
    result = CliRunner().invoke(data, ["--format", "voc", "--annotations", str(voc_root / "annotations"),
                                       "--out", str(tmp_path / "o"), "--split", split, "--quiet"])
    assert result.exit_code == 1 and message in result.output.strip().splitlines()[-1], result.output
