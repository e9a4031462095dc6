"""The /v1/rank parser and the request schema in /openapi.json are one contract: every body in a
list of edge cases is accepted by the parser exactly when the schema says it is valid. (schemathesis
fuzzes a live scorer from the document: tests/test_api.py::test_schemathesis_finds_no_failure.)"""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from api.schemas import MAX_ID_LENGTH, MAX_LIMIT, MAX_QUERY_LENGTH, ApiError, parse_rank_request, rank_request_schema

SURFACES = ("search", "recs")
MAX_CANDIDATES = 5
BASE = {"surface": "search", "user_id": "u1", "items": ["a", "b"]}


def _with(**fields):
    body = dict(BASE)
    for key, value in fields.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


_DROP = object()
CASES = [
    BASE,
    _with(surface="recs"),
    _with(surface="shop"),
    _with(surface=None),
    _with(surface=_DROP),
    _with(surface=1),
    _with(user_id=""),
    _with(user_id="   "),
    _with(user_id=" u "),
    _with(user_id=None),
    _with(user_id=_DROP),
    _with(user_id="u" * MAX_ID_LENGTH),
    _with(user_id="u" * (MAX_ID_LENGTH + 1)),
    _with(user_id=7),
    _with(items=[]),
    _with(items=["a"] * MAX_CANDIDATES),
    _with(items=["a"] * (MAX_CANDIDATES + 1)),
    _with(items=[""]),
    _with(items=[" "]),
    _with(items=[1]),
    _with(items=None),
    _with(items="a"),
    _with(items=_DROP),
    _with(items=["i" * MAX_ID_LENGTH]),
    _with(items=["i" * (MAX_ID_LENGTH + 1)]),
    _with(items=["a", None]),
    _with(query=None),
    _with(query=""),
    _with(query="  "),
    _with(query="black dress"),
    _with(query=3),
    _with(query="q" * MAX_QUERY_LENGTH),
    _with(query="q" * (MAX_QUERY_LENGTH + 1)),
    _with(context=None),
    _with(context={}),
    _with(context=[]),
    _with(context="now"),
    _with(context={"timestamp": None}),
    _with(context={"timestamp": 1.7e9}),
    _with(context={"timestamp": 1}),
    _with(context={"timestamp": 0}),
    _with(context={"timestamp": -5}),
    _with(context={"timestamp": "2026"}),
    _with(context={"timestamp": True}),
    _with(context={"device": "ios"}),
    _with(limit=None),
    _with(limit=1),
    _with(limit=0),
    _with(limit=-1),
    _with(limit=2.0),
    _with(limit=True),
    _with(limit="3"),
    _with(limit=MAX_LIMIT),
    _with(limit=MAX_LIMIT + 1),
    _with(explain=None),
    _with(explain=True),
    _with(explain=False),
    _with(explain=1),
    _with(explain="yes"),
    _with(querry="typo", extra={"nested": [1]}),
    [],
    "body",
    None,
    3,
]


@pytest.mark.parametrize("body", CASES, ids=[repr(c)[:60] for c in CASES])
def test_the_parser_accepts_exactly_what_the_schema_allows(body):
    schema = rank_request_schema(surfaces=SURFACES, max_candidates=MAX_CANDIDATES)
    valid = Draft202012Validator(schema).is_valid(body)
    try:
        parse_rank_request(body, surfaces=SURFACES, max_candidates=MAX_CANDIDATES, now=1.7e9)
        accepted = True
    except ApiError as exc:
        accepted = False
        assert exc.status in (400, 413, 422), exc.status
    verdict = "valid" if valid else "invalid"
    assert accepted == valid, f"parser {'accepts' if accepted else 'refuses'} but the schema says {verdict}"


def test_the_served_document_carries_the_apps_limits():
    from api.openapi import build_spec

    default = build_spec()["components"]["schemas"]["RankRequest"]
    assert default["properties"]["items"]["maxItems"] == 1000
    assert default["properties"]["surface"]["enum"] == ["search", "recs"]
