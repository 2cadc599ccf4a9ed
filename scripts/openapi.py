"""Generate the OpenAPI document from the handlers' routes and the core's pydantic models.

python scripts/openapi.py          # write docs/openapi.json
python scripts/openapi.py --check  # exit 1 if docs/openapi.json is out of date
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "layers" / "state_core"))
TARGET = ROOT / "docs" / "openapi.json"
FUNCTIONS = (
    "get_state",
    "put_state",
    "patch_state",
    "delete_state",
    "list_state",
    "batch_get_state",
    "transact_state",
    "schemas",
    "approvals",
)


def _router(function: str) -> Any:
    # Every function's module is app.py, so each is loaded under its own name.
    spec = importlib.util.spec_from_file_location(f"{function}_app", ROOT / "functions" / function / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.router


def document() -> dict[str, Any]:
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

    from state_core.api.edge import JSON_CONTENT_TYPE, MERGE_PATCH_CONTENT_TYPE, documenting
    from state_core.api.history import DEFAULT_PAGE, MAX_PAGE, MAX_REQUESTED_VERSION
    from state_core.api.listing import DEFAULT_LIST_PAGE, MAX_LIST_PAGE
    from state_core.api.models import BatchGetRequest, PutStateRequest
    from state_core.domain.keys import KEY_PATTERN

    app = APIGatewayHttpResolver(enable_validation=True)
    # The routes declare their responses only while documenting (edge.documented): not at run time.
    with documenting():
        for function in FUNCTIONS:
            app.include_router(_router(function))
    schema = json.loads(
        app.get_openapi_json_schema(
            title="State service",
            version="1.0.0",
            description="JSON state by key: versions, ETags, JSON Merge Patch, version history and TTLs.",
            security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            security=[{"bearer": []}],
        )
    )
    # Bodies are parsed by the core's strict JSON reader (not Powertools' body validation, which accepts
    # NaN and duplicate names), so their schemas are added here from the same models.
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["PutStateRequest"] = PutStateRequest.model_json_schema()
    components["BatchGetRequest"] = BatchGetRequest.model_json_schema()
    schema["paths"]["/state:batchGet"]["post"]["requestBody"] = {
        "required": True,
        "content": {JSON_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/BatchGetRequest"}}},
    }
    path = schema["paths"]["/state/{key}"]
    path["put"]["requestBody"] = {
        "required": True,
        "content": {JSON_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/PutStateRequest"}}},
    }
    any_json = {"description": "A JSON Merge Patch (RFC 7396): any JSON; null members remove."}
    path["patch"]["requestBody"] = {
        "required": True,
        "content": {MERGE_PATCH_CONTENT_TYPE: {"schema": any_json}, JSON_CONTENT_TYPE: {"schema": any_json}},
    }
    key_parameter = {
        "name": "key",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{KEY_PATTERN}$"},
    }
    for operation in path.values():
        operation["parameters"] = [key_parameter] + [
            p for p in operation.get("parameters", []) if p.get("name") != "key"
        ]
    path["get"]["parameters"].append(
        {
            "name": "consistent",
            "in": "query",
            "required": False,
            "description": "true: read DynamoDB with a strongly consistent read, bypassing the cache.",
            "schema": {"type": "boolean", "default": False},
        }
    )
    # A version of the key, and the history listing's page size and cursor.
    path["get"]["parameters"].append(
        {
            "name": "version",
            "in": "query",
            "required": False,
            "description": "Read this version (the current one from the state, older ones from the history).",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_REQUESTED_VERSION},
        }
    )
    history = schema["paths"]["/state/{key}/history"]["get"]
    history["parameters"] = [
        key_parameter,
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": (
                "The previous page's next_cursor (opaque, bound to the key); any other value is refused (400)."
            ),
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        },
    ]
    listing = schema["paths"]["/state"]["get"]
    listing["parameters"] = [
        {
            "name": "prefix",
            "in": "query",
            "required": False,
            "description": (
                "List the keys that start with this (empty or absent: every key, for a caller granted every key)."
                " A caller granted no key under it is refused (403)."
            ),
            "schema": {"type": "string", "pattern": f"^({KEY_PATTERN})?$"},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_PAGE, "default": DEFAULT_LIST_PAGE},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": (
                "The previous page's next_cursor (opaque, signed for the caller and the prefix); any other value,"
                " or one issued to another caller or for another prefix, is refused (400)."
            ),
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,400}$"},
        },
        {
            "name": "include",
            "in": "query",
            "required": False,
            "description": "value: list each key's value too (the page then stops early rather than exceed 2 MB).",
            "schema": {"type": "string", "enum": ["value"]},
        },
    ]
    _document_transactions(schema)
    _document_schemas(schema, key_parameter)
    _document_approvals(schema, key_parameter)
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            # Powertools gives every response a JSON body; 204 and 304 have none.
            for status in ("204", "304"):
                if status in responses:
                    responses[status].pop("content", None)
            # Powertools adds its own 422 to every route it would validate; these handlers do not use its
            # validation, so only the 422 an operation declares (a problem document) is real.
            if _VALIDATION_ERROR_REF in json.dumps(responses.get("422", {})):
                del responses["422"]
    _drop_unreferenced_schemas(schema)
    return schema


_VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"


def _document_transactions(schema: dict[str, Any]) -> None:
    from state_core.api.edge import JSON_CONTENT_TYPE
    from state_core.api.models import TransactRequest

    components = schema["components"]["schemas"]
    request = TransactRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(request.pop("$defs", {}))
    components["TransactRequest"] = request
    operation = schema["paths"]["/state:transact"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {JSON_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/TransactRequest"}}},
    }
    operation["parameters"] = [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": (
                "1-255 printable ASCII characters, unique per transaction: for 10 minutes a retry with the same"
                " key and body answers the first outcome (200 or 412) without applying again; another body is 422."
            ),
            "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
        }
    ]
    operation["responses"]["200"]["headers"] = {
        "Idempotent-Replayed": {
            "description": "true: the answer is the first outcome of an earlier request with this Idempotency-Key.",
            "schema": {"type": "string", "enum": ["true"]},
        }
    }


def _document_schemas(schema: dict[str, Any], key_parameter: dict[str, Any]) -> None:
    from state_core.api.edge import JSON_CONTENT_TYPE
    from state_core.domain.schemas import CHECK_ID, DEFAULT_CHECK_PAGE, MAX_CHECK_PAGE, MAX_PATTERNS, NAME_PATTERN

    name_parameter = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{NAME_PATTERN}$"},
    }
    named = schema["paths"]["/schemas/{name}"]
    for operation in named.values():
        operation["parameters"] = [name_parameter]
    named["put"]["parameters"].append(
        {
            "name": "mode",
            "in": "query",
            "required": False,
            "description": "forward: govern future writes only (recorded on the version as its mode).",
            "schema": {"type": "string", "enum": ["forward"]},
        }
    )
    named["put"]["requestBody"] = {
        "required": True,
        "content": {
            JSON_CONTENT_TYPE: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["schema", "patterns"],
                    "properties": {
                        "schema": {"description": "A JSON Schema (draft 2020-12), at most 64 KB as canonical JSON."},
                        "patterns": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_PATTERNS,
                            "uniqueItems": True,
                            "description": "Exact keys, or key prefixes followed by *; no key may match two schemas.",
                            "items": {"type": "string"},
                        },
                    },
                }
            }
        },
    }
    named["get"]["parameters"].append(
        {
            "name": "version",
            "in": "query",
            "required": False,
            "description": "Read this version (default: the current one).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        }
    )
    schema["paths"]["/schemas/{name}/checks/{check_id}"]["get"]["parameters"] = [
        name_parameter,
        {
            "name": "check_id",
            "in": "path",
            "required": True,
            "description": "The check's id, from the Location of the 202 that started it.",
            "schema": {"type": "string", "pattern": f"^{CHECK_ID.pattern.removesuffix(chr(92) + 'Z')}$"},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CHECK_PAGE, "default": DEFAULT_CHECK_PAGE},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "The previous page's next_cursor (the last offending key it listed).",
            "schema": key_parameter["schema"],
        },
    ]


def _document_approvals(schema: dict[str, Any], key_parameter: dict[str, Any]) -> None:
    from state_core.api.edge import JSON_CONTENT_TYPE
    from state_core.domain.approvals import DEFAULT_PAGE_SIZE, MAX_COMMENT_CHARACTERS, MAX_PAGE_SIZE, PROPOSAL_ID

    id_pattern = f"^{PROPOSAL_ID.pattern.removesuffix(chr(92) + 'Z')}$"
    id_parameter = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "The proposal's id, from the Location of the 202 that made it.",
        "schema": {"type": "string", "pattern": id_pattern},
    }
    listing = schema["paths"]["/state/{key}/proposals"]["get"]
    listing["parameters"] = [
        key_parameter,
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "The previous page's next_cursor; anything else is refused (400).",
            "schema": {"type": "string", "pattern": id_pattern},
        },
    ]
    decision_body = {
        "required": False,
        "content": {
            JSON_CONTENT_TYPE: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"comment": {"type": "string", "maxLength": MAX_COMMENT_CHARACTERS}},
                }
            }
        },
    }
    for path, operations in schema["paths"].items():
        if path.startswith("/state/{key}/proposals/"):
            for method, operation in operations.items():
                operation["parameters"] = [key_parameter, id_parameter]
                if method == "post":
                    operation["requestBody"] = decision_body


def _drop_unreferenced_schemas(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    while True:
        text = json.dumps(schema)
        unused = [name for name in components if f'"#/components/schemas/{name}"' not in text]
        if not unused:
            return
        for name in unused:
            del components[name]


def main() -> int:
    text = json.dumps(document(), indent=2, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run make openapi", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
