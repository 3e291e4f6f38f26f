"""Fixtures shared by the test suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Datasets and weights live beside the checkout (../shared), not in the repository.
SHARED_DIR = REPO_ROOT.parent / "shared"


def _shared_path(relative: str) -> Path:
    """``../shared/<relative>``, or skip the calling test saying what is missing."""
    path = SHARED_DIR / relative
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs the shared datasets/weights beside the checkout")
    return path


@pytest.fixture
def shared_path() -> Callable[[str], Path]:
    """``shared_path("data/face-mask-853")`` -> the path under ../shared, or skip the test saying why."""
    return _shared_path
