"""The conversion pipeline end to end: TFRecord round trip (ours and TFOD2's decoder), strict mode,
output replacement, determinism, the CLI, and the real face-mask-853 dataset."""

from __future__ import annotations

# isort: off
# TFOD2 needs its compatibility layer in place before TensorFlow is first imported (at collection).
import detserve.training.tfod_compat  # noqa: F401
# isort: on

import json
import shutil
import tomllib
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from lxml import etree
from PIL import Image

from detserve.training.data.cli import data, synth
from detserve.training.data.convert import OutputExistsError, convert_dataset
from detserve.training.data.label_map import read_label_map
from detserve.training.data.records import BoxObject
from detserve.training.data.report import DatasetFormatError, DataValidationError
from detserve.training.data.synthetic import generate_voc_dataset
from detserve.training.data.tfrecord import read_examples, split_pattern
from detserve.training.data.voc import write_voc_annotation

REPO_ROOT = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "echo": None}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """12 synthetic images plus an RGBA PNG, a 16-bit PNG and a box 1 px over the border (all kept)."""
    root = tmp_path_factory.mktemp("synth")
    generate_voc_dataset(root, num_images=12, seed=0)
    Image.new("RGBA", (40, 30), (0, 200, 0, 255)).save(root / "images" / "alpha.png")
    write_voc_annotation(root / "annotations" / "alpha.xml", "alpha.png", 40, 30, [BoxObject("circle", 5, 5, 41, 30)])
    Image.fromarray(np.full((30, 40), 30000, dtype=np.uint16)).save(root / "images" / "deep.png")
    write_voc_annotation(root / "annotations" / "deep.xml", "deep.png", 40, 30, [BoxObject("square", 1, 2, 20, 25)])
    return root


