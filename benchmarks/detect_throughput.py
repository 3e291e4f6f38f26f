"""`detserve detect` throughput over a folder of images and a video, against the embedded server.

Makes (or takes) a folder of 100 images and a 10 s video (640x360 at 25 fps: frames made from the face-mask
images in ../shared/data/face-mask-853/images when present, read in place and never copied into the repo,
else synthetic), starts ``detserve serve`` (tests/serving_harness.ServerProcess) on a model repository (or
the tiny test model), runs the real command ``detserve detect`` in a subprocess over both ``--rounds`` times
and prints the median images/s and frames/s (wall time of the whole command: start-up, reading, requests,
output; the progress bar off).

    .venv/bin/python benchmarks/detect_throughput.py                               # the tiny test model
    .venv/bin/python benchmarks/detect_throughput.py --repository /work/fm/models  # a real export
    .venv/bin/python benchmarks/detect_throughput.py --out                         # also annotated PNGs / mp4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the serving test harness (tests/serving_harness.py)

from serving_harness import ServerProcess, cached_model, install_version  # noqa: E402

SHARED_IMAGES = ROOT.parent / "shared" / "data" / "face-mask-853" / "images"
WIDTH, HEIGHT = 640, 360


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def source_frames(count: int, seed: int = 0):
    """``count`` RGB 640x360 frames: the shared face-mask photos (resized) if present, else synthetic scenes."""
    photos = sorted(SHARED_IMAGES.glob("*.png")) + sorted(SHARED_IMAGES.glob("*.jpg")) if SHARED_IMAGES.is_dir() else []
    rng = np.random.default_rng(seed)
    for i in range(count):
        if photos:
            with Image.open(photos[i % len(photos)]) as photo:
                yield np.asarray(photo.convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR))
            continue
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
        frame = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy) // 4 % 256], axis=-1).astype(np.uint8)
        x, y = int(rng.integers(0, WIDTH - 120)), int(rng.integers(0, HEIGHT - 120))
        frame[y:y + 120, x:x + 120] = rng.integers(0, 256, 3, dtype=np.uint8)
        yield frame


def make_inputs(directory: Path, images: int, seconds: float, fps: float) -> tuple[Path, Path]:
    import cv2

    folder = directory / "images"
    folder.mkdir()
    for i, frame in enumerate(source_frames(images)):
        Image.fromarray(frame).save(folder / f"{i:04d}.jpg", quality=90)
    video = directory / "video.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    for frame in source_frames(int(seconds * fps), seed=1):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return folder, video


def run_detect(args, server, target: Path, out: Path | None) -> float:
    command = [sys.executable, "-m", "detserve.client.cli", "detect", str(target), "--server", server,
               "--model", args.model, "--quiet", "--format", "jsonl", "--batch-size", str(args.batch_size),
               "--score-threshold", "0.5"]
    if out is not None:
        command += ["--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"detserve detect failed ({result.returncode}): {result.stderr[-2000:]}")
    lines = result.stdout.count("\n")
    return seconds, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None,
                        help="Model repository (<dir>/<model>/<version>) [default: the tiny test model]")
    parser.add_argument("--model", default="detector")
    parser.add_argument("--images", type=Path, default=None, help="A folder of images [default: 100 made here]")
    parser.add_argument("--video", type=Path, default=None, help="A video [default: 10 s 640x360 at 25 fps made here]")
    parser.add_argument("--count", type=int, default=100, help="Images to make")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of the video to make")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=3, help="Runs per input (median reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--transport", choices=["grpc", "rest"], default="grpc")
    parser.add_argument("--out", action="store_true", help="Also write annotated images and video (--out)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="detect-throughput-") as scratch:
        scratch = Path(scratch)
        folder, video = args.images, args.video
        if folder is None or video is None:
            made_folder, made_video = make_inputs(scratch, args.count, args.seconds, args.fps)
            folder, video = folder or made_folder, video or made_video
        repository = args.repository
        if repository is None:
            repository = scratch / "repository"
            install_version(cached_model("tiny", scratch / "cache", 1, warmup=None), repository / args.model, 1)
        flags = ["--repository", str(repository), "--file-system-poll-wait-seconds", "0", "--log-level", "warning"]
        if args.model != "detector":
            flags += ["--model-name", args.model]
        with ServerProcess(flags, log_path=scratch / "server.log") as server:
            server.wait_ready(args.model, timeout=300)
            url = server.url(args.transport)
            print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); server {url}, model {args.model} from {repository}")
            print(f"inputs: {folder} , {video} ; batch size {args.batch_size}, {args.rounds} rounds"
                  + (", annotated output on" if args.out else ""))
            one = next(iter(sorted(folder.iterdir())))
            run_detect(args, url, one, None)  # warms the server's first batch
            startup = statistics.median(run_detect(args, url, one, None)[0] for _ in range(args.rounds))
            print(f"one image (command start-up included): median {startup:.2f} s")
            for label, target, unit in (("folder", folder, "images/s"), ("video", video, "frames/s")):
                rates, count = [], 0
                for round_ in range(args.rounds):
                    out = scratch / f"out-{label}-{round_}" if args.out else None
                    seconds, count = run_detect(args, url, target, out)
                    rates.append(count / seconds)
                noun = "images" if label == "folder" else "frames"
                print(f"{label}: {count} {noun}, median {statistics.median(rates):.1f} {unit} "
                      f"(runs: {', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
