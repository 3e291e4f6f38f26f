"""`detserve train --strategy`: the same seeded run on two logical CPU devices (MirroredStrategy) and on two
worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy) as on one device, and the refusals around them.

Each run is its own process: logical devices and a multi-worker strategy must be set up before TensorFlow starts
working, which it already has in the pytest process.

Tolerance. The runs see the same global batch of 4 from the same seeded initialisation, but the losses are not
bit-equal: TFOD2 normalises each replica's loss by that replica's own matched anchors and sums the replicas, batch
norm takes its statistics per replica (2 images, not 4), and the two workers read different TFRecord files (TFOD2
shards by file), so their batches hold other images than the one-device run's. Measured on the synthetic data
(Intel Xeon, 2 cores): logged losses 0.05%-4.0% apart on two logical devices, 0.65%-4.1% on two workers. LOSS_TOLERANCE is 10% of the one-device loss: a
run whose replicas diverge, or that trains on half the batch, leaves it in the first steps.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from detserve.client.cli import main as detserve
from detserve.training.distribution import CPU_DEVICES_ENV, Distribution, tf_config_workers

DETSERVE = Path(sys.executable).with_name("detserve")
STEPS = 6
ARGS = ["--steps", str(STEPS), "--batch-size", "4", "--seed", "0", "--eval-every", "0", "--depth-multiplier", "0.35",
        "--image-size", "128", "--augment", "", "--anchor-scale", "4", "--checkpoint-every", "3", "--no-progress"]
LOSS_TOLERANCE = 0.10
TIMEOUT = 900  # seconds a run may take on a busy 2-core machine


@pytest.fixture(scope="module")
def two_shard_data(synthetic_data: Path, tmp_path_factory) -> Path:
    """The synthetic set again, in two train files: a worker needs one of its own."""
    from detserve.training.data.convert import convert_dataset

    voc = synthetic_data.parent / "voc"
    out = tmp_path_factory.mktemp("two-shards") / "data"
    convert_dataset("voc", out, annotations=voc / "annotations", images=voc / "images", seed=0, num_shards=2,
                    progress=False, echo=None)
    assert len(list(out.glob("train-*.tfrecord"))) == 2
    return out


def _command(data: Path, model_dir: Path, *extra: str) -> list[str]:
    return [str(DETSERVE), "train", "--data", str(data), "--model-dir", str(model_dir), *ARGS, *extra]


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", CPU_DEVICES_ENV)}
    env.update(extra)
    return env


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=_environment(**env), capture_output=True, text=True, timeout=TIMEOUT)


def _losses(model_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (model_dir / "train_history.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "total_loss" in r]
    assert len(steps) == len(set(steps)), f"steps logged twice (by two workers?): {steps}"
    return {r["step"]: r["total_loss"] for r in records if "total_loss" in r}


def _checkpoint_variables(model_dir: Path) -> dict[str, list[int]]:
    import tensorflow as tf

    from detserve.training.checkpoints import checkpoint_step, latest_checkpoint

    prefix = latest_checkpoint(model_dir)
    assert checkpoint_step(prefix) == STEPS
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    return {name: shape for name, shape in shapes.items() if name.startswith("model/")}


# Validation at steps 2, 4 and 6 (after ARGS' --eval-every 0): the evaluation builds its model outside the strategy.
VALIDATION = ("--eval-every", "2")


def _assert_validated(model_dir: Path) -> None:
    records = [json.loads(line) for line in (model_dir / "train_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "val"] == [2, 4, STEPS]
    assert (model_dir / "best" / "best.json").is_file()


def _assert_agrees(losses: dict[int, float], reference: dict[int, float]) -> None:
    assert losses.keys() == reference.keys()
    for step, loss in losses.items():
        assert abs(loss - reference[step]) <= LOSS_TOLERANCE * reference[step], (step, loss, reference[step])


@pytest.fixture(scope="module")
def one_device_run(two_shard_data: Path, tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("one") / "model"
    result = _run(_command(two_shard_data, model_dir, "--strategy", "one"))
    assert result.returncode == 0, result.stdout + result.stderr
    return model_dir


def test_mirrored_over_two_logical_cpus_trains_like_one_device(two_shard_data: Path, one_device_run: Path,
                                                               tmp_path: Path) -> None:
    model_dir = tmp_path / "mirrored"
    result = _run(_command(two_shard_data, model_dir, "--strategy", "mirrored", *VALIDATION),
                  **{CPU_DEVICES_ENV: "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "strategy mirrored: 2 replica(s) (/device:CPU:0, /device:CPU:1)" in result.stdout
    _assert_agrees(_losses(model_dir), _losses(one_device_run))
    _assert_validated(model_dir)
    # One checkpoint of the same model: what evaluate and export restore.
    assert _checkpoint_variables(model_dir) == _checkpoint_variables(one_device_run)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _assert_no_worker_directories(model_dir: Path) -> None:
    """TFOD2's get_filepath: a non-chief worker checkpoints into temp_worker_<id>/ and logs into train/temp_worker_<id>/."""
    assert (model_dir / "train").is_dir()
    leftovers = [p for directory in (model_dir, model_dir / "train") for p in directory.glob("temp_worker_*")]
    assert not leftovers


