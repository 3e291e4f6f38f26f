"""What one validation run found: the problems, and the rendered objects they were found in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Report:
    kubernetes_version: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(
        default_factory=list
    )  # worth knowing, not a failure (e.g. images not pinned yet)
    rendered: dict[str, list[dict]] = field(default_factory=dict)
    validated_objects: int = 0

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def extend(self, where: str, messages: Iterable[str]) -> None:
        for message in messages:
            self.add(where, message)