def expected_from_voc(ann_dir: Path) -> dict[str, list[tuple[str, list[float]]]]:
    """Independently of the pipeline: normalised [ymin, xmin, ymax, xmax] per file name, clipped to the image."""
    expected = {}
    for xml in ann_dir.glob("*.xml"):
        root = etree.parse(str(xml)).getroot()
        w, h = float(root.findtext("size/width")), float(root.findtext("size/height"))
        objects = []
        for obj in root.iter("object"):
            b = {k: float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")}
            box = [max(b["ymin"], 0) / h, max(b["xmin"], 0) / w, min(b["ymax"], h) / h, min(b["xmax"], w) / w]
            objects.append((obj.findtext("name"), box))
        expected[root.findtext("filename")] = objects
    return expected


def read_all(out_dir: Path) -> dict:
    examples = {}
    for split in ("train", "val", "test"):
        for example in read_examples(split_pattern(out_dir, split)):
            examples[example.filename] = (split, example)
    return examples


def test_tfrecord_round_trip(synth_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = convert_dataset("voc", out, annotations=synth_dir / "annotations", num_shards=2, **QUIET)
    assert read_label_map(out / "label_map.pbtxt") == {1: "circle", 2: "square", 3: "triangle"}
    assert result.class_names == ["circle", "square", "triangle"]
    assert result.report.counts() == {"box_clipped": 1, "image_16bit": 1, "image_rgba": 1}

    examples = read_all(out)
    expected = expected_from_voc(synth_dir / "annotations")
    assert set(examples) == set(expected)
    label_to_id = {"circle": 1, "square": 2, "triangle": 3}
    for filename, objects in expected.items():
        example = examples[filename][1]
        np.testing.assert_allclose(example.boxes, np.array([b for _, b in objects]).reshape(-1, 4), atol=1e-6)
        assert example.class_names == [label for label, _ in objects]
        assert example.class_ids.tolist() == [label_to_id[label] for label, _ in objects]
        assert example.image.shape == (*Image.open(synth_dir / "images" / filename).size[::-1], 3)
    assert examples["deep.png"][1].image[0, 0].tolist() == [round(30000 / 257)] * 3

    meta = json.loads((out / "dataset.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    for split in ("train", "val", "test"):
        assert sorted(f for f, (s, _) in examples.items() if s == split) == splits[split]
        assert meta["splits"][split]["images"] == len(splits[split])
        assert len(meta["splits"][split]["shards"]) == min(2, len(splits[split]))
    assert [meta["splits"][s]["images"] for s in ("train", "val", "test")] == [11, 2, 1]  # 14 images
    assert json.loads((out / "report.json").read_text())["counts"] == result.report.counts()


def test_tfod2_decoder_reads_the_layout(synth_dir: Path, tmp_path: Path):
    import tensorflow as tf
    from object_detection.core.standard_fields import InputDataFields as F
    from object_detection.data_decoders.tf_example_decoder import TfExampleDecoder

    out = tmp_path / "out"
    convert_dataset("voc", out, annotations=synth_dir / "annotations", **QUIET)
    expected = expected_from_voc(synth_dir / "annotations")
    label_to_id = {"circle": 1, "square": 2, "triangle": 3}
    files = sorted(out.glob("*.tfrecord"))
    decoder = TfExampleDecoder()
    seen = 0
    for serialized in tf.data.TFRecordDataset([str(f) for f in files]):
        tensors = decoder.decode(serialized)
        filename = tensors[F.filename].numpy().decode()
        objects = expected[filename]
        np.testing.assert_allclose(tensors[F.groundtruth_boxes].numpy(), np.array([b for _, b in objects]).reshape(-1, 4),
                                   atol=1e-6)
        assert tensors[F.groundtruth_classes].numpy().tolist() == [label_to_id[label] for label, _ in objects]
        image = tensors[F.image].numpy()
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert tuple(image.shape[:2]) == Image.open(synth_dir / "images" / filename).size[::-1]
        # An 8-bit RGB JPEG is stored byte for byte.
        raw = tf.train.Example.FromString(serialized.numpy()).features.feature["image/encoded"].bytes_list.value[0]
        if filename.endswith(".jpg"):
            assert raw == (synth_dir / "images" / filename).read_bytes()
        seen += 1
    assert seen == len(expected)


def to_coco_and_yolo(voc_root: Path, dest: Path) -> tuple[Path, Path, Path]:
    """The same synthetic dataset as COCO json and YOLO txt (+ names file)."""
    classes = ["circle", "square", "triangle"]
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    labels = dest / "labels"
    labels.mkdir(parents=True)
    for image_id, xml in enumerate(sorted((voc_root / "annotations").glob("synth_*.xml")), start=1):
        root = etree.parse(str(xml)).getroot()
        name, w, h = root.findtext("filename"), int(root.findtext("size/width")), int(root.findtext("size/height"))
        coco["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        lines = []
        for obj in root.iter("object"):
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            cls = classes.index(obj.findtext("name"))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": cls + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0})
            lines.append(f"{cls} {(x0 + x1) / 2 / w:.8f} {(y0 + y1) / 2 / h:.8f} {(x1 - x0) / w:.8f} {(y1 - y0) / h:.8f}")
        (labels / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    (dest / "coco.json").write_text(json.dumps(coco))
    (dest / "names.txt").write_text("\n".join(classes) + "\n")
    return dest / "coco.json", labels, dest / "names.txt"


def test_coco_and_yolo_give_the_same_records_as_voc(tmp_path: Path):
    voc_root = tmp_path / "voc"
    generate_voc_dataset(voc_root, num_images=6, seed=5)
    coco_json, labels, names = to_coco_and_yolo(voc_root, tmp_path / "other")
    outputs = {
        "voc": convert_dataset("voc", tmp_path / "o_voc", annotations=voc_root / "annotations", **QUIET),
        "coco": convert_dataset("coco", tmp_path / "o_coco", annotations=coco_json, images=voc_root / "images", **QUIET),
        "yolo": convert_dataset("yolo", tmp_path / "o_yolo", annotations=labels, images=voc_root / "images", names=names,
                                **QUIET),
    }
    for result in outputs.values():
        assert result.report.problems == [] and result.metadata["total"]["images"] == 6
    reference = read_all(tmp_path / "o_voc")
    for fmt in ("coco", "yolo"):
        examples = read_all(tmp_path / f"o_{fmt}")
        assert set(examples) == set(reference)
        for filename, (split, example) in examples.items():
            assert split == reference[filename][0]  # the split depends only on the file names and seed
            np.testing.assert_allclose(example.boxes, reference[filename][1].boxes, atol=1e-6)
            assert example.class_ids.tolist() == reference[filename][1].class_ids.tolist()


def test_class_map_and_class_list_in_pipeline(synth_dir: Path, tmp_path: Path):
    result = convert_dataset("voc", tmp_path / "o", annotations=synth_dir / "annotations",
                             class_map="circle=round,square=boxy,triangle=drop", classes=["boxy", "round"], **QUIET)
    assert result.class_names == ["boxy", "round"]
    assert read_label_map(tmp_path / "o" / "label_map.pbtxt") == {1: "boxy", 2: "round"}
    meta = result.metadata
    assert meta["class_map"] == {"circle": "round", "square": "boxy", "triangle": None}
    assert meta["dropped_by_class_map"]["triangle"] > 0 and meta["total"]["images"] == 14
    assert {n for e in read_all(tmp_path / "o").values() for n in e[1].class_names} <= {"boxy", "round"}


def test_strict_fails_before_writing_anything(synth_dir: Path, tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    write_voc_annotation(src / "annotations" / "ghost.xml", "ghost.jpg", 10, 10, [])
    out = tmp_path / "nested" / "out"
    with pytest.raises(DataValidationError) as raised:
        convert_dataset("voc", out, annotations=src / "annotations", strict=True, **QUIET)
    assert "image_missing" in str(raised.value) and "ghost.jpg" in str(raised.value)
    assert "box_clipped" not in str(raised.value)  # clips and conversions are allowed in strict mode
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary directory either
    # Without --strict the bad image is skipped and the rest written.
    result = convert_dataset("voc", out, annotations=src / "annotations", **QUIET)
    assert result.metadata["total"]["images"] == 14 and result.report.counts()["image_missing"] == 1
    # Strict mode passes when only conversions and clips were needed.
    convert_dataset("voc", tmp_path / "strict_ok", annotations=synth_dir / "annotations", strict=True, **QUIET)


def test_output_dir_replacement_and_determinism(synth_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    convert_dataset("voc", out, annotations=synth_dir / "annotations", seed=7, **QUIET)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stale.tfrecord").write_bytes(b"old")
    convert_dataset("voc", out, annotations=synth_dir / "annotations", seed=7, **QUIET)  # replaces a conversion
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # same inputs, same bytes; stale file gone
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        convert_dataset("voc", foreign, annotations=synth_dir / "annotations", **QUIET)
    convert_dataset("voc", foreign, annotations=synth_dir / "annotations", overwrite=True, **QUIET)
    assert not (foreign / "notes.txt").exists()

    with pytest.raises(DatasetFormatError, match="no usable images"):
        empty = tmp_path / "bad"
        (empty / "annotations").mkdir(parents=True)
        write_voc_annotation(empty / "annotations" / "x.xml", "x.jpg", 5, 5, [])
        convert_dataset("voc", tmp_path / "never", annotations=empty / "annotations", **QUIET)
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- CLI


def test_cli_synth_then_data(tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(synth, ["--out", str(tmp_path / "s"), "--images", "5", "--classes", "circle,cross", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "Wrote 5 images" in result.output
    result = runner.invoke(data, ["--format", "voc", "--annotations", str(tmp_path / "s" / "annotations"),
                                  "--out", str(tmp_path / "d"), "--split", "0.6,0.2,0.2", "--shards", "2",
                                  "--class-map", "cross=plus", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Data validation: 0 problem(s)" in result.output and "classes: plus, circle" in result.output
    assert read_label_map(tmp_path / "d" / "label_map.pbtxt") == {1: "plus", 2: "circle"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--annotations", "{tmp}/nope"], "VOC annotations not found"),
        (["--annotations", "{src}/annotations", "--split", "0.5,0.5,0.5"], "--split"),
        (["--annotations", "{src}/annotations", "--class-map", "a=b=c"], "source=target"),
        (["--annotations", "{src}/annotations", "--strict", "--classes", "circle"], "--strict: "),
    ],
)
def test_cli_bad_input_exits_1_with_one_line(synth_dir: Path, tmp_path: Path, args: list[str], message: str):
    args = [a.format(tmp=tmp_path, src=synth_dir) for a in args]
    result = CliRunner().invoke(data, ["--format", "voc", "--out", str(tmp_path / "o"), "--quiet", *args])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last
    assert not (tmp_path / "o").exists()


def test_entry_points_declared_in_pyproject_resolve():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["detserve.commands"]
    for name, command in (("data", data), ("synth", synth)):
        module, attr = declared[name].split(":")
        assert getattr(import_module(module), attr) is command


# ---------------------------------------------------------------- the real dataset


@pytest.mark.shared
def test_face_mask_853_two_classes(shared_path, tmp_path: Path):
    root = shared_path("data/face-mask-853")
    result = convert_dataset(
        "voc", tmp_path / "face-mask", images=root / "images", annotations=root / "annotations",
        class_map="with_mask=mask,without_mask=no_mask,mask_weared_incorrect=drop", num_shards=2, strict=True,
        **QUIET,
    )
    meta = result.metadata
    assert meta["total"]["images"] == 853  # every image kept
    assert meta["total"]["boxes"] == {"mask": 3232, "no_mask": 717}
    assert meta["dropped_by_class_map"] == {"mask_weared_incorrect": 123}
    assert sum(meta["splits"][s]["images"] for s in ("train", "val", "test")) == 853
    assert [meta["splits"][s]["images"] for s in ("train", "val", "test")] == [683, 85, 85]
    # The only problems are boxes 1 px past the right border, clipped (real data has them).
    assert set(result.report.counts()) <= {"box_clipped"} and not result.report.fatal
    assert result.report.stats["images_kept"] == 853 and result.report.stats["objects_read"] == 4072
    assert read_label_map(tmp_path / "face-mask" / "label_map.pbtxt") == {1: "mask", 2: "no_mask"}
    assert all(len(result.shards[s]) == 2 for s in ("train", "val", "test"))
