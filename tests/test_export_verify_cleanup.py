"""kill -9 of an exporter while its verification child runs: the child exits with it, and the child's scratch
directory (a hidden staging directory beside the version) is removed by the next export's cleanup.

No model is trained or loaded: the exporter's request file is replaced by a FIFO, so the real verifier
(``python -m detserve.export.verify``) blocks reading it, as it would block in a long verification.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detserve.export import repository as repo

HANG_GUARD_S = 10.0  # only against a hang: the child exits as soon as it is scheduled after its parent's death

# The exporter's side, as exporter._export calls it, with a request "file" nobody ever writes.
EXPORTER = """
import os, sys
from pathlib import Path
from types import SimpleNamespace
from detserve.export import verify
from detserve.export.parity import Tolerance

verify.write_request = lambda path, images, reference: os.mkfifo(path)
built = SimpleNamespace(samples=[], reference=[], label_map={1: "a"}, input_size=None, tolerance=Tolerance())
verify.verify_in_subprocess(Path(sys.argv[1]), built)
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def _state(pid: int) -> str | None:
    """The process's state letter from /proc, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _until(condition, what: str, timeout: float = HANG_GUARD_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} after {timeout:g} s"
        time.sleep(0.05)


def _open_writer(model_dir: Path) -> int | None:
    """The FIFO's write end once the verifier has it open for reading (it is then past its start-up)."""
    for fifo in model_dir.glob(f"{repo.TEMP_PREFIX}*/request.npz"):
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
    return None


def test_a_killed_exporter_takes_its_verifier_along_and_the_next_export_sweeps_the_scratch(tmp_path):
    model_dir = tmp_path / "repository" / "detector"
    staged = model_dir / f"{repo.TEMP_PREFIX}0-staged"  # what verification would load (never reached)
    exporter = subprocess.Popen([sys.executable, "-c", EXPORTER, str(staged)])
    writer = child = None
    try:
        writer = _until(lambda: _open_writer(model_dir), "the verifier never opened its request")
        (child,) = _children(exporter.pid)
        exporter.send_signal(signal.SIGKILL)
        exporter.wait()
        _until(lambda: _state(child) in (None, "Z"), f"verifier {child} still running after its exporter died")
    finally:
        if exporter.poll() is None:
            exporter.kill()
        if child is not None and _state(child) not in (None, "Z"):
            os.kill(child, signal.SIGKILL)
        if writer is not None:
            os.close(writer)

    (scratch,) = [p for p in model_dir.iterdir() if p.name.startswith(f"{repo.TEMP_PREFIX}{exporter.pid}-")]
    assert (scratch / "params.json").is_file()  # the killed export left it ...
    assert repo.remove_stale_temp_dirs(model_dir) == [scratch]  # ... and the next export's first step removes it
    assert list(model_dir.iterdir()) == []
