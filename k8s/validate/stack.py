"""One render as a whole: a complete serving stack in a restricted namespace, with references that resolve."""

from __future__ import annotations

from collections.abc import Iterator

from .objects import by_kind, describe, pod_template, selector_matches, template_labels

# What `kubectl apply -k k8s/overlays/<name>` must create for a complete serving stack.
SERVING_STACK_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
)


def check_serving_stack(objects: list[dict]) -> Iterator[str]:
    kinds = {o.get("kind") for o in objects}
    for kind in SERVING_STACK_KINDS:
        if kind not in kinds:
            yield f"the rendered set has no {kind} (incomplete serving stack)"


def check_workload_wiring(objects: list[dict]) -> Iterator[str]:
    """HorizontalPodAutoscalers, PodDisruptionBudgets and ServiceMonitors reach something of the rendered set."""
    workloads = {(o.get("kind"), o["metadata"]["name"]): o for o in objects if pod_template(o) is not None}
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        target = workloads.get((ref.get("kind"), ref.get("name")))
        if target is None:
            yield f"{describe(hpa)}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not in the rendered set"
        elif "replicas" in (target.get("spec") or {}):
            yield f"{describe(target)}: sets replicas while {describe(hpa)} scales it (every apply would reset it)"
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        selector = (pdb.get("spec") or {}).get("selector")
        if not any(selector_matches(selector, template_labels(pod_template(o))) for o in workloads.values()):
            yield f"{describe(pdb)}: selects no Pod of the rendered set"
    for monitor in by_kind(objects, "ServiceMonitor"):
        spec = monitor.get("spec") or {}
        services = [
            s
            for s in by_kind(objects, "Service")
            if selector_matches(spec.get("selector"), s["metadata"].get("labels"))
        ]
        if not services:
            yield f"{describe(monitor)}: selects no Service"
        for endpoint in spec.get("endpoints") or []:
            if not any(
                endpoint.get("port") in {p.get("name") for p in s["spec"].get("ports") or []}
                for s in services
            ):
                yield f"{describe(monitor)}: endpoint port {endpoint.get('port')!r} is not a named port of the Service"


def check_namespace(objects: list[dict]) -> Iterator[str]:
    for ns in by_kind(objects, "Namespace"):
        if (ns["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            yield f"{describe(ns)}: does not enforce the restricted Pod Security Standard"
    namespaced = [o for o in objects if o.get("kind") != "Namespace"]
    if None in {o["metadata"].get("namespace") for o in namespaced}:
        names = ", ".join(describe(o) for o in namespaced if not o["metadata"].get("namespace"))
        yield f"objects without a namespace (they would land in the current context's): {names}"
