"""k8s/jobs/train-multinode: the Indexed Job's workers find each other (TF_CONFIG from the rendered env, the headless
Service, the NetworkPolicy), and the validator names each planted mistake."""

from __future__ import annotations

import json

import pytest

from detserve.training.distribution import ADDRESS_ENV, INDEX_ENV, WORKERS_ENV, indexed_job_tf_config
from k8s.validate.driver import validate
from k8s.validate.objects import resolve_env
from k8s.validate.training_jobs import check_multinode_training
from tests.test_k8s import KUBECTL, ROOT, VERSION, assert_reported, errors_for, plant

TARGET = "jobs/train-multinode"
TFJOB_TARGET = "jobs/train-tfjob"
KUSTOMIZATION = f"k8s/{TARGET}/kustomization.yaml"
JOB = f"k8s/{TARGET}/job.yaml"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not found: needed to render the kustomizations")


def test_tf_config_is_built_from_the_indexed_job_env() -> None:
    env = {WORKERS_ENV: "3", ADDRESS_ENV: "train-{index}.workers:2222", INDEX_ENV: "2"}
    assert json.loads(indexed_job_tf_config(env)) == {
        "cluster": {"worker": ["train-0.workers:2222", "train-1.workers:2222", "train-2.workers:2222"]},
        "task": {"type": "worker", "index": 2},
    }
    assert indexed_job_tf_config({}) is None
    with pytest.raises(ValueError, match=f"{INDEX_ENV} 3 is outside the 3 workers"):
        indexed_job_tf_config({**env, INDEX_ENV: "3"})
    with pytest.raises(ValueError, match="must be integers"):
        indexed_job_tf_config({WORKERS_ENV: "3", ADDRESS_ENV: env[ADDRESS_ENV]})  # not in an Indexed Job
    with pytest.raises(ValueError, match=r"must name the workers with \{index\}"):
        indexed_job_tf_config({**env, ADDRESS_ENV: "train-0.workers:2222"})


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    report = validate(ROOT, VERSION, KUBECTL, run_lint=False, only=(TARGET,))
    assert not report.errors, report.errors
    return report.rendered[TARGET]


@needs_kubectl
def test_every_worker_address_is_a_pod_of_the_headless_service(rendered: list[dict]) -> None:
    (job,) = [o for o in rendered if o["kind"] == "Job"]
    (service,) = [o for o in rendered if o["kind"] == "Service"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = resolve_env(container, rendered)
    workers = job["spec"]["completions"]
    assert workers == job["spec"]["parallelism"] == int(env[WORKERS_ENV]) == 2
    config = json.loads(indexed_job_tf_config({**env, INDEX_ENV: "1"}))
    name, subdomain = job["metadata"]["name"], job["spec"]["template"]["spec"]["subdomain"]
    assert subdomain == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert config["cluster"]["worker"] == [f"{name}-{i}.{subdomain}:2222" for i in range(workers)]
    assert config["task"] == {"type": "worker", "index": 1}
    assert "--strategy multi-worker" in container["args"][0]
    assert check_multinode_training(rendered) == []


PLANTED = {
    "worker count": ([(KUSTOMIZATION, "path: /spec/parallelism\n        value: 2", "path: /spec/parallelism\n        value: 3")],
                     ("the worker count must agree", "parallelism 3")),
    "not headless": ([(f"k8s/{TARGET}/service-workers.yaml", "  clusterIP: None\n", "")], ("must be headless",)),
    "subdomain": ([(JOB, "      subdomain: detserve-train-workers", "      subdomain: workers")],
                  ("names subdomain detserve-train-workers, the Pod template's is workers",)),
    "policy port": ([(f"k8s/{TARGET}/networkpolicy-train-multinode.yaml", "          port: 2222", "          port: 2223")],
                    ("do not let one worker reach another on port 2222",)),
    "address port": ([(JOB, "detserve-train-workers:2222", "detserve-train-workers:2333")],
                     ("port 2333 is not a container port",)),
    "backoff": ([(KUSTOMIZATION, "path: /spec/backoffLimit\n        value: 4", "path: /spec/backoffLimit\n        value: 1")],
                ("backoffLimit 1 is below the 2 workers",)),
    "gpus": ([(KUSTOMIZATION, "limits/nvidia.com~1gpu\n        value: 1", "limits/nvidia.com~1gpu\n        value: 2")],
             ("nvidia.com/gpu requests 1 and limits 2 must be equal",)),
}


TFJOB = f"k8s/{TFJOB_TARGET}/tfjob.yaml"
TFJOB_PLANTED = {
    "container name": ([(TFJOB, "            - name: tensorflow", "            - name: train")],
                       ("no container named tensorflow",)),
    "port name": ([(TFJOB, "                - name: tfjob-port", "                - name: worker")],
                  ("has no port named tfjob-port",)),
    "policy port": ([(f"k8s/{TFJOB_TARGET}/networkpolicy-train-tfjob.yaml", "          port: 2222", "          port: 2223")],
                    ("do not let one worker reach another on port 2222",)),
    "strategy": ([(TFJOB, "--strategy multi-worker", "--strategy auto")],
                 ("does not train with --strategy multi-worker",)),
}


@needs_kubectl
def test_the_tfjob_renders_clean_with_its_workers_reachable() -> None:
    report = validate(ROOT, VERSION, KUBECTL, run_lint=False, only=(TFJOB_TARGET,))
    assert not report.errors, report.errors
    (tfjob,) = [o for o in report.rendered[TFJOB_TARGET] if o["kind"] == "TFJob"]
    assert tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    claims = [o["metadata"]["name"] for o in report.rendered[TFJOB_TARGET] if o["kind"] == "PersistentVolumeClaim"]
    assert claims == ["detserve-training-shared"]  # the same workspace as the Indexed Job's


@needs_kubectl
@pytest.mark.parametrize(("target", "mistake"), [*((TARGET, m) for m in sorted(PLANTED)),
                                                 *((TFJOB_TARGET, m) for m in sorted(TFJOB_PLANTED))])
def test_a_planted_mistake_is_named(copy_root, target: str, mistake: str) -> None:
    changes, fragments = (PLANTED if target == TARGET else TFJOB_PLANTED)[mistake]
    for relative, old, new in changes:
        plant(copy_root, relative, old, new)
    assert_reported(errors_for(copy_root, target), target, *fragments)
