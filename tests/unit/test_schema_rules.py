"""Value schema rules without I/O: patterns, overlaps, pointers, the 422's shape, and the write functions'
cold import staying free of the validator."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from state_core.domain.errors import BadRequest
from state_core.domain.schemas import (
    SchemaVersion,
    SchemaViolation,
    Violation,
    overlapping,
    patterns_overlap,
    validate_name,
    validate_patterns,
)
from state_core.service.schemas import violations_of

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def version(patterns: tuple[str, ...], document: str = "{}", name: str = "s") -> SchemaVersion:
    return SchemaVersion(name, 1, document, patterns, "2026-12-02T00:00:00.000Z", "alice")


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("user:*", "user:bob", True),
        ("user:*", "us*", True),
        ("user:a*", "user:b*", False),
        ("user:bob", "user:bob", True),
        ("user:bob", "user:bobby", False),
        ("user:bob*", "user:bob", True),
        ("team:*", "tea", False),
    ],
)
def test_two_patterns_overlap_exactly_when_some_key_matches_both(a, b, overlap):
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def test_overlaps_with_the_schemas_own_earlier_version_do_not_count():
    current = [version(("user:*",), name="prefs"), version(("team:*",), name="teams")]

    assert overlapping(("user:*",), current, "prefs") == []
    assert overlapping(("team:a*",), current, "prefs") == ["team:a* overlaps teams's team:*"]


@pytest.mark.parametrize("pattern", ["*", "", "a*b", "a**", "a b*", ":a*", "a" * 257, "ä*"])
def test_a_pattern_is_a_key_or_a_key_prefix_followed_by_a_star(pattern):
    with pytest.raises(BadRequest):
        validate_patterns([pattern])


@pytest.mark.parametrize("name", ["", "A", "-a", "a b", "a/b", "a" * 65, "ü"])
def test_a_name_is_short_lowercase_and_url_safe(name):
    with pytest.raises(BadRequest):
        validate_name(name)


def test_pointers_escape_tilde_and_slash_as_rfc_6901_says():
    schema = version(("k",), '{"properties":{"a/b":{"properties":{"c~d":{"type":"string"}}}}}')

    violations, total = violations_of(schema, {"a/b": {"c~d": 1}})

    assert (total, [v.pointer for v in violations]) == (1, ["/a~1b/c~0d"])


def test_the_problem_lists_twenty_violations_and_counts_all():
    violations = [Violation(f"/{n}", "wrong") for n in range(25)]
    error = SchemaViolation("k", version(("k",)), violations, 25)

    body = error.extensions()

    assert (error.status, len(body["violations"]), body["violation_count"]) == (422, 20, 25)
    assert "index" not in body


def test_a_write_functions_cold_import_does_not_load_the_validator():
    functions = ("put_state", "patch_state", "transact_state", "schemas")
    script = "; ".join(
        [
            "import importlib.util, sys",
            *(
                f"s = importlib.util.spec_from_file_location('{f}', 'functions/{f}/app.py'); "
                "s.loader.exec_module(importlib.util.module_from_spec(s))"
                for f in functions
            ),
            "print('jsonschema_rs' in sys.modules, 'state_core.service.schemas' in sys.modules)",
        ]
    )
    env = {"PYTHONPATH": str(REPO_ROOT / "layers" / "state_core"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )

    assert out.stdout.split() == ["False", "False"]
    assert importlib.util.find_spec("jsonschema_rs") is not None
