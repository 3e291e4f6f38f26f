"""TFOD2 ``label_map.pbtxt`` (StringIntLabelMap) reading and writing.

Written by hand rather than with ``object_detection.protos`` so that export verification, evaluation
of a SavedModel and the serving side can read label maps without importing TFOD2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from detserve.client.contract import LABEL_ID_OFFSET

_ITEM = re.compile(r"item\s*\{(?P<body>[^{}]*)\}", re.S)
_FIELD = re.compile(r"(?P<key>\w+)\s*:\s*(?P<value>'[^']*'|\"[^\"]*\"|[-\w.]+)")


class LabelMapError(ValueError):
    """A label map that cannot be used (duplicate ids, missing fields, id 0)."""


def write_label_map(class_names: list[str], path: Path | str) -> dict[int, str]:
    """Write ``class_names`` with ids 1..N (0 is TFOD2's background). Returns {id: name}."""
    if len(set(class_names)) != len(class_names):
        raise LabelMapError(f"duplicate class names in {class_names}")
    return write_label_map_ids({index + LABEL_ID_OFFSET: name for index, name in enumerate(class_names)}, path)


def write_label_map_ids(id_to_name: Mapping[int, str], path: Path | str) -> dict[int, str]:
    """Write a label map with the given ids (e.g. an existing label map's, kept across conversions)."""
    id_to_name = dict(sorted(id_to_name.items()))
    text = "".join(f"item {{\n  id: {i}\n  name: '{name}'\n}}\n" for i, name in id_to_name.items())
    Path(path).write_text(text)
    return id_to_name


def parse_label_map(text: str, source: str = "<label map>") -> dict[int, str]:
    """Parse StringIntLabelMap text into {id: name} (``name``, as TFOD2 uses by default; else ``display_name``)."""
    id_to_name: dict[int, str] = {}
    for match in _ITEM.finditer(text):
        fields = {m["key"]: m["value"].strip("'\"") for m in _FIELD.finditer(match["body"])}
        if "id" not in fields or not ({"name", "display_name"} & fields.keys()):
            raise LabelMapError(f"{source}: item without id or name: {match.group(0)!r}")
        item_id = int(fields["id"])
        if item_id <= 0:
            raise LabelMapError(f"{source}: id {item_id} is reserved for the background; ids start at 1")
        if item_id in id_to_name:
            raise LabelMapError(f"{source}: duplicate id {item_id}")
        id_to_name[item_id] = fields.get("name", fields.get("display_name"))
    if not id_to_name:
        raise LabelMapError(f"{source}: no items found")
    return dict(sorted(id_to_name.items()))


def read_label_map(path: Path | str) -> dict[int, str]:
    path = Path(path)
    return parse_label_map(path.read_text(), source=str(path))


def label_map_mismatch(model: Mapping[int, str], data: Mapping[int, str], model_source: str,
                       data_source: str) -> str | None:
    """None when a model's classes and a dataset's label map agree id for id; else why they do not.

    Evaluation matches predictions to ground truth by id: a model trained with another label map (other
    names, another order, another class count) would be scored wrongly without a word.
    """
    differences = []
    for class_id in sorted(set(model) | set(data)):
        in_model, in_data = model.get(class_id), data.get(class_id)
        if in_model != in_data:
            differences.append(f"id {class_id}: {in_model!r} in the model, {in_data!r} in the data")
    if not differences:
        return None
    shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
    return (f"the model's classes ({model_source}) do not match the data's label map ({data_source}): {shown}. "
            "Convert the data so that its ids are the model's (detserve data --class-map) or evaluate the "
            "model trained on this data")
