"""Class mapping: rename, merge and drop dataset classes before writing TFRecords.

Syntax: ``with_mask=mask,without_mask=no_mask,mask_weared_incorrect=drop`` or a YAML file
``{with_mask: mask, without_mask: no_mask, mask_weared_incorrect: drop}`` (``null`` also drops).
Two sources with the same target merge. The mapping is applied once (``a=b,b=c`` sends a to b, not c).
A class the mapping does not mention keeps its name; a mapping entry whose source class is not in the
data is reported (``class_map_unused``, most likely a typo), which fails ``--strict``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .records import Dataset, ImageRecord
from .report import IGNORED, ValidationReport

DROP_WORD = "drop"


class ClassMapError(ValueError):
    """A class-mapping spec or file that cannot be parsed."""


@dataclass(frozen=True)
class ClassMap:
    # source -> target, None = drop; the order of entries is the order of the spec.
    mapping: dict[str, str | None]

    def target(self, label: str) -> str | None:
        """The new name of ``label``, None if it is dropped; unmentioned labels keep their name."""
        return self.mapping.get(label, label)

    def targets(self) -> list[str]:
        """Target classes in order of first appearance in the mapping."""
        return list(dict.fromkeys(t for t in self.mapping.values() if t is not None))

    def output_classes(self, source_classes: Iterable[str]) -> list[str]:
        """Final class order: mapping targets first, then unmentioned source classes in their given order."""
        rest = [c for c in source_classes if c not in self.mapping]
        return list(dict.fromkeys([*self.targets(), *rest]))


def _entry(source: object, target: object, where: str) -> tuple[str, str | None]:
    source = str(source).strip() if source is not None else ""
    if not source:
        raise ClassMapError(f"{where}: empty source class")
    if target is None:
        return source, None
    target = str(target).strip()
    if not target:
        raise ClassMapError(f"{where}: empty target for {source!r}; write {source}={DROP_WORD} to drop it")
    return source, None if target == DROP_WORD else target


def _build(entries: list[tuple[str, str | None]], where: str) -> ClassMap:
    mapping: dict[str, str | None] = {}
    for source, target in entries:
        if source in mapping and mapping[source] != target:
            raise ClassMapError(f"{where}: {source!r} is mapped twice ({mapping[source]!r} and {target!r})")
        mapping[source] = target
    if not mapping:
        raise ClassMapError(f"{where}: empty class mapping")
    return ClassMap(mapping)


def parse_class_map(spec: str) -> ClassMap:
    """Parse ``src=dst,src2=drop`` (no file access)."""
    entries = []
    for item in spec.split(","):
        if not item.strip():
            continue
        if item.count("=") != 1:
            raise ClassMapError(f"class map entry {item.strip()!r} is not of the form source=target")
        source, target = item.split("=")
        entries.append(_entry(source, target, "class map"))
    return _build(entries, "class map")


def load_class_map(spec_or_path: str | Path) -> ClassMap:
    """A YAML file if ``spec_or_path`` names an existing file (or ends in .yaml/.yml), else a spec string."""
    text, path = str(spec_or_path), Path(spec_or_path)
    if "=" in text and path.suffix not in (".yaml", ".yml"):
        return parse_class_map(text)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        return parse_class_map(text)  # raises with the entry that is not source=target
    if not path.is_file():
        raise ClassMapError(f"class map file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ClassMapError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ClassMapError(f"{path}: expected a mapping of source: target, got {type(data).__name__}")
    return _build([_entry(k, v, str(path)) for k, v in data.items()], str(path))


def apply_class_map(
    dataset: Dataset, class_map: ClassMap, report: ValidationReport
) -> tuple[Dataset, dict[str, int]]:
    """Rename/merge/drop objects; images are kept even when all their objects are dropped (negatives).

    Returns the mapped dataset and the number of dropped objects per source class.
    """
    present = {o.label for r in dataset.records for o in r.objects}
    for source, target in class_map.mapping.items():
        if source not in present and source not in dataset.class_names:
            report.add("class_map_unused", "class map", field=source, value=target or DROP_WORD, action=IGNORED)
    dropped: Counter[str] = Counter()
    records: list[ImageRecord] = []
    for record in dataset.records:
        objects = []
        for obj in record.objects:
            target = class_map.target(obj.label)
            if target is None:
                dropped[obj.label] += 1
            else:
                objects.append(dataclasses.replace(obj, label=target))
        records.append(dataclasses.replace(record, objects=objects))
    class_names = class_map.output_classes(dataset.class_names + sorted(present - set(dataset.class_names)))
    return Dataset(records=records, class_names=class_names), dict(sorted(dropped.items()))
