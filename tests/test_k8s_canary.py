"""Issue 14, canary: which model/label/version each kind of client reaches before, during and after a canary and
its rollback, computed from what the rendered Deployments really serve.

Each overlay is rendered by k8s/validate (the render `make k8s-validate` checks); the TF Serving config is the
ConfigMap key named by the Deployment's TFS_MODEL_CONFIG_FILE (read by --model_config_file), the flags are the
container's args. Routing uses the embedded server's own policy code (serving.versions.VersionPolicy) and TF
Serving's label rule (ServerCore::UpdateModelVersionLabelMap, server_core.cc: at start-up no version is available,
so a label is accepted only with --allow_version_labels_for_unavailable_models=true; a request for an unknown label
fails with "Unrecognized servable version label").

The design under test (k8s/rollout.py): the release pins version N under the label `stable`
(serving/models.release.config); the canary overlay serves that entry unchanged plus the candidate N+1 as its own
model, detector-canary, over the same base_path (serving/models.canary.config). Both files come from
`python -m k8s.rollout`, which the promotion case runs on a copy of the repository.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from k8s import rollout
from k8s.validate.driver import validate
from serving import tfs_config
from serving.versions import VersionPolicy
from tests.test_k8s import KUBECTL, ROOT, VERSION, _args, _serving_container

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not found: needed to render overlays")



SHIPPED = rollout.read(ROOT / "serving")
N, CANDIDATE = SHIPPED.stable, SHIPPED.canary


@pytest.fixture(scope="module")
def rendered():
    return validate(ROOT, VERSION, KUBECTL, run_lint=False, only=("overlays/gpu", "overlays/cpu", "overlays/canary")).rendered


@dataclass
class Served:
    """What one overlay's Pods serve over one repository state: {model: aspired versions}, {model: labels}."""

    versions: dict[str, set[int]]
    labels: dict[str, dict[str, int]]
    startup_error: str | None

    def reach(self, model: str, version: int | None = None, label: str | None = None) -> int | str:
        """The version a request reaches, or the error it gets."""
        if self.startup_error:
            return f"server down: {self.startup_error}"
        served = self.versions.get(model)
        if not served:
            return f"NOT_FOUND: model {model}"
        if label is not None:
            if label not in self.labels.get(model, {}):
                return f"INVALID_ARGUMENT: Unrecognized servable version label: {label}"
            version = self.labels[model][label]
        if version is None:
            return max(served)
        return version if version in served else f"NOT_FOUND: version {version} of {model}"


def serve(objects: list[dict], on_disk: set[int]) -> Served:
    container = _serving_container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = _args(container)
    assert args["model_config_file"] == "$(TFS_MODEL_CONFIG_FILE)"
    path = env["TFS_MODEL_CONFIG_FILE"]
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tfserving-config-")]
    config = tfs_config.parse_text(configmap["data"][path.rpartition("/")[2]], tfs_config.ModelServerConfig, path)
    allow = args.get("allow_version_labels_for_unavailable_models", "false").lower() == "true"
    versions, labels, error = {}, {}, None
    for model in tfs_config.model_configs(config):
        # Every model of this kit lives under /models/<name>; the canary design may share one base_path.
        versions[model.name] = VersionPolicy.from_model_config(model).aspired(on_disk)
        # ServerCore waits for every model of the initial config (WaitUntilModelsAvailable) before it serves.
        if not versions[model.name]:
            error = f"model {model.name} has no version on disk to load"
        if model.version_labels and not allow:
            error = f"labels of {model.name} need --allow_version_labels_for_unavailable_models"
        labels[model.name] = dict(model.version_labels)
    return Served(versions, labels, error)


def states(rendered) -> dict[str, Served]:
    gpu, canary = rendered["overlays/gpu"], rendered["overlays/canary"]
    return {
        # The candidate is already in the repository (the training Job exported it): the release ignores it.
        "before (gpu, candidate on disk)": serve(gpu, set(range(1, CANDIDATE + 1))),
        "during (canary)": serve(canary, set(range(1, CANDIDATE + 1))),
        # Rollback: return to the gpu overlay; the candidate's directory is still on the volume.
        "after rollback (gpu)": serve(gpu, set(range(1, CANDIDATE + 1))),
    }


