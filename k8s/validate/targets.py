"""The target map: which kustomizations are rendered, and what each is checked against.

A new overlay, job or tool is found by its folder; list it here when it must exist (REQUIRED_TARGETS), when it runs
on known hardware (EXPECTED_HARDWARE) or when it may hold custom resources (ALLOWED_CUSTOM_KINDS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

# Hardware each target must run on. Targets not listed are checked for consistency only (a GPU image must request a
# GPU and the other way round).
EXPECTED_HARDWARE = {
    "overlays/gpu": "gpu",
    "overlays/canary": "gpu",
    "overlays/cpu": "cpu",
    "jobs/train": "gpu",
    "jobs/train-multinode": "gpu",
    "jobs/train-tfjob": "gpu",
}
REQUIRED_TARGETS = ("overlays/gpu", "overlays/cpu", "overlays/canary", "jobs/train", "jobs/train-multinode")
# Components are rendered on top of this overlay.
COMPONENT_HOST = "overlays/gpu"
# Components that add Pods of their own (not containers in the serving Pod), which run on CPU on any host: their
# workloads are judged by image and limits, not by the host's hardware (a GPU host would ask them for a GPU).
OWN_HARDWARE_COMPONENTS = {"components/web-demo"}
# Custom resources that may appear, and where (kubernetes-validate has no schema for them; the default renders must
# stay free of them).
ALLOWED_CUSTOM_KINDS = {"components/servicemonitor": {"ServiceMonitor"}, "jobs/train-tfjob": {"TFJob"}}


@dataclass
class Target:
    name: str  # e.g. "overlays/gpu", "components/model-sync"
    directory: Path  # the kustomization to render (for components: a generated one in a temp dir)
    hardware: str | None
    custom_kinds: frozenset[str]


def _target(name: str, directory: Path, hardware_of: str) -> Target:
    """`hardware_of` names the target whose hardware applies (a component runs on its host's)."""
    return Target(
        name, directory, EXPECTED_HARDWARE.get(hardware_of), frozenset(ALLOWED_CUSTOM_KINDS.get(name, ()))
    )


def discover_targets(root: Path, workdir: Path) -> tuple[list[Target], list[str]]:
    """Every target under root/k8s, and the problems found (a required target missing).

    Components get a kustomization in `workdir` that applies them on top of COMPONENT_HOST.
    """
    k8s = root / "k8s"
    problems, targets = [], []
    for group in ("overlays", "jobs", "tools"):
        for kustomization in sorted((k8s / group).glob("*/kustomization.yaml")):
            name = f"{group}/{kustomization.parent.name}"
            targets.append(_target(name, kustomization.parent, name))
    names = {t.name for t in targets}
    problems += [
        f"{name}: missing (expected {k8s / name}/kustomization.yaml)"
        for name in REQUIRED_TARGETS
        if name not in names
    ]
    host = k8s / COMPONENT_HOST
    for kustomization in sorted((k8s / "components").glob("*/kustomization.yaml")):
        # kustomize accepts only relative paths to other kustomizations: point at them from a temp directory.
        combo = workdir / kustomization.parent.name
        combo.mkdir(parents=True, exist_ok=True)
        (combo / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(host, combo)],
                    "components": [os.path.relpath(kustomization.parent, combo)],
                }
            )
        )
        name = f"components/{kustomization.parent.name}"
        targets.append(_target(name, combo, name if name in OWN_HARDWARE_COMPONENTS else COMPONENT_HOST))
    return targets, problems
