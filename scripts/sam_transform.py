"""Print template.yaml as CloudFormation receives it after the SAM transform (JSON on stdout).

Runs with the SAM CLI's interpreter, which has the translator and the SAM YAML loader:

    .venv-tools/bin/python scripts/sam_transform.py [template.yaml] ['{"Parameter": "value"}']

Nothing is packaged or uploaded: local code paths stand in as S3 URIs, and no managed policy is looked
up (the tests use it to see which roles and policies SAM itself would add).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def transform(path: Path, parameters: dict[str, str]) -> dict[str, Any]:
    from samcli.yamlhelper import yaml_parse
    from samtranslator.translator.transform import transform as sam_transform

    template = yaml_parse(path.read_text(encoding="utf-8"))
    for resource in (template.get("Resources") or {}).values():
        properties = resource.get("Properties") or {}
        for name in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(name), str):
                properties[name] = "s3://packaged/" + properties[name].strip("/")
    result: dict[str, Any] = sam_transform(template, parameters, _NoManagedPolicies())
    return result


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else ROOT / "template.yaml"
    parameters = json.loads(argv[1]) if len(argv) > 1 else {}
    # The translator asks for a region for its pseudo parameters; nothing calls AWS.
    if not os.environ.get("AWS_DEFAULT_REGION"):
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    json.dump(transform(path, parameters), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