def test_shipped_rollout_has_a_candidate_above_the_release():
    assert CANDIDATE is not None and CANDIDATE > N, SHIPPED


def test_rendered_overlays_serve_the_configs_they_name(rendered):
    for target, on_disk in (("overlays/gpu", N), ("overlays/cpu", N), ("overlays/canary", CANDIDATE)):
        served = serve(rendered[target], set(range(1, on_disk + 1)))
        assert served.startup_error is None, (target, served.startup_error)
        assert served.reach("detector") == N, target


def test_unversioned_clients_never_change_version_because_of_a_canary(rendered):
    reached = {name: served.reach("detector") for name, served in states(rendered).items()}
    assert set(reached.values()) == {N}, reached


def test_stable_label_works_in_every_overlay(rendered):
    for target in ("overlays/gpu", "overlays/cpu", "overlays/canary"):
        assert serve(rendered[target], set(range(1, CANDIDATE + 1))).reach("detector", label="stable") == N, target


def test_a_canary_without_its_candidate_on_disk_never_starts(rendered):
    # The new Pods never become ready, so the rolling update keeps the old ones: the canary cannot serve a hole.
    served = serve(rendered["overlays/canary"], set(range(1, N + 1)))
    assert served.reach("detector") == "server down: model detector-canary has no version on disk to load"


def test_only_clients_that_name_the_canary_model_reach_the_candidate(rendered):
    during = states(rendered)["during (canary)"]
    assert during.reach("detector-canary") == CANDIDATE
    assert during.reach("detector", version=N) == N
    # The release model does not serve the candidate even by number: the canary is reached by model name only.
    assert during.reach("detector", version=CANDIDATE) == f"NOT_FOUND: version {CANDIDATE} of detector"


def test_rollback_leaves_nobody_on_the_candidate(rendered):
    after = states(rendered)["after rollback (gpu)"]
    reached = {
        "unversioned": after.reach("detector"),
        "stable": after.reach("detector", label="stable"),
        "by number": after.reach("detector", version=CANDIDATE),
        "canary model": after.reach("detector-canary"),
    }
    assert CANDIDATE not in reached.values(), reached
    assert reached["canary model"] == "NOT_FOUND: model detector-canary"


def test_promotion_moves_every_client_to_the_candidate(copy_root):
    assert rollout.main(["--serving-dir", str(copy_root / "serving"), "promote"]) == 0
    report = validate(copy_root, VERSION, KUBECTL, run_lint=False, only=("overlays/gpu", "overlays/canary"))
    assert report.errors == []
    gpu = serve(report.rendered["overlays/gpu"], set(range(1, CANDIDATE + 1)))
    assert (gpu.reach("detector"), gpu.reach("detector", label="stable")) == (CANDIDATE, CANDIDATE)
    assert gpu.reach("detector", version=N) == f"NOT_FOUND: version {N} of detector"
    assert gpu.reach("detector-canary") == "NOT_FOUND: model detector-canary"
    # The next candidate goes through the same cycle beside the new release.
    assert rollout.main(["--serving-dir", str(copy_root / "serving"), "canary", str(CANDIDATE + 1)]) == 0
    report = validate(copy_root, VERSION, KUBECTL, run_lint=False, only=("overlays/canary",))
    during = serve(report.rendered["overlays/canary"], set(range(1, CANDIDATE + 2)))
    assert (during.reach("detector"), during.reach("detector-canary")) == (CANDIDATE, CANDIDATE + 1)
    # Rolling back a promotion is a release of the previous version: everyone is on N again.
    assert rollout.main(["--serving-dir", str(copy_root / "serving"), "release", str(N)]) == 0
    report = validate(copy_root, VERSION, KUBECTL, run_lint=False, only=("overlays/gpu",))
    gpu = serve(report.rendered["overlays/gpu"], set(range(1, CANDIDATE + 1)))
    assert (gpu.reach("detector"), gpu.reach("detector", label="stable")) == (N, N)
