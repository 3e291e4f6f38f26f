"""Issue 14, network: who may talk to whom once the kit is applied, computed from the rendered NetworkPolicies.

The targets are rendered by k8s/validate (the render `make k8s-validate` checks) and the namespace is put together
as `kubectl apply -k` would leave it (serving overlay + training Job + upload Pod, optionally a component). The
connections are judged by k8s/validate/netpol.py, an evaluator of the NetworkPolicy rules (its own unit tests come
first, so a wrong evaluator cannot make the matrix pass). Then planted mistakes: the validator must name each one.
"""

from __future__ import annotations

import pytest

from k8s.validate import netpol
from k8s.validate.driver import validate
from k8s.validate.network_flows import (
    CLIENT,
    CLIENT_LABEL,
    CREDENTIAL_ENDPOINTS,
    INTERNET_HTTPS,
    KUBE_DNS,
    PROMETHEUS,
    STRANGER,
)
from k8s.validate.networking import check_networking
from k8s.validate.targets import COMPONENT_HOST
from tests.test_k8s import KUBECTL, ROOT, VERSION, assert_reported, errors_for, plant

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not found: needed to render the kustomizations"
)

SERVING_PORTS = (8500, 8501)
METRICS_PORT = 8501  # --rest_api_port, where /monitoring/prometheus/metrics is (serving/monitoring.config)


# ------------------------------------------------------------------------------------------------------------
# The evaluator, on hand-written policies


def _policy(spec: dict, namespace: str = "ns") -> dict:
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


WEB = netpol.pod("web", "ns", {"app": "web"}, ports={"http": (8080, "TCP")})
OTHER = netpol.pod("other", "ns", {"app": "other"})
FOREIGN = netpol.pod("foreign", "elsewhere", {"app": "other"}, {"team": "a"})


def test_without_policies_everything_is_allowed_and_a_default_deny_stops_everything():
    assert netpol.allowed([], OTHER, WEB, 8080)
    deny = _policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    assert netpol.is_default_deny(deny)
    assert not netpol.allowed([deny], OTHER, WEB, 8080)
    assert not netpol.allowed([deny], WEB, INTERNET_HTTPS, 443)
    # A policy of another namespace selects nothing here.
    assert netpol.allowed(
        [_policy({"podSelector": {}, "policyTypes": ["Ingress"]}, "elsewhere")], OTHER, WEB, 8080
    )


def test_policy_types_default_and_directions_are_independent():
    ingress_only = _policy({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]})
    assert not netpol.allowed([ingress_only], OTHER, WEB, 8080)
    assert netpol.allowed([ingress_only], WEB, INTERNET_HTTPS, 443)  # egress not isolated
    implied = _policy({"podSelector": {"matchLabels": {"app": "web"}}, "egress": [{"ports": [{"port": 53}]}]})
    assert netpol.policy_types(implied) == {"Ingress", "Egress"}
    assert not netpol.allowed([implied], WEB, INTERNET_HTTPS, 443)
    assert netpol.allowed([implied], WEB, INTERNET_HTTPS, 53)


def test_policies_add_up():
    base = _policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    allow = _policy(
        {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}
    )
    assert netpol.allowed([base, allow], OTHER, WEB, 8080) is False  # OTHER's own egress is denied
    assert netpol.side_allows([base, allow], WEB, OTHER, "Ingress", 8080)
    assert not netpol.side_allows([base, allow], WEB, OTHER, "Ingress", 9090)


def test_peers_namespace_and_pod_selectors_are_and_within_one_peer_or_across_peers():
    both = {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "x"}}}
    assert not netpol.peer_matches(both, "ns", FOREIGN)  # namespace matches, Pod does not
    assert netpol.peer_matches({"namespaceSelector": {"matchLabels": {"team": "a"}}}, "ns", FOREIGN)
    assert not netpol.peer_matches(
        {"podSelector": {}}, "ns", FOREIGN
    )  # podSelector alone: the policy's namespace
    assert netpol.peer_matches({"podSelector": {}}, "ns", OTHER)
    assert netpol.peer_matches({"namespaceSelector": {}}, "ns", FOREIGN)  # every namespace
    expr = {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]}}
    assert not netpol.peer_matches(expr, "ns", FOREIGN)
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    assert netpol.peer_matches(block, "ns", netpol.external("10.2.3.4"))
    assert not netpol.peer_matches(block, "ns", netpol.external("10.1.3.4"))
    assert not netpol.peer_matches(block, "ns", netpol.external("fd00::1"))
    assert not netpol.peer_matches(block, "ns", OTHER)  # Pod addresses are not modelled


