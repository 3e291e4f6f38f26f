"""`detserve detect` on what users have: folders, globs, stdin, URLs, videos, cameras; every output format.

One embedded server (`detserve serve`) on the tiny model per module. The tiny model answers one detection per
image (``num_detections`` = the version, 1): class 1 ``mask``, box (0, 0, 0.5, 0.5), score = mean pixel / 255,
so each image's result is known from its pixels.
"""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from serving_harness import CLASS_NAMES, ServerProcess, cached_model, install_version

from detserve.client.cli import main as detserve

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "serving-models"
    repository = tmp_path_factory.mktemp("repository")
    install_version(cached_model("tiny", cache, 1, warmup=None), repository / "detector", 1)
    with ServerProcess(["--repository", str(repository), "--file-system-poll-wait-seconds", "0"]) as process:
        process.wait_ready()
        yield process


def grey(value: int, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """a.png (mean 51), sub/b.jpg, sub/deeper/c.png, a corrupt d.jpg, a notes.txt that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    grey(51).save(root / "a.png")
    grey(102).save(root / "sub" / "b.jpg", quality=100)
    grey(204, (64, 48)).save(root / "sub" / "deeper" / "c.png")
    (root / "d.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def run(server, *args, input=None):
    result = CliRunner().invoke(detserve, ["detect", *map(str, args), "--server", server.grpc_url, "--score-threshold", "0"],
                                input=input)
    return result


def test_folder_is_recursive_sorted_and_skips_a_corrupt_file_by_name(server, folder):
    result = run(server, folder, "--format", "jsonl", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(folder / "a.png"), str(folder / "sub" / "b.jpg"),
                                             str(folder / "sub" / "deeper" / "c.png")]
    assert [len(r["detections"]) for r in records] == [1, 1, 1]
    assert records[0]["detections"][0]["score"] == pytest.approx(51 / 255, abs=1e-6)
    assert records[2]["detections"][0]["box"] == {"xmin": 0.0, "ymin": 0.0, "xmax": 32.0, "ymax": 24.0}
    assert f"skipped: cannot read image {folder / 'd.jpg'}" in result.stderr
    assert "1 input skipped, 3 done" in result.stderr
    strict = run(server, folder, "--strict", "--quiet")
    assert strict.exit_code == 4 and "d.jpg" in strict.stderr and "--strict" in strict.stderr


def test_a_glob_a_missing_file_and_only_bad_inputs(server, folder):
    result = run(server, str(folder / "**" / "*.png"), folder / "missing.png", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [r["image"] for r in json.loads(result.stdout)] == [str(folder / "a.png"),
                                                               str(folder / "sub" / "deeper" / "c.png")]
    assert f"cannot read image {folder / 'missing.png'}" in result.stderr
    none = run(server, str(folder / "*.gif"), folder / "d.jpg")
    assert none.exit_code == 4, none.output  # nothing went through
    assert "no files match" in none.stderr and "Error: InvalidInput: no files match" in none.stderr


def test_stdin(server):
    buffer = io.BytesIO()
    grey(153).save(buffer, format="PNG")
    result = run(server, "-", "--json", input=buffer.getvalue())
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["image"] == "<stdin>" and (record["width"], record["height"]) == (40, 30)
    assert record["detections"][0]["score"] == pytest.approx(153 / 255, abs=1e-6)


@pytest.fixture
def http_folder(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


def test_http_urls_and_a_404_named(server, http_folder, tmp_path):
    good, missing = f"{http_folder}/sub/b.jpg", f"{http_folder}/nope.jpg"
    result = run(server, good, missing, "--format", "csv", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["source"], r["label"], r["class_id"], r["width"], r["height"]) for r in rows] == [
        (good, CLASS_NAMES[0], "1", "40", "30")]
    assert f"skipped: cannot fetch {missing}: HTTP 404" in result.stderr
    assert (tmp_path / "b.png").is_file()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """20 frames, 160x120 at 10 fps, frame i all grey (10 * i)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for i in range(20):
        writer.write(np.full((120, 160, 3), 10 * i, np.uint8))
    writer.release()
    return path


def frame_count(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_a_video_goes_through_in_batches_to_an_annotated_mp4(server, video, tmp_path):
    result = run(server, video, "--format", "jsonl", "--out", tmp_path, "--batch-size", "6")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(20))
    assert [r["timestamp"] for r in records] == pytest.approx([i / 10 for i in range(20)])
    scores = [r["detections"][0]["score"] for r in records]
    assert scores == pytest.approx([10 * i / 255 for i in range(20)], abs=6 / 255)  # mp4v + YUV are lossy
    assert scores == sorted(scores) and len(set(scores)) == 20  # each frame, in order
    assert records[0]["annotated"] == str(tmp_path / "clip.mp4")
    assert frame_count(tmp_path / "clip.mp4") == 20
    capture = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 120)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    capture.release()
    assert "frame" in result.stderr  # the progress bar counts frames


