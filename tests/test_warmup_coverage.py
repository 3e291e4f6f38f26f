"""Warmup coverage (issue 14): the exporter's warmup file runs every batch shape each shipped batching config can
form, and no request a server of the repository would reject.

"Formed" is derived here independently of the exporter: with the embedded server's own padding rule
(``BatchingOptions.padded_size``), every batch total from 1 to the largest batch pads to some shape; the warmup's
record sizes, padded the same way, must reach all of them. The end-to-end tests then load a version on a real
`detserve serve` with each config and read the shapes it actually ran from its metrics page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from serving_harness import ServerProcess, cached_model, install_version, write_warmup

from detserve.export.cli import export as export_command
from detserve.export.exporter import default_batching_configs
from detserve.export.warmup import (
    WARMUP_SIGNATURES,
    formable_batch_sizes,
    read_warmup_file,
    warmup_batch_sizes,
    write_warmup_file,
)
from detserve.serving import tfs_config
from detserve.serving.config import BatchingOptions, load_batching_parameters
from detserve.serving.metrics import prometheus_name

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"
SHIPPED = {"cpu": SERVING / "batching.config", "gpu": SERVING / "batching-gpu.config"}


def _options(path: Path) -> BatchingOptions:
    """The config as the embedded server reads it (its loader checks TF Serving's start-up rules too)."""
    return BatchingOptions.from_proto(load_batching_parameters(path))


def _formed(options: BatchingOptions) -> set[int]:
    """Every padded shape a batch of 1..max_batch_size requests' rows can take on this server."""
    return {options.padded_size(total) for total in range(1, options.max_batch_size + 1)}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_configs_are_the_exporters_targets():
    assert default_batching_configs("cpu") == [SHIPPED["cpu"]]
    assert default_batching_configs("gpu") == [SHIPPED["gpu"]]
    assert default_batching_configs() == [SHIPPED["cpu"], SHIPPED["gpu"]]
    with pytest.raises(ValueError, match="tpu"):
        default_batching_configs("tpu")


@pytest.mark.parametrize("servers", ["cpu", "gpu"])
def test_a_version_for_one_kind_of_server_warms_every_shape_its_config_forms(servers):
    options = _options(SHIPPED[servers])
    sizes = warmup_batch_sizes(default_batching_configs(servers))
    assert {options.padded_size(size) for size in sizes.sizes} == _formed(options)
    assert max(sizes.sizes) <= options.max_batch_size  # nothing this server rejects
    assert sizes.unwarmed == {} and sizes.notes == []
    # The exporter's own reading of the config agrees with the padding rule.
    assert formable_batch_sizes(tfs_config.parse_file(SHIPPED[servers])) == sorted(_formed(options))


def test_a_version_for_both_warms_everything_both_accept_and_names_the_gap():
    cpu, gpu = _options(SHIPPED["cpu"]), _options(SHIPPED["gpu"])
    sizes = warmup_batch_sizes(default_batching_configs())
    # A CPU server rejects (and fails the load on) any record above its max_batch_size.
    assert max(sizes.sizes) <= min(cpu.max_batch_size, gpu.max_batch_size)
    assert {cpu.padded_size(s) for s in sizes.sizes} == _formed(cpu)
    reached = {gpu.padded_size(s) for s in sizes.sizes}
    assert reached == {s for s in _formed(gpu) if s <= cpu.max_batch_size}
    # What is left out is reported, by config, and the summary's note says how to warm it.
    assert sizes.unwarmed == {str(SHIPPED["gpu"]): sorted(_formed(gpu) - reached)} == {str(SHIPPED["gpu"]): [64]}
    (note,) = sizes.notes
    assert "[64]" in note and "batching-gpu.config" in note and "--warmup-for" in note


def test_large_batch_splitting_bounds_the_formed_batches_by_max_execution_batch_size(tmp_path):
    split = _write(tmp_path, "split.config", "max_batch_size { value: 128 }\nmax_execution_batch_size { value: 32 }\n"
                   "enable_large_batch_splitting { value: true }\nallowed_batch_sizes: [4, 8, 16, 32]\n")
    # Requests up to 128 are accepted and split; batches run at 4, 8, 16 or 32 only.
    assert warmup_batch_sizes([split]).sizes == [4, 8, 16, 32]
    unsplit = _write(tmp_path, "small.config", "max_batch_size { value: 16 }\nallowed_batch_sizes: [1, 2, 4, 8, 16]\n")
    both = warmup_batch_sizes([split, unsplit])
    assert both.sizes == [1, 2, 4, 8, 16] and both.unwarmed == {str(split): [32]}
    # Without allowed_batch_sizes every size up to the largest batch is a shape of its own.
    plain = _write(tmp_path, "plain.config", "max_batch_size { value: 6 }\n")
    assert warmup_batch_sizes([plain]).sizes == [1, 2, 3, 4, 5, 6]
    endless = _write(tmp_path, "endless.config", "batch_timeout_micros { value: 10 }\n")  # default max: 1000
    with pytest.raises(ValueError, match=r"endless\.config: forms 1000 batch sizes.*set allowed_batch_sizes"):
        warmup_batch_sizes([endless])


def test_the_gpu_warmup_file_holds_a_batch_of_64_per_signature(tmp_path):
    sizes = warmup_batch_sizes(default_batching_configs("gpu"))
    info = write_warmup_file(tmp_path, "detector", sizes)
    by_signature: dict[str, list[int]] = {}
    for log in read_warmup_file(info.path):
        request = log.predict_log.request
        (tensor,) = request.inputs.values()
        by_signature.setdefault(request.model_spec.signature_name, []).append(tensor.tensor_shape.dim[0].size)
    assert by_signature == {signature: [1, 2, 4, 8, 16, 32, 64] for signature in WARMUP_SIGNATURES}


def test_warmup_for_and_batching_config_exclude_each_other(tmp_path):
    result = CliRunner().invoke(export_command, ["--warmup-for", "gpu", "--batching-config", str(SHIPPED["gpu"]),
                                                 "--model-dir", str(tmp_path)])
    assert result.exit_code == 2 and "do not combine it with --batching-config" in result.output


# ------------------------------------------------------------------------------------------------------------
# On a real server: the shapes the version's load actually ran


def _ran_shapes(server: ServerProcess) -> set[int]:
    """execution_batch_size labels of :tensorflow:serving:batching_session:padding_size (one per batch run)."""
    page = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=30).text
    name = prometheus_name("/tensorflow/serving/batching_session/padding_size")
    families = {f.name: f for f in text_string_to_metric_families(page)}
    return {int(s.labels["execution_batch_size"]) for s in families[name].samples if "execution_batch_size" in s.labels}