def test_ports_protocols_ranges_and_named_ports():
    assert netpol.port_matches({"port": 53, "protocol": "UDP"}, 53, "UDP", OTHER)
    assert not netpol.port_matches({"port": 53}, 53, "UDP", OTHER)  # protocol defaults to TCP
    assert netpol.port_matches({"port": 8000, "endPort": 8100}, 8080, "TCP", OTHER)
    assert not netpol.port_matches({"port": 8000, "endPort": 8100}, 8101, "TCP", OTHER)
    assert netpol.port_matches({"port": "http"}, 8080, "TCP", WEB)  # the destination's container port
    assert not netpol.port_matches({"port": "http"}, 8080, "TCP", OTHER)
    assert netpol.port_matches({"protocol": "TCP"}, 1234, "TCP", OTHER)  # no port: every port


# ------------------------------------------------------------------------------------------------------------
# The namespace as applied


@pytest.fixture(scope="module")
def report():
    return validate(ROOT, VERSION, KUBECTL, run_lint=False)


@pytest.fixture(scope="module")
def rendered(report):
    return report.rendered


def namespace(rendered: dict, serving: str = "overlays/gpu") -> list[dict]:
    """What `kubectl apply -k` of `serving`, jobs/train and tools/model-upload leaves in the cluster."""
    return rendered[serving] + rendered["jobs/train"] + rendered["tools/model-upload"]