def test_vid_stride_and_max_frames(server, video, tmp_path):
    result = run(server, video, "--format", "jsonl", "--vid-stride", "3", "--max-frames", "4", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == [0, 3, 6, 9]
    assert frame_count(tmp_path / "clip.mp4") == 4


def test_a_camera_that_does_not_exist(server):
    result = run(server, "97", "--quiet")
    assert result.exit_code == 4, result.output
    assert "Error: InvalidInput: cannot open camera 97" in result.stderr


def test_table_and_coco_results_that_pycocotools_reads(server, folder, tmp_path):
    table = run(server, folder / "a.png", folder / "sub" / "b.jpg")
    assert table.exit_code == 0, table.output
    assert f"{folder / 'a.png'} (40x30): 1 detection" in table.stdout and "mask" in table.stdout
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": 7, "file_name": "sub/deeper/c.png", "width": 64, "height": 48},
                     {"id": 3, "file_name": "a.png", "width": 40, "height": 30}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 32, 24], "area": 768,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 15], "area": 300,
                           "iscrowd": 0}],
          "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    plain = run(server, folder, "--format", "coco", "--quiet")
    assert plain.exit_code == 0, plain.output
    assert [r["image_id"] for r in json.loads(plain.stdout)] == [1, 3, 4]  # 2 is d.jpg (skipped)
    result = run(server, folder / "sub" / "deeper" / "c.png", folder / "a.png", "--format", "coco",
                 "--coco-gt", gt_path)
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in results] == [(7, 1, [0, 0, 32, 24]),
                                                                               (3, 1, [0, 0, 20, 15])]
    coco = COCO(str(gt_path))
    evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # the boxes are the ground truth


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])  # decoded by the client / by the server's graph
def test_a_truncated_jpeg_in_a_batch_skips_only_itself(server, tmp_path, encoding):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    grey(51).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # its header still reads
    grey(102).save(tmp_path / "c.png")
    result = run(server, tmp_path, "--format", "jsonl", "--batch-size", "3", "--encoding", encoding)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(tmp_path / "a.png"),
                                                                                 str(tmp_path / "c.png")]
    assert str(tmp_path / "b.jpg") in result.stderr and "1 input skipped, 2 done" in result.stderr


def test_a_symlink_loop_under_a_double_star_glob_yields_each_image_once(server, tmp_path):
    (tmp_path / "sub").mkdir()
    grey(51).save(tmp_path / "a.png")
    grey(102).save(tmp_path / "sub" / "b.png")
    (tmp_path / "sub" / "loop").symlink_to("..", target_is_directory=True)
    result = run(server, str(tmp_path / "**" / "*.png"), "--format", "jsonl", "--quiet")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(tmp_path / "a.png"),
                                                                                 str(tmp_path / "sub" / "b.png")]


def test_folders_and_globs_pick_up_only_image_and_video_extensions(server, tmp_path):
    grey(51).save(tmp_path / "a.png")
    grey(102).save(tmp_path / "b.tiff")
    for name in ("data.h5", "chart.eps", "weather.grib"):  # Pillow has plugins for these; they are not photos
        (tmp_path / name).write_bytes(b"not an image")
    folder = run(server, tmp_path, "--format", "jsonl", "--quiet")
    assert folder.exit_code == 0, folder.output
    assert [json.loads(line)["image"] for line in folder.stdout.splitlines()] == [str(tmp_path / "a.png"),
                                                                                 str(tmp_path / "b.tiff")]
    assert "skipped" not in folder.stderr
    glob = run(server, str(tmp_path / "*"), "--format", "jsonl", "--quiet")
    assert glob.exit_code == 0 and glob.stdout == folder.stdout and "skipped" not in glob.stderr, glob.output
    from detserve.client.sources import IMAGE_EXTENSIONS
    from detserve.client.webdemo.command import example_images

    assert example_images((str(tmp_path),)) == [tmp_path / "a.png", tmp_path / "b.tiff"]
    assert ".h5" not in IMAGE_EXTENSIONS


def test_without_opencv_a_video_is_skipped_by_name_and_the_images_go_through(server, folder, video, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    result = run(server, folder / "a.png", video, folder / "sub" / "b.jpg", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(folder / "a.png"),
                                                                                 str(folder / "sub" / "b.jpg")]
    assert f"skipped: {video}: videos and cameras need OpenCV: pip install 'detserve-client[video]'" in result.stderr
    assert "1 input skipped, 2 done" in result.stderr
    strict = run(server, folder / "a.png", video, "--strict", "--quiet")
    assert strict.exit_code == 4 and "detserve-client[video]" in strict.stderr, strict.output


def test_the_same_video_twice_writes_two_annotated_files(server, video, tmp_path):
    result = run(server, video, video, "--format", "jsonl", "--max-frames", "3", "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    annotated = [json.loads(line)["annotated"] for line in result.stdout.splitlines()]
    assert annotated == [str(tmp_path / "clip.mp4")] * 3 + [str(tmp_path / "clip-2.mp4")] * 3
    assert (frame_count(tmp_path / "clip.mp4"), frame_count(tmp_path / "clip-2.mp4")) == (3, 3)


def test_an_image_the_server_read_but_pillow_cannot_is_skipped_under_out(server, folder, tmp_path, monkeypatch):
    from detserve.client import images
    from detserve.client.errors import InvalidInput

    real_decode = images._decode

    def decode(data, source):  # as if Pillow lacked a decoder the server's graph has (jpeg: bytes go as they are)
        if source.endswith("b.jpg"):
            raise InvalidInput(f"cannot decode image {source}: broken data stream")
        return real_decode(data, source)

    monkeypatch.setattr(images, "_decode", decode)
    result = run(server, folder / "sub" / "b.jpg", folder / "a.png", "--encoding", "jpeg", "--format", "jsonl",
                 "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(folder / "a.png")]
    assert f"skipped: cannot decode image {folder / 'sub' / 'b.jpg'}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    strict = run(server, folder / "sub" / "b.jpg", "--encoding", "jpeg", "--out", tmp_path, "--strict")
    assert strict.exit_code == 4 and "b.jpg" in strict.stderr, strict.output
