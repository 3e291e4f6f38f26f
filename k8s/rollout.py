"""Which model version the Kubernetes stack serves: the release (gpu/cpu overlays) and the canary (canary overlay).

Both TF Serving configs are written by this module from two numbers, so they cannot disagree:

- ``serving/models.release.config``: the model pinned to the released version N, under the label ``stable``;
- ``serving/models.canary.config``: the same entry, unchanged, plus the candidate as its own model
  ``<name>-canary`` over the same base_path, pinned to N+1.

That gives the three properties a canary must have: a client that names nothing stays on N whatever lands in the
repository (the release pins it); ``stable`` works in every overlay; and returning to the gpu overlay (rollback)
serves no model that can reach N+1. TF Serving's metrics are labelled by model name, so the canary's requests,
latency and errors show apart from the release's.

    python -m k8s.rollout status
    python -m k8s.rollout canary 3      # candidate version 3 beside the release; then kubectl apply -k k8s/overlays/canary
    python -m k8s.rollout promote       # release := the candidate; then kubectl apply -k k8s/overlays/gpu
    python -m k8s.rollout release 2     # pin the release to version 2 (roll back, or release without a canary)

(``make release VERSION=N``, ``make canary VERSION=M``, ``make promote`` run the same.)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tensorflow_serving.config import model_server_config_pb2

from detserve.serving import tfs_config

SERVING_DIR = Path(__file__).resolve().parent.parent / "serving"
RELEASE_FILE = "models.release.config"
CANARY_FILE = "models.canary.config"
STABLE_LABEL = "stable"
CANARY_SUFFIX = "-canary"


class RolloutError(ValueError):
    """A release or canary that cannot be written or read; the message names the file and the value."""


@dataclass(frozen=True)
class Rollout:
    name: str
    base_path: str
    stable: int
    canary: int | None = None

    @property
    def canary_name(self) -> str:
        return self.name + CANARY_SUFFIX


_RELEASE_HEADER = """\
# TensorFlow Serving ModelServerConfig (text proto) of the Kubernetes release: k8s/base serves it (gpu and cpu
# overlays). Written by `python -m k8s.rollout` (make release / canary / promote); edit with that, not by hand, so
# that models.canary.config keeps the very same entry.
#
# The released version is pinned (`specific`) and labelled `stable`: a version that lands in the repository (the
# training Job, model-upload, model-sync) is served by no one until it is released, so requests without a version
# never change under the clients, and `stable` works in every overlay. TF Serving assigns labels before it loads
# versions, so the server runs with --allow_version_labels_for_unavailable_models=true (k8s/base sets it).
# Docker images and docker-compose serve models.config instead (the newest versions, no pinning).
"""

_CANARY_HEADER = """\
# TensorFlow Serving ModelServerConfig (text proto) of a canary rollout: k8s/overlays/canary serves it in place of
# models.release.config. Written by `python -m k8s.rollout canary M`; edit with that, not by hand.
#
# The first entry is the release, byte for byte as in models.release.config: clients that name nothing, a version
# or `stable` get exactly what the gpu overlay gives them. The candidate is a second model over the same base_path,
# pinned to version M: clients opt in by model name (ModelSpec.name / /v1/models/<name>-canary:predict), and TF
# Serving's metrics, labelled by model, show the canary's requests and latency apart. Returning to the gpu overlay
# (rollback) drops the candidate model: no request can reach M afterwards.
"""


def _model_entry(name: str, base_path: str, version: int, label: str | None) -> str:
    labels = f'    version_labels {{\n      key: "{label}"\n      value: {version}\n    }}\n' if label else ""
    return (
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy {\n"
        "      specific {\n"
        f"        versions: {version}\n"
        "      }\n"
        "    }\n"
        f"{labels}"
        "  }\n"
    )


def release_text(rollout: Rollout) -> str:
    entry = _model_entry(rollout.name, rollout.base_path, rollout.stable, STABLE_LABEL)
    return f"{_RELEASE_HEADER}model_config_list {{\n{entry}}}\n"


def canary_text(rollout: Rollout) -> str:
    if rollout.canary is None:
        raise RolloutError("a canary config needs a candidate version")
    release = _model_entry(rollout.name, rollout.base_path, rollout.stable, STABLE_LABEL)
    candidate = _model_entry(rollout.canary_name, rollout.base_path, rollout.canary, None)
    return f"{_CANARY_HEADER}model_config_list {{\n{release}{candidate}}}\n"


def _pinned(model: model_server_config_pb2.ModelConfig, path: Path) -> int:
    versions = list(model.model_version_policy.specific.versions)
    if model.model_version_policy.WhichOneof("policy_choice") != "specific" or len(versions) != 1:
        raise RolloutError(f"{path}: model {model.name} must pin exactly one version (`specific`), found "
                           f"{model.model_version_policy.WhichOneof('policy_choice') or 'latest'} {versions}")
    return versions[0]


def read(serving_dir: Path = SERVING_DIR) -> Rollout:
    """The rollout the two files describe; raises RolloutError if they do not come from `write`."""
    release_path, canary_path = serving_dir / RELEASE_FILE, serving_dir / CANARY_FILE
    models = tfs_config.model_configs(tfs_config.parse_file(release_path))
    if len(models) != 1:
        raise RolloutError(f"{release_path}: expected one model, found {[m.name for m in models]}")
    (model,) = models
    rollout = Rollout(model.name, model.base_path, _pinned(model, release_path))
    if dict(model.version_labels) != {STABLE_LABEL: rollout.stable}:
        raise RolloutError(f"{release_path}: labels {dict(model.version_labels)}, expected "
                           f"{{'{STABLE_LABEL}': {rollout.stable}}}")
    if canary_path.exists():
        canary = {m.name: m for m in tfs_config.model_configs(tfs_config.parse_file(canary_path))}
        candidate = canary.get(rollout.canary_name)
        if candidate is None:
            raise RolloutError(f"{canary_path}: no model {rollout.canary_name}")
        rollout = Rollout(rollout.name, rollout.base_path, rollout.stable, _pinned(candidate, canary_path))
    for path, expected in ((release_path, release_text(rollout)), (canary_path, canary_text(rollout))):
        if path.exists() and path.read_text(encoding="utf-8") != expected:
            raise RolloutError(f"{path}: differs from what `python -m k8s.rollout` writes for release "
                               f"{rollout.stable}, canary {rollout.canary}; rewrite it with the tool")
    return rollout


def write(rollout: Rollout, serving_dir: Path = SERVING_DIR) -> None:
    for value, what in ((rollout.stable, RELEASE_FILE), (rollout.canary, CANARY_FILE)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RolloutError(f"{serving_dir / what}: version {value!r} is not a TF Serving version (a positive "
                               "integer); nothing written")
    (serving_dir / RELEASE_FILE).write_text(release_text(rollout), encoding="utf-8")
    if rollout.canary is not None:
        (serving_dir / CANARY_FILE).write_text(canary_text(rollout), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m k8s.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serving-dir", type=Path, default=SERVING_DIR)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="print the released and the candidate version")
    commands.add_parser("promote", help="release the candidate version")
    for command, what in (("release", "pin the release to VERSION"), ("canary", "serve VERSION as the candidate")):
        commands.add_parser(command, help=what).add_argument("version", type=int)
    args = parser.parse_args(argv)
    try:
        current = read(args.serving_dir)
        if args.command == "release":
            updated = Rollout(current.name, current.base_path, args.version, current.canary)
        elif args.command == "canary":
            if args.version == current.stable:
                raise RolloutError(f"canary version {args.version} is the released version; pick the candidate")
            updated = Rollout(current.name, current.base_path, current.stable, args.version)
        elif args.command == "promote":
            if current.canary is None:
                raise RolloutError(f"{args.serving_dir / CANARY_FILE}: no candidate to promote")
            updated = Rollout(current.name, current.base_path, current.canary, current.canary)
        else:
            updated = current
        write(updated, args.serving_dir)
    except (RolloutError, OSError) as exc:
        print(f"k8s.rollout: {exc}", file=sys.stderr)
        return 2
    candidate = f"canary {updated.canary_name} -> {updated.canary}" if updated.canary is not None else "no canary"
    print(f"{updated.name}: release {updated.stable} (label {STABLE_LABEL}); {candidate}")
    if updated != current:
        overlay = "canary" if args.command == "canary" else "gpu"
        written = RELEASE_FILE + (f" and {CANARY_FILE}" if updated.canary is not None else "")
        print(f"wrote {written} in {args.serving_dir}; apply: kubectl apply -k k8s/overlays/{overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
