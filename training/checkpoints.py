"""Finding and reading TF2 checkpoints written by TFOD2's train_loop (one place for train, evaluate, export),
and the name of the history file that detserve train writes beside them."""

from __future__ import annotations

import re
from pathlib import Path

# One JSON record per logged step or evaluation, in the model directory (written by train.py, drawn by curves.py).
HISTORY_FILE = "train_history.jsonl"


def checkpoint_step(checkpoint_prefix: str | None) -> int:
    """The global step stored in a train_loop checkpoint (0 for none).

    Not the number in ``ckpt-<n>``: TFOD2's CheckpointManager numbers saves, not steps.
    """
    if not checkpoint_prefix:
        return 0
    import tensorflow as tf

    return int(tf.train.load_variable(checkpoint_prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def latest_checkpoint(directory: Path | str) -> str | None:
    """The newest checkpoint prefix in ``directory``: the ``checkpoint`` state file's, else the
    highest-numbered ``ckpt-N.index`` (a copied directory may have lost the state file)."""
    import tensorflow as tf

    directory = Path(directory)
    prefix = tf.train.latest_checkpoint(str(directory))
    if prefix is not None and Path(prefix + ".index").exists():
        return prefix
    numbered = []
    for index_file in directory.glob("ckpt-*.index"):
        match = re.fullmatch(r"ckpt-(\d+)\.index", index_file.name)
        if match:
            numbered.append((int(match[1]), str(index_file.with_suffix(""))))
    return max(numbered)[1] if numbered else None


def resolve_checkpoint(path: Path | str) -> str:
    """A checkpoint prefix (``.../ckpt-7``) or a directory holding checkpoints -> the prefix to restore."""
    path = Path(path)
    if path.is_dir():
        prefix = latest_checkpoint(path)
        if prefix is None:
            raise FileNotFoundError(f"no checkpoint (ckpt-N.index) in {path}")
        return prefix
    if not Path(str(path) + ".index").exists():
        raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index)")
    return str(path)


