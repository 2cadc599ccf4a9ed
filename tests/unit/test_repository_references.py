"""Every reference in the repository can be followed by a reader of the repository alone.

A tracked file must not point outside it (a sibling `shared` folder, a design document that is not
shipped, an issue tracker's numbers): the reason a rule exists is written where the rule is. And a
docstring or comment that names a module of the core (`state_core.<module>`, or a file under
`state_core/`) must name one that exists, so a module moved or renamed leaves no stale pointer behind.
No exceptions list: a hit is fixed where it is.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER = "layers/state_core"
CORE = f"{LAYER}/state_core"

# Written so that this file does not match itself.
OUTSIDE_REFERENCES = re.compile(
    # The outside contract was named in capitals; docs/design.md, in lower case, is the project's own page.
    r"\.\./shared|(?-i:\bDESIGN\.md)|\bDESIGN\s*\u00a7|\bissues?\s+#?\d",
    re.IGNORECASE,
)
DOTTED_CORE_NAME = re.compile(r"(?<![\w.])state_core(?:\.\w+)+")
# A file of the layer: `state_core/<path>` (in the package, wherever it is installed) or
# `layers/state_core/<path>` (in the repository).
CORE_FILE_PATH = re.compile(r"(?<![\w.-])(layers/)?state_core/((?:[\w.-]+/)*[\w-]+\.\w+)")


@cache
def tracked_files() -> tuple[str, ...]:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout
    return tuple(name for name in listing.split("\0") if name)


@cache
def text_of(name: str) -> str | None:
    """The file's text, or None for a binary (or vanished) file."""
    try:
        data = (REPO_ROOT / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_files() -> Iterator[tuple[str, str]]:
    for name in tracked_files():
        text = text_of(name)
        if text is not None:
            yield name, text


@cache
def core_modules() -> dict[str, str]:
    """Dotted module name -> its file, for every module and package of the core."""
    modules = {}
    for name in tracked_files():
        if name.startswith(f"{CORE}/") and name.endswith(".py"):
            dotted = name.removeprefix(f"{LAYER}/").removesuffix(".py").replace("/", ".")
            modules[dotted.removesuffix(".__init__")] = name
    return modules


@cache
def top_level_names(module_file: str) -> frozenset[str]:
    tree = ast.parse((REPO_ROOT / module_file).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return frozenset(names)


def dotted_name_exists(dotted: str) -> bool:
    """The longest prefix of the dotted name that is a module exists, and the next part, if any, is defined
    at that module's top level (so a class named through the package it no longer lives in is stale)."""
    modules = core_modules()
    parts = dotted.split(".")
    for length in range(len(parts), 1, -1):
        module = ".".join(parts[:length])
        if module in modules:
            return length == len(parts) or parts[length] in top_level_names(modules[module])
    return False


def file_path_exists(match: re.Match[str]) -> bool:
    under_layers, rest = match.groups()
    path = f"{LAYER}/{rest}" if under_layers else f"{CORE}/{rest}"
    return (REPO_ROOT / path).is_file()


def prose_of_python(text: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python source."""
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                yield node.body[0].lineno, docstring


def prose_of(name: str, text: str) -> Iterator[tuple[int, str]]:
    """The parts of a file that are prose: comments and docstrings of Python, every line of anything else."""
    if name.endswith(".py"):
        yield from prose_of_python(text)
    else:
        yield from enumerate(text.splitlines(), start=1)


def test_no_file_points_outside_the_repository():
    offences = [
        f"{name}:{number}: {line.strip()}"
        for name, text in text_files()
        for number, line in enumerate(text.splitlines(), start=1)
        if OUTSIDE_REFERENCES.search(line)
    ]
    assert not offences, "write the reason in place of the reference:\n" + "\n".join(offences)


def test_every_core_module_named_in_prose_exists():
    offences = []
    for name, text in text_files():
        for line, prose in prose_of(name, text):
            stale = [m.group(0) for m in DOTTED_CORE_NAME.finditer(prose) if not dotted_name_exists(m.group(0))]
            stale += [m.group(0) for m in CORE_FILE_PATH.finditer(prose) if not file_path_exists(m)]
            offences += [f"{name}:{line}: {reference}" for reference in stale]
    assert not offences, "names of core modules or files that do not exist:\n" + "\n".join(offences)


def test_the_checks_see_what_they_look_for():
    """The patterns catch each form they are meant to, so an empty result means a clean tree."""
    # Put together here, or this file would hold what it forbids.
    for parts in (
        ("see ..", "/shared/x"),
        ("DESIGN", ".md"),
        ("design ", "\u00a73"),
        ("Issue", " 9"),
        ("issues", " 4 and 9"),
        ("issue", " #7"),
    ):
        assert OUTSIDE_REFERENCES.search("".join(parts)), parts
    for fine in ("tissue 5", "by design, for the slow modes", "RFC 9110 \u00a713.1.2", "issued 3 tokens"):
        assert not OUTSIDE_REFERENCES.search(fine), fine
    assert dotted_name_exists("state_core.stream.repair")
    assert dotted_name_exists("state_core.storage.state.StateStore")
    assert not dotted_name_exists("state_core.repair")
    assert not dotted_name_exists("state_core.cache.RedisStateCache")
    assert [m.group(0) for m in CORE_FILE_PATH.finditer("(state_core/security/policy.json)")] == [
        "state_core/security/policy.json"
    ]
    assert all(file_path_exists(m) for m in CORE_FILE_PATH.finditer("layers/state_core/requirements.txt"))
    assert not any(file_path_exists(m) for m in CORE_FILE_PATH.finditer("/opt/python/state_core/policy.json"))
    docstring_and_comment = '"""Uses state_core.nowhere."""\nx = "state_core.code"  # state_core.gone\n'
    assert [prose for _, prose in prose_of("m.py", docstring_and_comment)] == [
        "# state_core.gone",
        "Uses state_core.nowhere.",
    ]
