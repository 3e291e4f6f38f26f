"""k8s/components/model-sync/model-sync.sh, the sidecar's script, run with a fake rclone over a local 'bucket'."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from k8s import rollout

SCRIPT = Path(__file__).resolve().parents[1] / "k8s" / "components" / "model-sync" / "model-sync.sh"

# Serves `lsf --dirs-only :gcs:bucket/path` and `copy --checksum :gcs:bucket/path/N DEST` from $FAKE_BUCKET,
# and logs each call so the test sees what was copied.
FAKE_RCLONE = r"""#!/bin/sh
set -eu
echo "$*" >> "$FAKE_LOG"
strip() { printf '%s' "$1" | sed 's#^:gcs:[^/]*/models/detector##'; }
case "$1" in
  lsf) ls "$FAKE_BUCKET" | sed 's#$#/#' ;;
  copy) src="$FAKE_BUCKET$(strip "$3")"; mkdir -p "$4"; cp -R "$src/." "$4/"
        test -z "${FAKE_COPY_CHECK:-}" || ls -a "$(dirname "$4")" >> "$FAKE_LOG" ;;
  *) exit 2 ;;
esac
"""

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs /bin/sh")


def _version(bucket: Path, number: int) -> None:
    (bucket / str(number) / "variables").mkdir(parents=True)
    (bucket / str(number) / "saved_model.pb").write_text(f"model {number}")


# The rclone image is Alpine: its sh, grep, sed and awk are busybox's, which differ from GNU in places (e.g. a
# multi-line `grep -e` pattern). Each test runs the script under the host's sh and, when installed, busybox alone.
BUSYBOX = shutil.which("busybox")
APPLETS = ("sh", "cat", "sed", "sort", "tr", "grep", "tail", "awk", "ls", "mv", "rm", "mkdir", "cp", "touch", "date",
           "printf", "dirname", "echo", "test", "sleep")


@pytest.fixture(params=["host", "busybox"])
def userland(request, tmp_path: Path) -> Path | None:
    """None: the host's tools; else a directory holding only busybox applets (PATH is set to it alone)."""
    if request.param == "host":
        return None
    if BUSYBOX is None:
        pytest.skip("busybox not installed (apt-get install busybox; .ci/run does): the Alpine userland untested")
    applets = tmp_path / "busybox-bin"
    applets.mkdir()
    for name in APPLETS:
        (applets / name).symlink_to(BUSYBOX)
    return applets


def _run(tmp_path: Path, loops: int, userland: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    system_path = str(userland) if userland else os.environ["PATH"]
    environment = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{system_path}",
                   "MODEL_SOURCE": "gs://bucket/models/detector", "MODEL_NAME": "detector",
                   "SYNC_INTERVAL_SECONDS": "0", "SYNC_LOOPS": str(loops),
                   "MODELS_ROOT": str(tmp_path / "models"), "HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
                   "FAKE_BUCKET": str(tmp_path / "bucket"), "FAKE_LOG": str(tmp_path / "rclone.log"),
                   "PINNED_CONFIGS": str(tmp_path / "no-such.config"), **env}
    shell = str(userland / "sh") if userland else "sh"
    return subprocess.run([shell, str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=60)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    rclone = tmp_path / "bin" / "rclone"
    rclone.write_text(FAKE_RCLONE)
    rclone.chmod(0o755)
    (tmp_path / "bucket").mkdir()
    return tmp_path


def test_copies_the_newest_versions_renames_them_into_place_prunes_and_beats(sandbox: Path, userland: Path | None) -> None:
    bucket, local = sandbox / "bucket", sandbox / "models" / "detector"
    for number in (1, 2, 3):
        _version(bucket, number)
    first = _run(sandbox, userland=userland, loops=2, FAKE_COPY_CHECK="1")
    assert first.returncode == 0, first.stderr
    # Only the policy's two newest versions are copied (1 would be pruned at once), each through .incoming-N.
    assert sorted(p.name for p in local.iterdir()) == ["2", "3"]
    assert (local / "3" / "saved_model.pb").read_text() == "model 3"
    log = (sandbox / "rclone.log").read_text()
    assert log.count("copy --checksum") == 2, log  # the second loop copies nothing
    assert ".incoming-2" in log and ".incoming-3" in log
    assert (sandbox / "models" / ".model-sync-ready").exists()
    beat = int((sandbox / "heartbeat").read_text())
    assert abs(beat - time.time()) < 60

    # A new version: copied, and the oldest local one is pruned; the newest two stay.
    _version(bucket, 4)
    second = _run(sandbox, userland=userland, loops=2)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in local.iterdir()) == ["3", "4"]
    assert "pruned version 2" in second.stdout


def test_keep_versions_from_the_configmap(sandbox: Path, userland: Path | None) -> None:
    for number in (1, 2, 3, 10):
        _version(sandbox / "bucket", number)
    result = _run(sandbox, userland=userland, loops=1, KEEP_VERSIONS="3")
    assert result.returncode == 0, result.stderr
    # Numeric order, not lexical: 10 is the newest.
    assert sorted(int(p.name) for p in (sandbox / "models" / "detector").iterdir()) == [2, 3, 10]


def test_versions_pinned_by_the_release_and_canary_configs_are_never_pruned(sandbox: Path, userland: Path | None) -> None:
    # Release 2 with candidates 3, 4 and 5 landing after it: the newest two alone would drop the release.
    bucket, local = sandbox / "bucket", sandbox / "models" / "detector"
    for number in (1, 2, 3, 4, 5):
        _version(bucket, number)
    release = rollout.Rollout("detector", "/models/detector", stable=2, canary=4)
    configs = sandbox / "config"
    configs.mkdir()
    (configs / rollout.RELEASE_FILE).write_text(rollout.release_text(release))
    (configs / rollout.CANARY_FILE).write_text(rollout.canary_text(release))
    pinned = f"{configs / rollout.RELEASE_FILE} {configs / rollout.CANARY_FILE} {configs / 'absent.config'}"
    result = _run(sandbox, userland=userland, loops=1, PINNED_CONFIGS=pinned)
    assert result.returncode == 0, result.stderr
    assert sorted(int(p.name) for p in local.iterdir()) == [2, 4, 5]

    # Candidate 4 promoted (`python -m k8s.rollout promote` writes both files): 2 is no longer pinned and goes.
    promoted = rollout.Rollout("detector", "/models/detector", stable=4, canary=4)
    (configs / rollout.RELEASE_FILE).write_text(rollout.release_text(promoted))
    (configs / rollout.CANARY_FILE).write_text(rollout.canary_text(promoted))
    result = _run(sandbox, userland=userland, loops=1, PINNED_CONFIGS=pinned)
    assert result.returncode == 0, result.stderr
    assert sorted(int(p.name) for p in local.iterdir()) == [4, 5]
    assert "pruned version 2" in result.stdout


@pytest.mark.parametrize("env, message", [({"KEEP_VERSIONS": "0"}, "KEEP_VERSIONS"),
                                          ({"MODEL_SOURCE": "/local"}, "MODEL_SOURCE")])
def test_bad_settings_fail_naming_them(sandbox: Path, userland: Path | None, env: dict, message: str) -> None:
    result = _run(sandbox, userland=userland, loops=1, **env)
    assert result.returncode != 0 and message in result.stderr
