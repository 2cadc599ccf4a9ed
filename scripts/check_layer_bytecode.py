"""Fail unless every module in a built layer has its CPython 3.13 bytecode beside it (`make sam-build`).

Lambda mounts layers read-only, so a module without a .pyc is compiled again on every cold start: the
layer's Makefile compiles them, and this keeps a change of build method from silently dropping them."""

from __future__ import annotations

import sys
from pathlib import Path


def missing_bytecode(layer: Path, tag: str = "cpython-313") -> list[Path]:
    return [
        source
        for source in sorted(layer.rglob("*.py"))
        if not (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").is_file()
    ]


def main(argv: list[str]) -> int:
    layer = Path(argv[1]) if len(argv) > 1 else Path(".aws-sam/build/StateCoreLayer/python")
    if not (layer / "state_core").is_dir():
        print(f"{layer} is not a built state_core layer", file=sys.stderr)
        return 2
    missing = missing_bytecode(layer)
    for source in missing[:20]:
        print(f"no bytecode: {source}", file=sys.stderr)
    if missing:
        print(f"{len(missing)} modules in {layer} have no .pyc: every cold start would compile them", file=sys.stderr)
        return 1
    print(f"{layer}: every module has its bytecode")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
