"""Services and NetworkPolicies against the Pods they select: port names and numbers must agree."""

from __future__ import annotations

from collections.abc import Iterator

from .objects import (
    by_kind,
    describe,
    is_tf_serving,
    pod_template,
    resolve_port,
    selector_matches,
    template_labels,
)


def check_networking(objects: list[dict]) -> Iterator[str]:
    workloads = [(o, pod_template(o)) for o in objects if pod_template(o) is not None]
    for svc in by_kind(objects, "Service"):
        yield from _check_service(svc, workloads)
    for policy in by_kind(objects, "NetworkPolicy"):
        yield from _check_network_policy(policy, workloads)


def _selected(selector: dict | None, workloads: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    return [(o, t) for o, t in workloads if selector_matches(selector, template_labels(t))]


def _check_service(svc: dict, workloads: list[tuple[dict, dict]]) -> Iterator[str]:
    spec = svc.get("spec") or {}
    selected = _selected({"matchLabels": spec.get("selector")}, workloads)
    if not selected:
        yield f"{describe(svc)}: selects no Pod of the rendered set"
    for o, t in selected:
        containers = (t.get("spec") or {}).get("containers") or []
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            hits = [(c, resolve_port(target, c)) for c in containers if resolve_port(target, c) is not None]
            if not hits:
                yield f"{describe(svc)}: port {port.get('name')} targets {target!r}, no container port of {describe(o)}"
                continue
            container, number = hits[0]
            names = {p.get("containerPort"): p.get("name") for p in container.get("ports") or []}
            if port.get("port") != number:
                yield (
                    f"{describe(svc)}: port {port.get('name')} is {port.get('port')} but reaches container port "
                    f"{number}: use the same number on both sides"
                )
            if port.get("name") != names.get(number):
                yield (
                    f"{describe(svc)}: port named {port.get('name')!r} reaches the container port named "
                    f"{names.get(number)!r}: use the same name on both sides"
                )


def _check_network_policy(policy: dict, workloads: list[tuple[dict, dict]]) -> Iterator[str]:
    """Ingress restricted to named ports, and every serving port of the selected Pods admitted."""
    spec = policy.get("spec") or {}
    selected = _selected(spec.get("podSelector"), workloads)
    if not selected:
        yield f"{describe(policy)}: selects no Pod of the rendered set"
    if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
        yield f"{describe(policy)}: does not restrict ingress"
    for o, t in selected:
        containers = (t.get("spec") or {}).get("containers") or []
        served = {
            p["containerPort"] for c in containers if is_tf_serving(c) for p in c.get("ports") or []
        } or {p["containerPort"] for c in containers for p in c.get("ports") or []}
        admitted: set[int] = set()
        for rule in spec.get("ingress") or []:
            if not rule.get("ports"):
                yield f"{describe(policy)}: an ingress rule without ports admits every port"
            for port in rule.get("ports") or []:
                number = next(
                    (n for c in containers if (n := resolve_port(port.get("port"), c)) is not None), None
                )
                if number is None:
                    yield f"{describe(policy)}: admits port {port.get('port')!r}, which no container of {describe(o)} has"
                else:
                    admitted.add(number)
        for number in sorted(served - admitted):
            yield f"{describe(policy)}: does not admit serving port {number} of {describe(o)}"
