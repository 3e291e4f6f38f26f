"""Check the installed stack: one TensorFlow (tensorflow-cpu), TFOD2 without its declared extras.

Run by `make setup` after installing; `--write-constraints` re-pins requirements/constraints.txt.
"""

from __future__ import annotations

import argparse
import subprocess
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
NO_DEPS = ("tf-keras", "tf-object-detection-api", "tf-models-official", "tensorflow-serving-api")


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
    return found


def write_constraints(path: str) -> None:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    keep = [line for line in frozen if line.split("==")[0].lower() not in NO_DEPS]
    header = [
        "# Pinned versions for a fresh machine (Python 3.11, linux x86_64). Regenerate with: make lock",
        "# The --no-deps packages are pinned by hash in no-deps.txt.",
    ]
    with open(path, "w") as handle:
        handle.write("\n".join(header + keep) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-constraints", metavar="PATH")
    args = parser.parse_args()
    found = problems()
    for problem in found:
        print(f"install check: {problem}", file=sys.stderr)
    if found:
        return 1
    print("install check: ok (" + ", ".join(f"{n} {v}" for n, v in REQUIRED.items()) + ")")
    if args.write_constraints:
        write_constraints(args.write_constraints)
        print(f"wrote {args.write_constraints}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
