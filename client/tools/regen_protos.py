#!/usr/bin/env python3
"""Regenerate (or check) the client's ``*_pb2.py`` from its minimal ``.proto`` files.

    python client/tools/regen_protos.py           # rewrite client/src/detserve/client/protos/*_pb2.py
    python client/tools/regen_protos.py --check   # exit 1 if the committed files are not current

Needs ``grpcio-tools`` (a development dependency only: the installed client imports the committed,
generated files and never needs protoc).

The .proto files declare TensorFlow's and TF Serving's package and message names
(``tensorflow.TensorProto``, ``tensorflow.serving.PredictRequest``, ...) so that the wire format is
identical. In a process that also imports TensorFlow those names already exist in protobuf's default
descriptor pool, so protoc's output is post-processed to register the files in the client's private
pool (``detserve.client.protos._pool.POOL``) instead of ``descriptor_pool.Default()``. The files live
under the distinct path ``detserve/client/protos/`` so their file names never clash either.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PROTO_DIR = SRC / "detserve" / "client" / "protos"

DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = "_pool.POOL.AddSerializedFile("
POOL_IMPORT = "from detserve.client.protos import _pool\n"
MARKER = "# @@protoc_insertion_point(imports)\n"
# protoc stamps its own version and makes the module refuse any older protobuf runtime (7.35 for
# grpcio-tools 1.85). The code it emits only uses APIs that protobuf has had since 5.26, and a client
# library should not force the newest protobuf on an application, so the check is dropped;
# client/pyproject.toml states the supported range (tested: see docs/client.md).
VERSION_IMPORT = "from google.protobuf import runtime_version as _runtime_version\n"
VERSION_CHECK = re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n")
HEADER = (
    "# Post-processed by client/tools/regen_protos.py: registered in the client's private descriptor\n"
    "# pool (detserve.client.protos._pool.POOL), not protobuf's default pool, and without protoc's\n"
    "# runtime-version check. Do not edit.\n"
)


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def post_process(text: str, name: str) -> str:
    if text.count(DEFAULT_POOL) != 1 or MARKER not in text:
        raise SystemExit(f"{name}: protoc's output changed shape; update regen_protos.py")
    text = text.replace(DEFAULT_POOL, PRIVATE_POOL)
    text, n_checks = VERSION_CHECK.subn("", text)
    if n_checks != 1 or VERSION_IMPORT not in text:
        raise SystemExit(f"{name}: protoc's version check changed shape; update regen_protos.py")
    text = text.replace(VERSION_IMPORT, "")
    text = text.replace(MARKER, MARKER + POOL_IMPORT, 1)
    return HEADER + text


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into ``out_dir``; return {file name: post-processed text}."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    protos = [str(p.relative_to(SRC)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{SRC}", f"-I{include}", f"--python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    generated = {}
    for path in sorted((out_dir / "detserve" / "client" / "protos").glob("*_pb2.py")):
        generated[path.name] = post_process(path.read_text(), path.name)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
    committed = {p.name: p.read_text() for p in PROTO_DIR.glob("*_pb2.py")}
    if args.check:
        stale = sorted(set(generated) ^ set(committed)) + sorted(
            n for n in set(generated) & set(committed) if generated[n] != committed[n])
        for name in stale:
            diff = difflib.unified_diff(committed.get(name, "").splitlines(), generated.get(name, "").splitlines(),
                                        f"committed/{name}", f"generated/{name}", lineterm="", n=1)
            print("\n".join(list(diff)[:20]))
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run: python client/tools/regen_protos.py",
                  file=sys.stderr)
            return 1
        print(f"{len(generated)} generated files are current")
        return 0
    for name in set(committed) - set(generated):
        (PROTO_DIR / name).unlink()
    for name, text in generated.items():
        (PROTO_DIR / name).write_text(text)
    print(f"wrote {len(generated)} files to {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
