"""Check the installed stack: one TensorFlow (tensorflow-cpu), one OpenCV (opencv-python-headless), TFOD2
without its declared extras.

Run by `make setup` after installing the locks in requirements/ (`make lock` writes them).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

REQUIRED = {
    "tensorflow-cpu": "2.21.0",
    "tensorboard": "2.21.0",
    "tf-keras": "2.21.0",
    "tf-object-detection-api": "0.1",
    "tf-models-official": "2.20.0",
    "tensorflow-serving-api": "2.21.0",
}
# A second TensorFlow, or TFOD2's declared dependencies that do not work on TF 2.21 / are not needed.
FORBIDDEN = ("tensorflow", "tensorflow-gpu", "tensorflow-intel", "tensorflow-io", "tensorflow-io-gcs-filesystem", "apache-beam")
# Each of these installs the same top-level `cv2` package, over the files of the others: only the headless one
# belongs (lvis declares opencv-python, so it is installed --no-deps).
OPENCV = "opencv-python-headless"
OTHER_OPENCVS = ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def problems() -> list[str]:
    found = []
    for name, version in REQUIRED.items():
        actual = installed_version(name)
        if actual != version:
            found.append(f"{name}=={version} required, found {actual or 'nothing'}")
    for name in FORBIDDEN:
        actual = installed_version(name)
        if actual is not None:
            found.append(f"{name} {actual} is installed but must not be (one TensorFlow: tensorflow-cpu)")
    headless = installed_version(OPENCV)
    for name in OTHER_OPENCVS:
        actual = installed_version(name)
        if actual is not None:
            found.append(
                f"{name} {actual} is installed next to {OPENCV} {headless or '(missing)'}: both write the same cv2 "
                f"files; only {OPENCV} belongs (recreate the venv: rm -rf .venv && make setup)"
            )
    if headless is None:
        found.append(f"{OPENCV} is not installed (cv2 for TFOD2 and lvis)")
    return found


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    found = problems()
    for problem in found:
        print(f"install check: {problem}", file=sys.stderr)
    if found:
        return 1
    print("install check: ok (" + ", ".join(f"{n} {v}" for n, v in REQUIRED.items()) + f", {OPENCV} only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
