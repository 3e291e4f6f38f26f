"""The external tools the validator runs: where to find them, and `kubectl kustomize`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def find_tool(name: str, explicit: str | None = None) -> str | None:
    """A tool from --flag, $NAME (upper case), the running interpreter's bin/ (the venv), or PATH.

    None if there is none, or if the one named by the flag or the variable is not an executable.
    """
    chosen = explicit or os.environ.get(name.upper().replace("-", "_"))
    if chosen:
        return shutil.which(chosen)
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def render(kubectl: str, directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`, parsed. Raises RuntimeError with kustomize's message on failure."""
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr or proc.stdout).strip())
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
