"""The documentation is self-contained and its links hold.

Every relative link in README.md, docs/*.md and the recorded results must reach a file of this repository,
and a `#anchor` must name a heading of its target as GitHub slugs it. Links leave the repository only for
the local stack's loopback addresses: the docs must read whole from a checkout. Module paths named in
inline code must exist, so a move that forgets the docs fails here. The README stays a front door.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
README_MAX_BYTES = 10_500
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md")), *sorted((REPO_ROOT / "benchmarks/results").glob("*.md"))]

# The only absolute URLs a page may link to: the local stack, in examples.
LOOPBACK_URL = re.compile(r"^https?://127\.0\.0\.1(:\d+)?(/|$)")
BARE_URL = re.compile(r"https?://[^\s)>\]]+")
# Inline code naming a file or folder of the repository; `state_core/...` is short for the core's package.
REPO_PATH = re.compile(
    r"^(?:layers|functions|devstack|tests|benchmarks|scripts|docs|events|make|ops|state_core)/[\w./-]*$"
)

# Files the docs name that a command writes and git ignores.
GENERATED = {"benchmarks/results/latest.json"}

_PARSER = MarkdownIt("commonmark").enable("table")


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}: {self.target}"


def _tokens(page: Path) -> list[Token]:
    return _PARSER.parse(page.read_text(encoding="utf-8"))


def _inline(tokens: list[Token]) -> Iterator[tuple[int, Token]]:
    """(line, child) for every child of every inline token: prose, headings and table cells, not code blocks."""
    for token in tokens:
        if token.type == "inline" and token.children:
            line = token.map[0] + 1 if token.map else 0
            for child in token.children:
                yield line, child


def links(page: Path) -> list[Link]:
    found = []
    for line, child in _inline(_tokens(page)):
        if child.type == "link_open":
            found.append(Link(page, line, str(child.attrs["href"])))
        elif child.type == "image":
            found.append(Link(page, line, str(child.attrs["src"])))
        elif child.type == "text":
            # GitHub turns a bare URL in prose into a link, so it counts as one.
            found.extend(Link(page, line, url) for url in BARE_URL.findall(child.content))
    return found


def github_slug(text: str) -> str:
    """GitHub's heading anchors: lowercase, drop punctuation but hyphens and underscores, spaces to hyphens."""
    kept = "".join(char for char in text.lower() if char.isalnum() or char in " -_")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    tokens = _tokens(page)
    seen: dict[str, int] = {}
    found = set()
    for index, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        children = tokens[index + 1].children or []
        text = "".join(child.content for child in children if child.type in ("text", "code_inline"))
        slug = github_slug(text.strip())
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken(link: Link) -> str | None:
    """Why the link does not resolve, or None when it does."""
    parts = urlsplit(link.target)
    if parts.scheme or parts.netloc:
        if LOOPBACK_URL.match(link.target):
            return None
        return "links leave the repository only for the local stack's http://127.0.0.1 addresses"
    target = link.page if not parts.path else (link.page.parent / unquote(parts.path)).resolve()
    if not target.is_relative_to(REPO_ROOT):
        return "points outside the repository"
    if not target.exists():
        return "no such file"
    if parts.fragment:
        if target.suffix != ".md":
            return "an anchor into a file that is not markdown"
        if unquote(parts.fragment) not in anchors(target):
            return f"no heading of {target.relative_to(REPO_ROOT)} has the anchor #{parts.fragment}"
    return None


def code_paths(page: Path) -> list[Link]:
    found = []
    for line, child in _inline(_tokens(page)):
        if child.type == "code_inline" and REPO_PATH.match(child.content):
            found.append(Link(page, line, child.content))
    return found


def test_the_pages_are_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "design.md", "api.md", "security.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_every_link_resolves(page: Path) -> None:
    failures = [f"{link} ({reason})" for link in links(page) if (reason := broken(link))]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_every_path_named_in_inline_code_exists(page: Path) -> None:
    missing = []
    for link in code_paths(page):
        relative = link.target.rstrip("/")
        if relative.startswith("state_core/"):
            relative = "layers/state_core/" + relative
        if relative not in GENERATED and not (REPO_ROOT / relative).exists():
            missing.append(str(link))
    assert not missing, "paths the docs name that do not exist:\n" + "\n".join(missing)


def test_the_readme_stays_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (at most {README_MAX_BYTES})"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Map of the code", "map-of-the-code"),
        ("make verify, 2026-12-01", "make-verify-2026-12-01"),
        ("Redis's credentials and `signed` entries", "rediss-credentials-and-signed-entries"),
        ("What is checked where?", "what-is-checked-where"),
        ("snake_case and -dash-", "snake_case-and--dash-"),
    ],
)
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    page = REPO_ROOT / "docs" / "design.md"
    assert broken(Link(page, 1, "api.md#no-such-heading"))
    assert broken(Link(page, 1, "no-such-page.md"))
    assert broken(Link(page, 1, "../../outside.md"))
    assert broken(Link(page, 1, "https://example.com/"))
    assert broken(Link(page, 1, "openapi.json#paths"))
    assert broken(Link(page, 1, "api.md#change-events")) is None
    assert broken(Link(page, 1, "#map-of-the-code")) is None
    assert broken(Link(page, 1, "http://127.0.0.1:3000/state/x")) is None


@pytest.mark.parametrize("route", ["/state:batchGet", "/state:transact"])
def test_the_multi_key_routes_are_shown_with_curl_in_the_api_page_and_the_openapi_document(route: str) -> None:
    import json

    document = json.loads((REPO_ROOT / "docs/openapi.json").read_text())
    call = f'curl -s{"i" if route.endswith("transact") else ""} -X POST "$API{route}"'
    assert call in document["paths"][route]["post"]["description"]
    assert call in (REPO_ROOT / "docs/api.md").read_text()
