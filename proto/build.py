"""Regenerate the protobuf and gRPC modules from edgebind.proto.

Run ``python -m proto.build`` after editing the .proto and commit the result;
``tests/test_proto.py`` rebuilds into a temporary directory and fails when the
committed modules have drifted.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = "edgebind.proto"
GENERATED = ("edgebind_pb2.py", "edgebind_pb2.pyi", "edgebind_pb2_grpc.py")

# Compiling `proto/edgebind.proto` from the repository root (rather than from
# inside proto/) makes protoc name the module `proto.edgebind_pb2`: the message
# classes then carry the right `__module__` (so they pickle), and the gRPC
# module already imports its messages package-relatively, as checked below.
_GRPC_IMPORT = "from proto import edgebind_pb2 as proto_dot_edgebind__pb2\n"


def build(out_dir: Path | str = PROTO_DIR) -> list[Path]:
    """Compile edgebind.proto into ``out_dir`` and return the files written.

    Uses grpc_tools' bundled protoc and its own include path for the
    well-known types, so the output depends only on the installed
    grpcio-tools version.
    """
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR.parent}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"{PROTO_DIR.name}/{PROTO_FILE}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_DIR / PROTO_FILE} (see stderr)")
        written = []
        for name in GENERATED:
            src = Path(tmp) / PROTO_DIR.name / name
            if name.endswith("_grpc.py") and _GRPC_IMPORT not in src.read_text():
                raise RuntimeError(f"{name}: expected the line {_GRPC_IMPORT.strip()!r}")
            dst = out_dir / name
            shutil.copyfile(src, dst)
            written.append(dst)
    return written


def main() -> None:
    for path in build():
        print(path)


if __name__ == "__main__":
    main()
