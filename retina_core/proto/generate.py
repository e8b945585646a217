"""Compile the project's ``.proto`` files into Python modules.

``python -m retina_core.proto.generate`` runs ``grpc_tools.protoc`` on every ``.proto`` under ``proto/``
(``-I proto`` plus grpc_tools' bundled include directory for the well-known types) and writes
``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` into this package (gitignored): ``proto/flow/flow.proto``
becomes ``retina_core/proto/flow/flow_pb2.py``. protoc writes imports by proto path (``from flow import
flow_pb2``), which only resolve with the output directory on ``sys.path``; :func:`_rewrite_imports` turns them into
``from retina_core.proto.flow import flow_pb2`` so the code is an ordinary sub-package (see :mod:`retina_core.proto`).
The descriptors keep their proto file names (``flow/flow.proto``), as Hubble's own do.

It is idempotent and quick when nothing changed: generation is skipped when every expected output exists and
is newer than every ``.proto`` file and than this module (one ``stat`` per file, no protoc run).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
PROTO_DIR = REPO_ROOT / "proto"
OUT_DIR = PACKAGE_DIR
PACKAGE = "retina_core.proto"

_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class ProtoGenError(RuntimeError):
    """protoc failed or grpc_tools is missing."""


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Every ``.proto`` under ``proto_dir``, sorted, as absolute paths."""
    return sorted(p for p in proto_dir.rglob("*.proto") if p.is_file())


def _outputs_for(proto: Path, proto_dir: Path, out_dir: Path) -> list[Path]:
    rel = proto.relative_to(proto_dir).with_suffix("")
    return [out_dir / rel.parent / (rel.name + suffix) for suffix in _SUFFIXES]


def is_up_to_date(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> bool:
    """True when every generated file exists and is newer than every input (compared by mtime)."""
    protos = proto_files(proto_dir)
    if not protos:
        return True
    try:
        newest_input = max(os.stat(p).st_mtime_ns for p in [*protos, Path(__file__)])
        for proto in protos:
            for out in _outputs_for(proto, proto_dir, out_dir):
                if os.stat(out).st_mtime_ns < newest_input:
                    return False
    except FileNotFoundError:
        return False
    return True


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR, force: bool = False) -> bool:
    """Generate Python code for every ``.proto`` under ``proto_dir`` into ``out_dir``.

    Returns True if protoc ran, False if the output was already up to date. Raises :class:`ProtoGenError` on
    failure.
    """
    if not force and is_up_to_date(proto_dir, out_dir):
        return False
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ProtoGenError("grpcio-tools is not installed; run `make setup`") from exc

    protos = proto_files(proto_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wkt_include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{wkt_include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(proto_dir)) for p in protos),
    ]
    # protoc resolves the relative file names against -I, not the working directory; run from proto_dir anyway
    # so that error messages show short paths.
    cwd = os.getcwd()
    try:
        os.chdir(proto_dir)
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise ProtoGenError(f"protoc failed with exit code {rc} (args: {' '.join(args[1:])})")
    # Make the generated sub-directories importable as (namespace-free) packages and touch every output so the
    # mtime check holds even when protoc left an unchanged file untouched.
    for proto in protos:
        for out in _outputs_for(proto, proto_dir, out_dir):
            init = out.parent / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated protobuf code (python -m retina_core.proto.generate); not committed."""\n')
            if out.exists():
                _rewrite_imports(out, {p.relative_to(proto_dir).parts[0] for p in protos if p.parent != proto_dir})
                out.touch()
    return True


def _rewrite_imports(path: Path, proto_packages: set[str]) -> None:
    """Rewrite protoc's path-based imports of our own generated modules into package imports (idempotent)."""
    text = path.read_text()
    new = re.sub(r"^from (%s)((?:\.\w+)*) import " % "|".join(map(re.escape, sorted(proto_packages))),
                 lambda m: f"from {PACKAGE}.{m.group(1)}{m.group(2)} import ", text, flags=re.M)
    if new != text:
        path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m retina_core.proto.generate [--force]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="regenerate even if the output looks up to date")
    args = parser.parse_args(argv)
    try:
        ran = generate(force=args.force)
    except ProtoGenError as exc:
        print(f"proto generate: {exc}", file=sys.stderr)
        return 1
    if ran:
        print(f"proto generate: generated {len(proto_files())} proto file(s) into {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
