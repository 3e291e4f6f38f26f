"""Offline validation of the Kubernetes deployment and serving images (`make k8s-validate`).

    python -m k8s.validate [--kubernetes-version 1.34] [--root DIR] [--no-lint] [--target overlays/gpu ...]
                           [--require-digests]

prints one line per problem on stderr and a summary on stdout; exits with status 1 if there is any problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .driver import validate
from .schema import DEFAULT_KUBERNETES_VERSION

# k8s/validate/cli.py -> the repository root.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m k8s.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPOSITORY_ROOT, help="repository root")
    parser.add_argument("-k", "--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION)
    parser.add_argument("--kubectl", help="kubectl binary (default: $KUBECTL, the venv's, or PATH)")
    parser.add_argument("--no-lint", action="store_true", help="skip yamllint and hadolint")
    parser.add_argument("--target", action="append", help="validate only this target (repeatable)")
    parser.add_argument(
        "--require-digests",
        action="store_true",
        help="an image not pinned by digest, or a placeholder image, is a problem (make deploy)",
    )
    args = parser.parse_args(argv)
    report = validate(
        args.root, args.kubernetes_version, args.kubectl, not args.no_lint, args.target, args.require_digests
    )
    for error in report.errors:
        print(f"k8s-validate: {error}", file=sys.stderr)
    # Components repeat their host's images: each image once.
    for note in dict.fromkeys(n.split(": ", 1)[1] for n in report.notes):
        print(f"k8s-validate: note: {note}")
    targets = ", ".join(report.rendered) or "none"
    status = f"{len(report.errors)} problem(s)" if report.errors else "no problems"
    print(
        f"k8s-validate: rendered {targets}; {report.validated_objects} objects validated against Kubernetes "
        f"{report.kubernetes_version} (strict){'' if args.no_lint else '; yamllint and hadolint run'}: {status}"
    )
    return 1 if report.errors else 0