def _two_workers(command: list[str]) -> tuple[str, str]:
    """Run ``command`` as worker 0 (the chief) and worker 1 of a TF_CONFIG cluster on 127.0.0.1; their outputs."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(command, env=_environment(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n----\n".join(outputs)
    return outputs[0], outputs[1]


def test_two_local_workers_train_like_one_device_and_leave_one_checkpoint(two_shard_data: Path,
                                                                          one_device_run: Path,
                                                                          tmp_path: Path) -> None:
    model_dir = tmp_path / "workers"
    chief, worker = _two_workers(_command(two_shard_data, model_dir, "--strategy", "multi-worker", *VALIDATION))
    assert "strategy multi-worker: 2 replica(s) (2 workers; this one: /job:worker/replica:0/task:0/" in chief
    assert "worker done at step 6; the chief reports the run" in worker
    assert f"trained steps 0->{STEPS}" in chief
    # The chief alone writes into the shared model directory; the other worker's temporary ones are gone.
    _assert_no_worker_directories(model_dir)
    _assert_agrees(_losses(model_dir), _losses(one_device_run))
    _assert_validated(model_dir)
    assert _checkpoint_variables(model_dir) == _checkpoint_variables(one_device_run)


def test_two_workers_plan_one_time_budget_and_stop_at_the_same_step(two_shard_data: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "budget"
    command = _command(two_shard_data, model_dir, "--strategy", "multi-worker", "--time-budget", "30s")
    del command[command.index("--steps"):command.index("--steps") + 2]  # the budget sets the length
    chief, worker = _two_workers(command)
    plan = json.loads((model_dir / "time_budget.json").read_text())
    final = max(_losses(model_dir))
    assert f"worker done at step {final};" in worker  # both left the loop at the step the chief saved
    assert f"planned {plan['total_steps']} steps" in chief and f"planned {plan['total_steps']} steps" in worker
    _assert_no_worker_directories(model_dir)


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    class TwoReplicas:
        num_replicas_in_sync = 2

    mirrored = Distribution(strategy=TwoReplicas(), name="mirrored", devices=("/device:CPU:0", "/device:CPU:1"))
    with pytest.raises(ValueError, match="batch_size 3 does not split across the 2 replicas of --strategy mirrored"):
        mirrored.check_batch(3)
    mirrored.check_batch(4)


def test_multi_worker_needs_tf_config_and_a_file_per_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(detserve, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                           "--strategy", "multi-worker"])
    assert result.exit_code == 2 and "needs TF_CONFIG" in result.output
    two_workers = Distribution(strategy=None, name="multi-worker", devices=(), workers=2, is_chief=True)
    with pytest.raises(ValueError, match=r"2 workers need at least 2 train TFRecord files.*has 1.*--shards 2"):
        two_workers.check_input_files(1)
    two_workers.check_input_files(2)


def test_tf_config_is_read_as_the_training_operator_writes_it() -> None:
    cluster = {"chief": ["a:2222"], "worker": ["b:2222", "c:2222"], "ps": ["d:2222"]}
    assert tf_config_workers({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})}) == 3
    assert tf_config_workers({}) == 0
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object"):
        tf_config_workers({"TF_CONFIG": "worker-0:2222"})


def test_mixed_precision_is_refused_without_a_gpu(tmp_path: Path) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: mixed precision is allowed here")
    result = CliRunner().invoke(detserve, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                           "--mixed-precision"])
    assert result.exit_code == 2
    assert "--mixed-precision needs a GPU" in result.output
    assert tf.keras.mixed_precision.global_policy().name == "float32"


MIXED_PRECISION_RUN = """
import json, sys
from pathlib import Path
import tensorflow as tf
from detserve.training.mixed_precision import enable_mixed_precision
from detserve.training.run import TrainingRequest, prepare_run
from detserve.training.train import train
data, root = Path(sys.argv[1]), Path(sys.argv[2])
losses = {}
for precision in ("float32", "mixed_float16"):  # the same seeded run, then in float16
    if precision == "mixed_float16":
        enable_mixed_precision(require_gpu=False)  # the float16 path, slow on a CPU but the code a GPU runs
    model_dir = root / precision
    prepare_run(TrainingRequest(data_dir=data, model_dir=model_dir, steps=4, batch_size=2, depth_multiplier=0.35,
                                image_size=128, anchor_scale=4.0, augmentations=[]), echo=None)
    result = train(model_dir, 4, checkpoint_every=2, preferred_steps_per_loop=1, progress=False, seed=0)
    losses[precision] = [record.total_loss for record in result.history]
