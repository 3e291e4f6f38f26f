"""Hugging Face Space entry point for the detserve web demo (sdk: gradio, app_file: app.py).

The Space runs the page only; the model is served elsewhere (TF Serving or `detserve serve`), reached at
DETSERVE_SERVER (grpc://host:port, grpcs://, http(s)://), model DETSERVE_MODEL. Set both as Space variables, and
DETSERVE_HEADERS ("authorization: Bearer ...", one per line) as a Space secret when the endpoint needs a token.
Example images: put them in examples/ next to this file.
"""

from __future__ import annotations

import os
from pathlib import Path

from detserve.client import Detector
from detserve.client.cli import _parse_headers
from detserve.client.webdemo.app import build_app, launch
from detserve.client.webdemo.command import example_images

HERE = Path(__file__).resolve().parent
SERVER = os.environ.get("DETSERVE_SERVER", "grpc://localhost:8500")
MODEL = os.environ.get("DETSERVE_MODEL", "detector")
HEADERS = _parse_headers(tuple(line for line in os.environ.get("DETSERVE_HEADERS", "").splitlines() if line.strip()))
THRESHOLD = float(os.environ.get("DETSERVE_SCORE_THRESHOLD", "0.5"))

detector = Detector(SERVER, MODEL, headers=HEADERS, timeout=float(os.environ.get("DETSERVE_TIMEOUT", "20")))
examples = example_images((str(HERE / "examples"),)) if (HERE / "examples").is_dir() else []
demo = build_app(detector, examples, THRESHOLD, model=MODEL)

if __name__ == "__main__":
    # Spaces route traffic to port 7860 on all interfaces.
    launch(demo, host="0.0.0.0", port=int(os.environ.get("PORT", "7860")))
