"""The validation report: every problem found while reading a dataset, named by file, object and value.

Readers and validation never raise on bad data; they add a :class:`Problem` and carry on (skip the
object or image, or fix it). The caller decides at the end: print the summary, or in strict mode raise
:class:`DataValidationError` before anything is written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Actions. Strict mode tolerates only the ones in NON_FATAL_ACTIONS: they lose no data and change no
# annotation (a mode conversion of the pixels, a box moved by at most a pixel or two, a note).
SKIPPED_OBJECT = "skipped object"
SKIPPED_IMAGE = "skipped image"
CONVERTED = "converted"
CLIPPED = "clipped"
USED_IMAGE_SIZE = "used image size"
IGNORED = "ignored"
NOTED = "noted"
NON_FATAL_ACTIONS = frozenset({CONVERTED, CLIPPED, NOTED})


class DataValidationError(ValueError):
    """Strict mode found problems; the message is the report summary."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary(only_fatal=True))


class DatasetFormatError(ValueError):
    """The input cannot be read at all (missing annotation path, unparsable COCO file, bad names file)."""


@dataclass(frozen=True)
class Problem:
    kind: str  # e.g. "image_missing", "box_outside_image"; see docs/data.md for the list
    file: str  # the annotation or image file the problem is in
    object_index: int | None  # 0-based position of the object in its annotation file, None for image-level
    field: str  # what was wrong: "bndbox", "size", "mode", "name", "line 3", ...
    value: str  # the offending value, as found
    action: str  # what was done about it: skipped object / skipped image / converted / clipped / ...

    @property
    def fatal(self) -> bool:
        """Whether strict mode fails on it."""
        return self.action not in NON_FATAL_ACTIONS

    def describe(self) -> str:
        where = self.file if self.object_index is None else f"{self.file} object {self.object_index}"
        return f"{where} [{self.field}] {self.value} -> {self.action}"


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)
    # Totals filled in by the pipeline so the summary can say what was kept.
    stats: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        kind: str,
        file: str,
        *,
        object_index: int | None = None,
        field: str = "",
        value: Any = "",
        action: str,
    ) -> Problem:
        problem = Problem(kind, str(file), object_index, field, str(value), action)
        self.problems.append(problem)
        return problem

    def counts(self) -> dict[str, int]:
        """Number of problems per kind, sorted by kind."""
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    def counts_by_action(self) -> dict[str, int]:
        return dict(sorted(Counter(p.action for p in self.problems).items()))

    def of_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def check_strict(self) -> None:
        """Raise :class:`DataValidationError` if any problem is one strict mode does not tolerate."""
        if self.fatal:
            raise DataValidationError(self)

    def summary(self, only_fatal: bool = False) -> str:
        """Counts per kind and one line per problem: file [object], [field] value -> action."""
        problems = self.fatal if only_fatal else self.problems
        stats = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.stats.items())
        head = f"Data validation: {len(problems)} {'strict-mode ' if only_fatal else ''}problem(s)"
        lines = [head + (f" [{stats}]" if stats else "")]
        by_kind: dict[str, list[Problem]] = {}
        for problem in problems:
            by_kind.setdefault(problem.kind, []).append(problem)
        for kind in sorted(by_kind):
            group = by_kind[kind]
            actions = ", ".join(f"{a} {n}" for a, n in sorted(Counter(p.action for p in group).items()))
            lines.append(f"  {kind}: {len(group)} ({actions})")
            lines.extend(f"    {p.describe()}" for p in group)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": dict(self.stats),
            "counts": self.counts(),
            "counts_by_action": self.counts_by_action(),
            "problems": [asdict(p) for p in self.problems],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
