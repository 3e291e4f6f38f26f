"""The TF Serving configs in serving/: each parses as its proto, and the generated ConfigMap holds exactly them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from detserve.serving import tfs_config

from .. import rollout
from .objects import by_kind, describe, is_tf_serving, pod_template

SERVING_CONFIGMAP = "tfserving-config"


def check_serving_files(serving_dir: Path) -> list[str]:
    errors = []
    for path in sorted(serving_dir.glob("*.config")):
        try:
            message = tfs_config.parse_file(path)
        except Exception as exc:
            errors.append(str(exc))
            continue
        if isinstance(message, tfs_config.BatchingParameters):
            errors += tfs_config.check_batching(message, str(path))
    # The release and the canary configs must be what `python -m k8s.rollout` writes: the canary's release entry
    # identical to the release's, so `stable` and unversioned clients get the same version in every overlay.
    if (serving_dir / rollout.RELEASE_FILE).exists() and not errors:
        try:
            rollout.read(serving_dir)
        except rollout.RolloutError as exc:
            errors.append(str(exc))
    return errors


def check_configmaps_match_files(objects: list[dict], serving_dir: Path) -> Iterator[str]:
    """The ConfigMap generated from serving/ holds exactly the serving/*.config files, byte for byte."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(serving_dir.glob("*.config"))}
    generated = [
        cm
        for cm in by_kind(objects, "ConfigMap")
        if re.fullmatch(rf"{SERVING_CONFIGMAP}(-[a-z0-9]+)?", cm["metadata"]["name"])
    ]
    if not generated and any(
        is_tf_serving(c)
        for o in objects
        if pod_template(o)
        for c in (pod_template(o).get("spec") or {}).get("containers") or []
    ):
        yield f"no {SERVING_CONFIGMAP} ConfigMap: TF Serving would have no configs"
    for cm in generated:
        data = cm.get("data") or {}
        for key in sorted(set(files) - set(data)):
            yield f"{describe(cm)}: lacks serving/{key}"
        for key in sorted(data):
            if key not in files:
                yield f"{describe(cm)}: key {key} is not a file in serving/ (configs must come from serving/)"
            elif data[key] != files[key]:
                yield f"{describe(cm)}: key {key} differs from serving/{key} (configs must come from serving/)"
