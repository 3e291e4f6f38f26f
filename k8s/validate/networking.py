"""Services and NetworkPolicies against the Pods they select: port names and numbers agree, every Pod is isolated
by a default deny or its own policy, and the allowed flows are the project's (network_flows)."""

from __future__ import annotations

from collections.abc import Iterator

from . import netpol
from .network_flows import check_flows
from .objects import (
    by_kind,
    describe,
    pod_template,
    resolve_port,
    selector_matches,
    service_selects,
    template_labels,
)

# Kubeflow's Training Operator gives each TFJob replica a headless Service of its own when it starts the Pods.
OPERATOR_SERVICED_KINDS = {"TFJob"}

def check_networking(objects: list[dict]) -> Iterator[str]:
    workloads = [(o, pod_template(o)) for o in objects if pod_template(o) is not None]
    for svc in by_kind(objects, "Service"):
        yield from _check_service(svc, workloads)
    for policy in by_kind(objects, "NetworkPolicy"):
        yield from _check_network_policy(policy, workloads)
    yield from check_isolation(objects)
    yield from check_flows(objects)


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
    """Each policy on its own: it selects Pods, its rules name ports, and every port it admits exists."""
    spec = policy.get("spec") or {}
    endpoints = netpol.pod_endpoints([o for o, _ in workloads])
    selected = [o for o, e in endpoints if netpol.selects(policy, e)]
    if not selected:
        yield f"{describe(policy)}: selects no Pod of the rendered set"
    types = netpol.policy_types(policy)
    for direction in netpol.DIRECTIONS:
        rules = spec.get(direction.lower()) or []
        if rules and direction not in types:
            yield f"{describe(policy)}: has {direction.lower()} rules but policyTypes leaves out {direction}: ignored"
        for rule in rules:
            if not rule.get("ports"):
                what = "admits" if direction == "Ingress" else "opens"
                yield f"{describe(policy)}: an {direction.lower()} rule without ports {what} every port"
    if netpol.selects_every_pod(policy):
        if not netpol.is_default_deny(policy):
            yield (
                f"{describe(policy)}: selects every Pod of the namespace and allows traffic: keep the namespace-wide "
                "policy a default deny without rules, and open flows per workload"
            )
        return  # ports of a namespace-wide policy are not tied to one workload
    containers_of = {id(o): (t.get("spec") or {}).get("containers") or [] for o, t in workloads}
    for o in selected:
        containers = containers_of[id(o)]
        for rule in spec.get("ingress") or []:
            for port in rule.get("ports") or []:
                if port.get("port") is None:
                    continue
                if not any(resolve_port(port.get("port"), c) is not None for c in containers):
                    yield f"{describe(policy)}: admits port {port.get('port')!r}, which no container of {describe(o)} has"


def check_isolation(objects: list[dict]) -> Iterator[str]:
    """A default deny for every Namespace the render creates, and every Pod isolated both ways by the render itself
    (checkov CKV2_K8S_6): a job or tool applied on its own is as closed as the serving stack."""
    policies = netpol.network_policies(objects)
    for ns in by_kind(objects, "Namespace"):
        name = ns["metadata"]["name"]
        if not any(netpol.is_default_deny(p) and p["metadata"].get("namespace") == name for p in policies):
            yield (
                f"{describe(ns)}: no default-deny NetworkPolicy (podSelector: {{}}, policyTypes: [Ingress, Egress], "
                "no rules): Pods that no other policy selects are open both ways (checkov CKV2_K8S_6)"
            )
    services = by_kind(objects, "Service")
    for obj, endpoint in netpol.pod_endpoints(objects):
        open_ways = [d for d in netpol.DIRECTIONS if not netpol.isolated(policies, endpoint, d)]
        if open_ways:
            yield (
                f"{describe(obj)}: no NetworkPolicy of this render isolates its Pods for {' and '.join(open_ways)} "
                "(add one that selects them; checkov CKV2_K8S_6)"
            )
        served = [
            s
            for s in services
            if service_selects(s, endpoint.labels)
        ]
        if served:
            yield from _service_ports_admitted(obj, endpoint, served, policies)
            continue
        if obj.get("kind") in OPERATOR_SERVICED_KINDS:
            continue  # their Services are made by an operator at run time, not rendered here
        for policy in policies:
            if netpol.selects(policy, endpoint) and "Ingress" in netpol.policy_types(policy):
                if (policy.get("spec") or {}).get("ingress"):
                    yield (
                        f"{describe(policy)}: admits ingress to {describe(obj)}, which no Service selects: nothing "
                        "should connect to it"
                    )


def _service_ports_admitted(obj: dict, endpoint: netpol.Endpoint, services: list[dict], policies: list[dict]) -> Iterator[str]:
    """Every port a Service sends to must be admitted from some peer, or the Service answers no one."""
    containers = ((pod_template(obj) or {}).get("spec") or {}).get("containers") or []
    for svc in services:
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            number = next((n for c in containers if (n := resolve_port(target, c)) is not None), None)
            protocol = port.get("protocol", "TCP")
            if number is not None and not netpol.admits_port(policies, endpoint, number, protocol):
                yield (
                    f"{describe(svc)}: port {port.get('name')} reaches {describe(obj)} on {number}, which no "
                    "NetworkPolicy admits from anywhere"
                )