@pytest.mark.parametrize(
    ("config", "warm_for", "missing"),
    [("gpu", "gpu", set()), ("cpu", "all", set()), ("gpu", "all", {64})],
    ids=["gpu-server-gpu-warmup", "cpu-server-shared-warmup", "gpu-server-shared-warmup"],
)
def test_loading_a_version_runs_every_shape_the_server_forms(tmp_path_factory, config, warm_for, missing):
    repo = tmp_path_factory.mktemp("coverage-repo")
    version = install_version(cached_model("tiny", tmp_path_factory.mktemp("models"), warmup=None),
                              repo / "detector", 1)
    write_warmup(version, warmup_batch_sizes(default_batching_configs(warm_for)).sizes)
    args = ["--model-name", "detector", "--model-base-path", str(repo / "detector"),
            "--batching-parameters-file", str(SHIPPED[config]), "--file-system-poll-wait-seconds", "0"]
    with ServerProcess(args=args) as server:
        server.wait_ready()  # AVAILABLE: no record was rejected
        assert "warmup record(s)" in server.log()
        # No live request has been sent: these batches are the warmup's.
        assert _ran_shapes(server) == _formed(_options(SHIPPED[config])) - missing


@pytest.mark.parametrize(("servers", "largest"), [("cpu", 32), ("gpu", 64), ("all", 32)])
@pytest.mark.parametrize("batches", ["largest", "smallest"])
def test_one_size_warms_one_batch_per_signature_and_names_what_it_leaves(tmp_path, servers, largest, batches):
    every = warmup_batch_sizes(default_batching_configs(servers))
    sizes = warmup_batch_sizes(default_batching_configs(servers), batches)
    kept = largest if batches == "largest" else 1
    assert every.sizes[-1] == largest and every.sizes[0] == 1 and sizes.sizes == [kept]
    assert sizes.unwarmed == every.unwarmed  # the sizes no server accepts stay reported as before
    note = sizes.notes[-1]
    assert f"--warmup-batches {batches}" in note and str([size for size in every.sizes if size != kept]) in note
    info = write_warmup_file(tmp_path, "detector", sizes)
    shapes = [(log.predict_log.request.model_spec.signature_name,
               next(iter(log.predict_log.request.inputs.values())).tensor_shape.dim[0].size)
              for log in read_warmup_file(info.path)]
    assert shapes == [(signature, kept) for signature in WARMUP_SIGNATURES]


def test_an_unknown_warmup_batches_choice_is_refused():
    with pytest.raises(ValueError, match="all, largest or smallest; got 'some'"):
        warmup_batch_sizes(default_batching_configs("cpu"), "some")


@pytest.mark.parametrize("batches", ["largest", "smallest"])
def test_one_size_is_refused_for_gpu_servers(tmp_path, batches):
    result = CliRunner().invoke(export_command, ["--warmup-for", "gpu", "--warmup-batches", batches,
                                                 "--model-dir", str(tmp_path)])
    assert result.exit_code == 2 and f"--warmup-batches {batches} is for CPU servers" in result.output