def endpoint(objects: list[dict], kind: str, name: str) -> netpol.Endpoint:
    found = [
        e for o, e in netpol.pod_endpoints(objects) if o["kind"] == kind and o["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def policies(objects: list[dict]) -> list[dict]:
    return netpol.network_policies(objects)


def _with_labels(pod: netpol.Endpoint, **labels: str) -> netpol.Endpoint:
    return netpol.pod(pod.name, pod.namespace, {**pod.labels, **labels}, pod.namespace_labels, pod.ports)


@pytest.mark.parametrize(
    "target", sorted({"overlays/gpu", "overlays/cpu", "overlays/canary", "components/web-demo"})
)
def test_network_checks_pass_on_every_serving_render(rendered, target):
    host = set(check_networking(rendered[COMPONENT_HOST])) if target.startswith("components/") else set()
    assert [e for e in check_networking(rendered[target]) if e not in host] == []


@pytest.mark.parametrize("target", ["jobs/train", "tools/model-upload", "components/model-sync"])
def test_network_checks_pass_on_jobs_tools_and_model_sync(rendered, target):
    assert list(check_networking(rendered[target])) == []


@pytest.mark.parametrize("serving", ["overlays/gpu", "overlays/cpu", "overlays/canary"])
def test_every_pod_is_under_the_default_deny(rendered, serving):
    objects = namespace(rendered, serving)
    (deny,) = [p for p in policies(objects) if netpol.is_default_deny(p)]
    assert deny["metadata"]["namespace"] == "detserve"
    pods = netpol.pod_endpoints(objects)
    assert {o["kind"] for o, _ in pods} == {"Deployment", "Job", "Pod"}
    for obj, pod in pods:
        assert netpol.selects(deny, pod), obj["metadata"]["name"]
    # Even applied on their own, the Job and the upload Pod are closed both ways by their own policy.
    for target, kind in (("jobs/train", "Job"), ("tools/model-upload", "Pod")):
        own = rendered[target]
        (pod,) = [e for o, e in netpol.pod_endpoints(own) if o["kind"] == kind]
        assert all(netpol.isolated(policies(own), pod, d) for d in netpol.DIRECTIONS), target


@pytest.mark.parametrize("serving", ["overlays/gpu", "overlays/cpu", "overlays/canary"])
def test_serving_ingress_matrix(rendered, serving):
    objects = namespace(rendered, serving)
    pols = policies(objects)
    server = endpoint(objects, "Deployment", "detserve-serving")
    assert {number for number, _ in server.ports.values()} == set(SERVING_PORTS)
    for port in SERVING_PORTS:
        assert netpol.allowed(pols, CLIENT, server, port), f"client namespace -> {port}"
        assert not netpol.allowed(pols, STRANGER, server, port), f"unlabelled namespace -> {port}"
        assert not netpol.allowed(pols, netpol.external("198.51.100.7"), server, port), f"outside -> {port}"
        # A client-labelled Pod counts in this namespace only: elsewhere anyone who creates Pods could set it.
        in_namespace = netpol.pod("tool", "detserve", dict([CLIENT_LABEL]), server.namespace_labels)
        assert netpol.side_allows(pols, server, in_namespace, "Ingress", port)
        assert not netpol.allowed(pols, netpol.pod("x", "other-app", dict([CLIENT_LABEL])), server, port)
    assert netpol.allowed(pols, PROMETHEUS, server, METRICS_PORT)
    assert not netpol.allowed(pols, PROMETHEUS, server, 8500), "Prometheus needs the metrics port only"
    elsewhere = netpol.pod("prometheus", "observability", PROMETHEUS.labels)
    assert not netpol.allowed(pols, elsewhere, server, METRICS_PORT), (
        "only the monitoring namespace's Prometheus"
    )
    assert not netpol.allowed(pols, CLIENT, server, 9000), "no port beyond the two serving ports"


@pytest.mark.parametrize("serving", ["overlays/gpu", "overlays/canary"])
def test_training_job_matrix(rendered, serving):
    objects = namespace(rendered, serving)
    pols = policies(objects)
    train = endpoint(objects, "Job", "detserve-train")
    server = endpoint(objects, "Deployment", "detserve-serving")
    upload = endpoint(objects, "Pod", "model-upload")
    for source in (CLIENT, STRANGER, PROMETHEUS, server, upload, netpol.external("198.51.100.7")):
        for port in (6006, 8080, 8500):
            assert not netpol.allowed(pols, source, train, port), f"{source.name} -> training Pod:{port}"
    assert netpol.allowed(pols, train, INTERNET_HTTPS, 443), "backbone weights, gs://, s3://, registries"
    assert netpol.allowed(pols, train, KUBE_DNS, 53, "UDP")
    assert not netpol.allowed(pols, train, netpol.external("198.51.100.7"), 80), "no plain HTTP"
    for port in SERVING_PORTS:
        assert not netpol.allowed(pols, train, server, port), "the Job is no client of the serving Pods"
        assert not netpol.side_allows(pols, server, train, "Ingress", port)
        # Labelled as a client the serving side would admit it, but its own egress still stops it.
        client_train = _with_labels(train, **dict([CLIENT_LABEL]))
        assert netpol.side_allows(pols, server, client_train, "Ingress", port)
        assert not netpol.allowed(pols, client_train, server, port)


def test_upload_pod_matrix(rendered):
    objects = namespace(rendered)
    pols = policies(objects)
    upload = endpoint(objects, "Pod", "model-upload")
    server = endpoint(objects, "Deployment", "detserve-serving")
    train = endpoint(objects, "Job", "detserve-train")
    for source in (CLIENT, STRANGER, PROMETHEUS, server, train):
        for port in (22, 80, 8080):
            assert not netpol.allowed(pols, source, upload, port), f"{source.name} -> upload Pod:{port}"
    for target, port, protocol in (
        (KUBE_DNS, 53, "UDP"),
        (INTERNET_HTTPS, 443, "TCP"),
        (server, 8500, "TCP"),
    ):
        assert not netpol.allowed(pols, upload, target, port, protocol), f"upload Pod -> {target.name}:{port}"


@pytest.mark.parametrize("serving", ["overlays/gpu", "overlays/cpu"])
def test_serving_egress_without_model_sync_is_dns_only(rendered, serving):
    objects = namespace(rendered, serving)
    pols = policies(objects)
    server = endpoint(objects, "Deployment", "detserve-serving")
    assert netpol.allowed(pols, server, KUBE_DNS, 53, "UDP")
    assert not netpol.allowed(pols, server, INTERNET_HTTPS, 443)
    for address, port in CREDENTIAL_ENDPOINTS:
        assert not netpol.allowed(pols, server, address, port), address.name
    assert not netpol.allowed(pols, server, endpoint(objects, "Job", "detserve-train"), 8080)


def test_model_sync_egress_reaches_storage_and_both_providers_credentials(rendered):
    objects = rendered["components/model-sync"] + rendered["jobs/train"]
    pols = policies(objects)
    server = endpoint(objects, "Deployment", "detserve-serving")
    assert netpol.allowed(pols, server, INTERNET_HTTPS, 443), "gs://, s3://, sts (IRSA)"
    assert netpol.allowed(pols, server, KUBE_DNS, 53, "UDP")
    required = {
        ("169.254.169.254", 80),  # GKE metadata server (Workload Identity)
        ("169.254.169.252", 988),  # GKE metadata server behind the node's redirect
        ("169.254.170.23", 80),  # EKS Pod Identity agent
        ("fd00:ec2::23", 80),  # EKS Pod Identity agent, IPv6
    }
    assert {(a.ip, p) for a, p in CREDENTIAL_ENDPOINTS} == required
    for ip, port in sorted(required):
        assert netpol.allowed(pols, server, netpol.external(ip), port), f"{ip}:{port}"
    # Only those ports on those addresses, and nothing new on the way in.
    assert not netpol.allowed(pols, server, netpol.external("169.254.169.254"), 8080)
    assert not netpol.allowed(pols, server, netpol.external("169.254.170.2"), 80), (
        "ECS's endpoint is not needed"
    )
    assert not netpol.allowed(pols, server, INTERNET_HTTPS, 80)
    assert not netpol.allowed(pols, server, endpoint(objects, "Job", "detserve-train"), 8080)
    assert not netpol.allowed(pols, STRANGER, server, 8500)
    assert netpol.allowed(pols, CLIENT, server, 8500)


def test_web_demo_reaches_the_grpc_port_only(rendered):
    objects = rendered["components/web-demo"]
    pols = policies(objects)
    demo = endpoint(objects, "Deployment", "detserve-web-demo")
    server = endpoint(objects, "Deployment", "detserve-serving")
    assert netpol.allowed(pols, demo, server, 8500)
    assert not netpol.allowed(pols, demo, server, 8501)
    assert not netpol.allowed(pols, demo, INTERNET_HTTPS, 443)
    assert netpol.allowed(pols, STRANGER, demo, 7860), (
        "the page's port (reached by port-forward or an Ingress)"
    )
    # Without the component, the demo's labels open nothing.
    assert not netpol.allowed(policies(rendered["overlays/gpu"]), demo, server, 8500)


# ------------------------------------------------------------------------------------------------------------
# Planted mistakes: the validator names each one


def test_planted_base_mistakes_are_reported(copy_root):
    plant(copy_root, "k8s/base/kustomization.yaml", "  - networkpolicy-default-deny.yaml\n", "")
    # Open the clients' rule to every namespace.
    plant(copy_root, "k8s/base/networkpolicy.yaml", '              detserve.io/client: "true"\n', "")
    plant(
        copy_root,
        "k8s/base/networkpolicy.yaml",
        "        - namespaceSelector:\n            matchLabels:\n",
        "        - namespaceSelector: {}\n",
    )
    # Egress to the internet from the serving Pods.
    plant(
        copy_root,
        "k8s/base/networkpolicy.yaml",
        "    - ports:\n        - protocol: UDP\n",
        "    - ports:\n        - protocol: TCP\n          port: 443\n    - ports:\n        - protocol: UDP\n",
    )
    errors = errors_for(copy_root, "overlays/gpu")
    gpu = "overlays/gpu"
    assert_reported(errors, gpu, "Namespace/detserve", "no default-deny NetworkPolicy")
    assert_reported(
        errors, gpu, "serving port 8500 admits Pods of a namespace without the detserve.io/client"
    )
    assert_reported(errors, gpu, "Deployment/detserve-serving", "may connect to the internet on 443")


def test_planted_job_tool_and_component_mistakes_are_reported(copy_root, report):
    # Prometheus from the wrong namespace (alone in the base: an open clients' rule would hide it).
    plant(copy_root, "k8s/base/networkpolicy-prometheus.yaml", "name: monitoring", "name: monitorin")
    plant(copy_root, "k8s/jobs/train/kustomization.yaml", "  - networkpolicy-train.yaml\n", "")
    plant(
        copy_root,
        "k8s/tools/model-upload/networkpolicy-model-upload.yaml",
        "    - Egress\n",
        "    - Egress\n  ingress:\n    - ports:\n        - protocol: TCP\n          port: 8080\n",
    )
    plant(
        copy_root,
        "k8s/components/model-sync/networkpolicy-model-sync.yaml",
        "        - ipBlock:\n            cidr: 169.254.170.23/32\n",
        "",
    )
    plant(
        copy_root,
        "k8s/components/web-demo/kustomization.yaml",
        "  - networkpolicy-serving-from-web-demo.yaml\n",
        "",
    )
    # The demo page's own port no longer admitted: its Service answers no one.
    plant(copy_root, "k8s/components/web-demo/networkpolicy-web-demo.yaml", "port: 7860", "port: 7861")
    targets = (
        "overlays/gpu",
        "jobs/train",
        "tools/model-upload",
        "components/model-sync",
        "components/web-demo",
    )
    errors = errors_for(copy_root, *targets)
    assert_reported(errors, "overlays/gpu", "Prometheus", "cannot reach the metrics on the REST port 8501")
    assert_reported(errors, "jobs/train", "Job/detserve-train", "isolates its Pods for Ingress and Egress")
    assert_reported(
        errors, "tools/model-upload", "admits ingress to Pod/model-upload, which no Service selects"
    )
    assert_reported(
        errors, "tools/model-upload", "admits port 8080, which no container of Pod/model-upload has"
    )
    assert_reported(errors, "components/model-sync", "the EKS Pod Identity agent (169.254.170.23 port 80)")
    assert_reported(
        errors,
        "components/web-demo",
        "Deployment/detserve-web-demo calls Service/detserve-serving port 8500 (DETSERVE_SERVER)",
        "do not admit it",
    )
    assert_reported(
        errors, "components/web-demo", "Service/detserve-web-demo: port http", "no NetworkPolicy admits"
    )
    # Nothing else is reported for these targets: the checks name the mistake, not its echoes.
    before = set(
        report.errors
    )  # the repository as it is (other work in progress is not this test's business)
    network = [e for e in errors if e.startswith(tuple(f"{t}: " for t in targets)) and e not in before]
    assert len(network) == 8, "\n".join(network)
