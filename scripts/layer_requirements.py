"""Write layers/state_core/requirements.txt from pyproject.toml's runtime pins, so the Lambda layer and
the local venv run the same versions. boto3 is left out: the Lambda runtime provides it.

    python scripts/layer_requirements.py          # write the file
    python scripts/layer_requirements.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "layers" / "state_core" / "requirements.txt"
PROVIDED_BY_RUNTIME = {"boto3", "botocore"}


def expected() -> str:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = [pin for pin in pins if re.split(r"[\[=<>!~ ]", pin, maxsplit=1)[0].lower() not in PROVIDED_BY_RUNTIME]
    header = "# Generated from pyproject.toml by scripts/layer_requirements.py; do not edit.\n"
    return header + "".join(f"{pin}\n" for pin in kept)


def main() -> int:
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != expected():
            print(f"{TARGET.relative_to(ROOT)} is out of date: run make layer-requirements", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(expected())
    return 0


if __name__ == "__main__":
    sys.exit(main())