losses["compute_dtype"] = tf.keras.mixed_precision.global_policy().compute_dtype
print(json.dumps(losses))
"""


def test_mixed_precision_trains_float16_and_keeps_float32_weights(two_shard_data: Path, tmp_path: Path) -> None:
    import math

    import tensorflow as tf

    from detserve.training.checkpoints import latest_checkpoint

    result = subprocess.run([sys.executable, "-c", MIXED_PRECISION_RUN, str(two_shard_data), str(tmp_path)],
                            env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert losses.pop("compute_dtype") == "float16"
    full, mixed = losses["float32"], losses["mixed_float16"]
    assert len(mixed) == 4 and all(math.isfinite(loss) for loss in mixed), mixed
    # float16 arithmetic: close to the float32 run, but not the same numbers (it did compute in float16). Per step,
    # one logged loss can stray: float16 scores tie far more often than float32 ones, and which anchors the hard
    # example miner then keeps depends on thread timing (seen once in a full suite on Intel Xeon: 3.00 against
    # 1.89 at step 2, the steps after it back within 1%). So the median step is held to LOSS_TOLERANCE and every
    # step to within 2x: a broken float16 path (overflowing, not training) misses either.
    assert mixed != full
    ratios = sorted(m / f for m, f in zip(mixed, full, strict=True))
    assert abs(statistics.median(ratios) - 1) <= LOSS_TOLERANCE and 0.5 <= ratios[0] <= ratios[-1] <= 2.0, (mixed, full)
    dtypes = tf.train.load_checkpoint(latest_checkpoint(tmp_path / "mixed_float16")).get_variable_to_dtype_map()
    assert {dtype for name, dtype in dtypes.items() if name.startswith("model/")} == {tf.float32}
    # The dynamic loss scale is part of the run's state (LossScaleOptimizer).
    assert "optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE" in dtypes
