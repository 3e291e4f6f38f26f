"""NetworkPolicy semantics (networking.k8s.io/v1) over rendered objects: which Pods a policy isolates, and whether
one connection is allowed.

The rules, as https://kubernetes.io/docs/concepts/services-networking/network-policies/ states them:
- a Pod is isolated for a direction (Ingress, Egress) if any policy of its namespace selects it and lists that
  direction in policyTypes (absent policyTypes: Ingress, plus Egress when the policy has egress rules);
- a connection is allowed only if the source's egress and the destination's ingress both allow it: a side that is
  not isolated allows everything, an isolated side needs one rule of one selecting policy that matches the peer
  and the port (policies add up, none subtracts);
- a rule without `from`/`to` matches every peer, a rule without `ports` every port; a peer is a podSelector (Pods of
  the policy's namespace), a namespaceSelector (every Pod of those namespaces), both (Pods matching both), or an
  ipBlock (addresses outside the cluster: Pod addresses are ephemeral, so here ipBlock never matches a Pod);
- a named port is the destination Pod's container port of that name.
Traffic from the node (kubelet probes, exec, port-forward) is always allowed and not modelled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .objects import by_kind, pod_containers, pod_template, selector_matches, template_labels

DIRECTIONS = ("Ingress", "Egress")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every Namespace by the API server (1.22+)


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a Pod (namespace set) or an address outside the cluster (ip set)."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[int, str]] = field(
        default_factory=dict
    )  # container port name: (number, protocol)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def pod(
    name: str,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    ports: Mapping[str, tuple[int, str]] | None = None,
) -> Endpoint:
    """A Pod; its namespace carries the API server's kubernetes.io/metadata.name label besides `namespace_labels`."""
    ns_labels = {NAMESPACE_NAME_LABEL: namespace, **(namespace_labels or {})}
    return Endpoint(name, namespace, dict(labels or {}), ns_labels, dict(ports or {}))


def external(ip: str, name: str | None = None) -> Endpoint:
    ipaddress.ip_address(ip)  # fail early on a typo
    return Endpoint(name or ip, ip=ip)


def pod_endpoints(objects: list[dict]) -> list[tuple[dict, Endpoint]]:
    """Every Pod-bearing object of the render with the Pod it runs (namespace labels from the render's Namespaces)."""
    namespaces = {
        ns["metadata"]["name"]: ns["metadata"].get("labels") or {} for ns in by_kind(objects, "Namespace")
    }
    found = []
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        namespace = obj["metadata"].get("namespace") or "default"
        ports = {
            p.get("name", str(p["containerPort"])): (p["containerPort"], p.get("protocol", "TCP"))
            for c in pod_containers(obj)
            for p in c.get("ports") or []
        }
        labels = template_labels(template) or {}
        found.append((obj, pod(obj["metadata"]["name"], namespace, labels, namespaces.get(namespace), ports)))
    return found


def network_policies(objects: Iterable[dict]) -> list[dict]:
    return [o for o in objects if o.get("kind") == "NetworkPolicy"]


def _selector_matches(selector: dict | None, labels: Mapping[str, str]) -> bool:
    """A label selector where the empty selector ({}) matches everything, as NetworkPolicy reads it."""
    if not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions"):
        return True
    return selector_matches(selector, dict(labels))


def policy_types(policy: dict) -> set[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if spec.get("egress") else set())


def selects(policy: dict, endpoint: Endpoint) -> bool:
    return (
        endpoint.is_pod
        and (policy.get("metadata") or {}).get("namespace", "default") == endpoint.namespace
        and _selector_matches((policy.get("spec") or {}).get("podSelector"), endpoint.labels)
    )


def selects_every_pod(policy: dict) -> bool:
    return _selector_matches((policy.get("spec") or {}).get("podSelector"), {})


def is_default_deny(policy: dict) -> bool:
    """Selects every Pod of its namespace, isolates both directions and allows nothing."""
    spec = policy.get("spec") or {}
    return (
        selects_every_pod(policy)
        and policy_types(policy) >= set(DIRECTIONS)
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def isolated(policies: Iterable[dict], endpoint: Endpoint, direction: str) -> bool:
    return any(selects(p, endpoint) and direction in policy_types(p) for p in policies)


def _rules(policy: dict, direction: str) -> list[dict]:
    return list((policy.get("spec") or {}).get(direction.lower()) or [])


def peer_matches(peer: dict, policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        if endpoint.ip is None:
            return False
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"], strict=False)
        return inside and not any(
            address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or []
        )
    if not endpoint.is_pod or ("podSelector" not in peer and "namespaceSelector" not in peer):
        return False
    if "namespaceSelector" in peer:
        if not _selector_matches(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or _selector_matches(peer["podSelector"], endpoint.labels)


def port_matches(entry: dict, port: int, protocol: str, destination: Endpoint) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    value = entry.get("port")
    if value is None:
        return True
    if isinstance(value, str) and not value.isdigit():
        named = destination.ports.get(value)
        return named is not None and named == (port, protocol)
    return int(value) <= port <= int(entry.get("endPort", value))


def rule_matches(
    rule: dict,
    direction: str,
    policy_namespace: str,
    peer: Endpoint,
    port: int | None,
    protocol: str,
    dst: Endpoint,
) -> bool:
    """`port` None: any port (does the rule admit this peer at all)."""
    peers = rule.get("from" if direction == "Ingress" else "to") or []
    if peers and not any(peer_matches(p, policy_namespace, peer) for p in peers):
        return False
    entries = rule.get("ports") or []
    return port is None or not entries or any(port_matches(e, port, protocol, dst) for e in entries)


def allowing_policies(
    policies: Iterable[dict],
    subject: Endpoint,
    peer: Endpoint,
    direction: str,
    port: int | None,
    protocol: str = "TCP",
) -> list[dict]:
    """The policies selecting `subject` whose `direction` rules admit `peer` (on `port`, or on some port if None)."""
    dst = subject if direction == "Ingress" else peer
    return [
        p
        for p in policies
        if selects(p, subject)
        and direction in policy_types(p)
        and any(
            rule_matches(r, direction, p["metadata"].get("namespace", "default"), peer, port, protocol, dst)
            for r in _rules(p, direction)
        )
    ]


def admits_port(policies: Iterable[dict], subject: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Some peer may reach `subject` on `port`: it is not isolated for ingress, or a rule admits the port."""
    policies = list(policies)
    if not isolated(policies, subject, "Ingress"):
        return True
    rules = [
        r
        for p in policies
        if selects(p, subject) and "Ingress" in policy_types(p)
        for r in _rules(p, "Ingress")
    ]
    return any(
        not r.get("ports") or any(port_matches(e, port, protocol, subject) for e in r["ports"]) for r in rules
    )


def side_allows(
    policies: list[dict], subject: Endpoint, peer: Endpoint, direction: str, port: int, protocol: str = "TCP"
) -> bool:
    """One side of a connection: `subject`'s `direction` admits `peer` on `port`. Addresses have no policies."""
    if not subject.is_pod or not isolated(policies, subject, direction):
        return True
    return bool(allowing_policies(policies, subject, peer, direction, port, protocol))


def allowed(policies: Iterable[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether `src` may open a connection to `dst` on `port`/`protocol`."""
    policies = list(policies)
    return side_allows(policies, src, dst, "Egress", port, protocol) and side_allows(
        policies, dst, src, "Ingress", port, protocol
    )
