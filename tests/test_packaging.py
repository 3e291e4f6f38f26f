"""The install is what README and requirements/ promise."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from detserve.training import check_install
from detserve.training.check_install import problems

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """``requirements/<name>``: {package: (version, sha256 hashes)} of a `pip install --require-hashes` file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for stanza in re.split(r"\n(?=\S)", (REQUIREMENTS / name).read_text()):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", stanza)
        if match:
            pins[canonical(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", stanza))
    return pins


def requested(name: str) -> set[str]:
    """The package names a ``requirements/<name>.in`` file asks for."""
    lines = (REQUIREMENTS / name).read_text().splitlines()
    return {canonical(re.match(r"[A-Za-z0-9._-]+", line).group()) for line in lines if line and not line.startswith("#")}


def test_one_tensorflow_and_no_tfod2_extras() -> None:
    assert problems() == []
    names = {dist.metadata["Name"].lower().replace("_", "-") for dist in metadata.distributions()}
    assert "tensorflow-cpu" in names
    assert "tensorflow" not in names
    assert "apache-beam" not in names and "tensorflow-io" not in names


def test_every_python_folder_is_a_listed_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *relative)))
    assert found == listed


def test_cli_entry_points_resolve() -> None:
    # Both distributions add commands: the kit (training, export, serving) and the client (the web demo).
    config = {name: target for project in ("pyproject.toml", "client/pyproject.toml")
              for name, target in tomllib.loads((REPO / project).read_text())["project"]["entry-points"]
              ["detserve.commands"].items()}
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="detserve.commands")}
    # A stale editable install would still point at old targets: `make setup` reinstalls on change.
    assert installed == config
    for ep in metadata.entry_points(group="detserve.commands"):
        assert callable(ep.load())


def test_no_deps_requirements_are_hash_pinned() -> None:
    text = (REQUIREMENTS / "no-deps.txt").read_text()
    assert "tf-object-detection-api==0.1" in text
    assert "84218d7f72d48d2a9035df044880694627baf1e9845ecc63a25b03190cd58257" in text
    pins = locked("no-deps.txt")
    assert set(pins) == requested("no-deps.in") == {
        "tf-keras", "tf-object-detection-api", "tf-models-official", "tensorflow-serving-api", "lvis"}
    assert all(hashes for _, hashes in pins.values()), pins


def test_every_package_installed_with_dependencies_is_locked_by_hash() -> None:
    runtime, dev = locked("runtime.txt"), locked("dev.txt")
    # Every stanza is a `==` pin with hashes (pip --require-hashes refuses anything else); the locks are current.
    for name, pins in (("runtime.txt", runtime), ("dev.txt", dev)):
        lines = (REQUIREMENTS / name).read_text().splitlines()
        tops = [line for line in lines if line and not line[0].isspace() and not line.startswith("#")]
        assert all(re.fullmatch(r"\S+==\S+ \\", line) for line in tops), name
        assert len(tops) == len(pins) and all(hashes for _, hashes in pins.values()), name
    assert requested("runtime.in") <= set(runtime) and requested("dev.in") <= set(dev)
    # The shared packages agree (dev.txt is resolved with runtime.txt as constraints).
    assert all(dev[name] == runtime[name] for name in set(dev) & set(runtime))
    # Pip, the build tools and the lock tool are locked too: `make setup` installs nothing unpinned.
    assert {"pip", "setuptools", "wheel"} <= set(runtime) and "uv" in dev
    # One TensorFlow, one OpenCV; lvis (which declares opencv-python) only in no-deps.txt.
    everything = set(runtime) | set(dev)
    assert "tensorflow-cpu" in everything and "opencv-python-headless" in everything
    assert not everything & {"tensorflow", "opencv-python", "lvis", "cython"}
    assert runtime["tensorflow-cpu"][0] == check_install.REQUIRED["tensorflow-cpu"]


def test_the_python_version_is_stated_consistently_and_checked() -> None:
    makefile = (REPO / "Makefile").read_text()
    lock_python = re.search(r"^LOCK_PYTHON := (\S+)$", makefile, re.M).group(1)
    assert lock_python == "3.11"
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == f"=={lock_python}.*"
    assert "--python-version $(LOCK_PYTHON)" in makefile and "$(call check_python,$(PYTHON)," in makefile
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == lock_python


def test_a_second_opencv_is_a_problem(monkeypatch) -> None:
    versions = {"opencv-python": "5.0.0.93", "opencv-python-headless": "5.0.0.93"}
    real = check_install.installed_version
    monkeypatch.setattr(check_install, "installed_version", lambda name: versions.get(name) or real(name))
    found = [p for p in problems() if "opencv" in p]
    assert len(found) == 1
    assert "opencv-python 5.0.0.93 is installed next to opencv-python-headless 5.0.0.93" in found[0]
