"""Schemathesis hooks for tests/e2e/test_api_contract.py (loaded by the fuzzer, not by pytest).

A history cursor is opaque: the document can give its alphabet and length, not which strings the service
issued, so a schema-valid cursor the service never issued is rightly refused (400). In cases meant to be
valid, a generated cursor is therefore replaced by a cursor the service issues for the case's key, at a
version derived from the generated text; negative cases keep theirs, and must be refused. A listing
cursor is signed for the caller (the fuzzer's token, subject `fuzz`) and the prefix: valid cases get one
signed with the stack's key (STATE_FUZZ_LIST_CURSOR_KEY), continuing after the prefix itself.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import unquote

import schemathesis
from schemathesis.core.parameters import ParameterLocation

from state_core.security.list_cursor import ListCursors
from state_core.service.history import encode_cursor

HISTORY_PATH = "/state/{key}/history"
LIST_PATH = "/state"
FUZZ_SUBJECT = "fuzz"


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    if case.operation.path == LIST_PATH:
        return _list_case(case)
    if case.operation.path != HISTORY_PATH or not case.query or "cursor" not in case.query:
        return case
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.QUERY):
        return case
    generated = str(case.query["cursor"])
    # Versions 1..12 cover the first page, a continuation, and the empty page after version 1.
    version = 1 + hashlib.sha256(generated.encode("utf-8", "surrogatepass")).digest()[0] % 12
    # The path parameter may already be percent-encoded for the URL; the service sees it decoded.
    key = unquote(str((case.path_parameters or {}).get("key", "")))
    case.query["cursor"] = encode_cursor(key, version)
    return case


def _list_case(case: schemathesis.Case) -> schemathesis.Case:
    if not case.query or "cursor" not in case.query:
        return case
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.QUERY):
        return case
    prefix = str(case.query.get("prefix") or "")
    cursors = ListCursors(os.environ["STATE_FUZZ_LIST_CURSOR_KEY"].encode("utf-8"))
    case.query["cursor"] = cursors.issue(FUZZ_SUBJECT, prefix, prefix or "0")
    return case
