"""Write layers/state_core/requirements.txt from pyproject.toml's runtime pins, so the Lambda layer and
the local venv run the same versions. boto3 is left out: the Lambda runtime provides it. Pins that would pull
botocore in (the X-Ray SDK) go to requirements-no-deps.txt, installed without their dependencies: a layer's
botocore would shadow the runtime's, under the runtime's boto3. Their other dependencies are pinned in
pyproject.toml themselves.

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
NO_DEPS_TARGET = ROOT / "layers" / "state_core" / "requirements-no-deps.txt"
PROVIDED_BY_RUNTIME = {"boto3", "botocore"}
# Installed without their dependencies: they require botocore.
WITHOUT_DEPENDENCIES = {"aws-xray-sdk"}
HEADER = "# Generated from pyproject.toml by scripts/layer_requirements.py; do not edit.\n"


def _name(pin: str) -> str:
    return re.split(r"[\[=<>!~ ]", pin, maxsplit=1)[0].lower()


def expected() -> dict[Path, str]:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = [pin for pin in pins if _name(pin) not in PROVIDED_BY_RUNTIME | WITHOUT_DEPENDENCIES]
    alone = [pin for pin in pins if _name(pin) in WITHOUT_DEPENDENCIES]
    return {
        TARGET: HEADER + "".join(f"{pin}\n" for pin in kept),
        NO_DEPS_TARGET: HEADER + "".join(f"{pin}\n" for pin in alone),
    }


def main() -> int:
    if "--check" in sys.argv:
        stale = [path for path, text in expected().items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run make layer-requirements", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
