"""The install is what README and requirements/ promise."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from detserve.training.check_install import problems

REPO = Path(__file__).resolve().parents[1]


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
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["detserve.commands"]
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="detserve.commands")}
    # A stale editable install would still point at old targets: `make setup` reinstalls on change.
    assert installed == config
    for ep in metadata.entry_points(group="detserve.commands"):
        assert callable(ep.load())


def test_no_deps_requirements_are_hash_pinned() -> None:
    text = (REPO / "requirements" / "no-deps.txt").read_text()
    assert "tf-object-detection-api==0.1" in text
    assert "84218d7f72d48d2a9035df044880694627baf1e9845ecc63a25b03190cd58257" in text
    requirements = [line for line in text.splitlines() if "==" in line and not line.startswith("#")]
    assert len(requirements) == text.count("--hash=sha256:") == 4
