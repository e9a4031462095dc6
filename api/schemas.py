"""Request validation and response shapes of the scorer, hand-written (no extra dependency) so every
rejection carries a precise status, code and message.

Status classes: 400 the body is not a JSON object, 413 too many candidates, 422 a field has the
wrong type or value (unknown surface, empty items, limit < 1...). Unknown top-level fields are
ignored so clients can send fields a later version understands; the response names them
(``ignored_fields``) so a misspelt optional field (``querry``) does not go unnoticed.

The request's JSON Schema (:func:`rank_request_schema`, served in ``/openapi.json``) is written
here, beside the parser, and the two are held to each other: ``tests/test_request_schema.py`` feeds
both the same edge cases (a body the parser accepts is valid under the schema and the reverse), and
schemathesis fuzzes a live scorer from the document in ``make test``. ``null`` means "not given" for
every optional field, in both.

Duplicated item ids are de-duplicated (the first occurrence keeps its place): candidate generators
that merge several sources produce duplicates routinely, and failing the whole ranking for it would
hurt the user more than the client bug. The response lists every item once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_ID_LENGTH = 256
MAX_QUERY_LENGTH = 512
MAX_LIMIT = (1 << 63) - 1  # JSON integers beyond 64 bits arrive as floats: the schema bounds limit
REQUEST_FIELDS = frozenset({"surface", "user_id", "items", "query", "context", "limit", "explain"})


def rank_request_schema(*, surfaces: tuple[str, ...], max_candidates: int) -> dict[str, Any]:
    """The JSON Schema of a ``/v1/rank`` body that :func:`parse_rank_request` accepts with these
    settings (a body it refuses with 400/413/422 is invalid here, except a body that is not valid
    JSON or UTF-8, which no schema describes)."""
    id_string = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    return {
        "type": "object",
        "required": ["surface", "user_id", "items"],
        "properties": {
            "surface": {"type": "string", "enum": list(surfaces), "description": "the surface to rank for"},
            "user_id": {**id_string, "pattern": r"\S", "description": "unknown users rank with defaults"},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": int(max_candidates),
                "description": f"candidate listing ids (at most RANKER_MAX_CANDIDATES, here {max_candidates}; more is "
                "413); duplicates are dropped keeping the first occurrence",
                "items": id_string,
            },
            "query": {
                "type": ["string", "null"],
                "maxLength": MAX_QUERY_LENGTH,
                "description": "search text (search surface); blank or null: no query",
            },
            "context": {
                "type": ["object", "null"],
                "properties": {
                    "timestamp": {
                        "type": ["number", "null"],
                        "exclusiveMinimum": 0,
                        "description": "request time in unix seconds (replay); null or absent: now",
                    }
                },
                "additionalProperties": True,
            },
            "limit": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "description": "return only the top `limit` items; null: all",
            },
            "explain": {
                "type": ["boolean", "null"],
                "default": False,
                "description": "add feature values and contributions",
            },
        },
        "additionalProperties": True,
        "description": "top-level fields not listed are ignored and named in the answer's ignored_fields",
    }


class ApiError(Exception):
    """A request the API refuses; becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error document every failure uses."""
    return {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class RankRequest:
    """A validated ``POST /v1/rank`` body."""

    surface: str
    user_id: str
    items: tuple[str, ...]  # de-duplicated, first occurrence order
    query: str | None
    request_ts: float  # unix seconds: context.timestamp (replay) or the arrival time
    limit: int | None
    explain: bool
    context: dict[str, Any] = field(default_factory=dict)
    duplicates: int = 0  # how many repeated ids were dropped
    ignored: tuple[str, ...] = ()  # top-level fields this version does not know, sorted


def parse_json_body(data: bytes) -> Any:
    """Decode a JSON body; 400 ``bad_json`` with the parser's position when it is not JSON."""
    if not data:
        raise ApiError(400, "bad_json", "the request body is empty; send a JSON object")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the request body is not UTF-8: {exc}") from None
    try:
        return orjson.loads(text)  # strict RFC 8259: NaN/Infinity are not numbers; integers fit 64 bits
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def _string(value: Any, *, name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise _invalid(f"{name} must not be empty")
    if len(value) > max_length:
        raise _invalid(f"{name} is longer than {max_length} characters")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _item_ids(items: list) -> dict[str, None]:
    """The distinct item ids in order (a dict, keys only); 422 names the first bad one.

    Checked in bulk at C speed (every id a non-empty ``str`` up to ``MAX_ID_LENGTH``); only a list
    that fails goes through the per-item loop that finds and names the culprit."""
    if set(map(type, items)) == {str} and "" not in items and max(map(len, items)) <= MAX_ID_LENGTH:
        return dict.fromkeys(items)
    for position, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise _invalid(f"items[{position}] must be a non-empty string, got {_type_name(item)}")
        if len(item) > MAX_ID_LENGTH:
            raise _invalid(f"items[{position}] is longer than {MAX_ID_LENGTH} characters")
    return dict.fromkeys(items)  # str subclasses only (the loop accepts them; orjson never makes them)


def parse_rank_request(
    payload: Any, *, surfaces: tuple[str, ...], max_candidates: int, now: float | None = None
) -> RankRequest:
    """Validate a decoded ``/v1/rank`` body.

    Args:
        payload: the decoded JSON document.
        surfaces: the surfaces this scorer serves (others are 422 ``unknown_surface``).
        max_candidates: more items than this is 413 ``too_many_candidates`` (counted before de-duplication).
        now: the request time when the context carries no ``timestamp`` (default: the clock).
    """
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_request", f"the request body must be a JSON object, got {_type_name(payload)}")

    surface = payload.get("surface")
    if not isinstance(surface, str):
        raise _invalid(f"surface must be a string, one of {', '.join(surfaces)}; got {_type_name(surface)}")
    if surface not in surfaces:
        raise ApiError(422, "unknown_surface", f"unknown surface {surface!r}; this scorer serves {', '.join(surfaces)}")

    if "user_id" not in payload:
        raise _invalid("user_id is required")
    user_id = _string(payload["user_id"], name="user_id", max_length=MAX_ID_LENGTH)

    items = payload.get("items")
    if not isinstance(items, list):
        raise _invalid(f"items must be an array of item id strings, got {_type_name(items)}")
    if not items:
        raise _invalid("items is empty; send at least one candidate item id")
    if len(items) > max_candidates:
        raise ApiError(
            413,
            "too_many_candidates",
            f"{len(items)} candidates is more than the limit of {max_candidates} (RANKER_MAX_CANDIDATES); "
            "send fewer or split the request",
        )
    seen = _item_ids(items)

    query = payload.get("query")
    if query is not None:
        if not isinstance(query, str):
            raise _invalid(f"query must be a string or null, got {_type_name(query)}")
        if len(query) > MAX_QUERY_LENGTH:
            raise _invalid(f"query is longer than {MAX_QUERY_LENGTH} characters")
        query = query if query.strip() else None

    context = payload.get("context")
    if context is None:
        context = {}
    elif not isinstance(context, dict):
        raise _invalid(f"context must be an object, got {_type_name(context)}")
    request_ts = now if now is not None else time.time()
    if context.get("timestamp") is not None:
        ts = context["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts <= 0:
            raise _invalid(f"context.timestamp must be a positive number of unix seconds, got {ts!r}")
        request_ts = float(ts)

    limit = payload.get("limit")
    if limit is not None:
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # JSON has one number type: 2.0 is the integer 2 (as in JSON Schema)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise _invalid(f"limit must be an integer, got {_type_name(limit)}")
        if limit < 1:
            raise _invalid(f"limit must be >= 1, got {limit}")
        if limit > MAX_LIMIT:
            raise _invalid(f"limit must be at most {MAX_LIMIT}, got {limit}")

    explain = payload.get("explain", False)
    if explain is None:
        explain = False
    if not isinstance(explain, bool):
        raise _invalid(f"explain must be a boolean, got {_type_name(explain)}")

    return RankRequest(
        surface=surface,
        user_id=user_id,
        items=tuple(seen),
        query=query,
        request_ts=request_ts,
        limit=limit,
        explain=explain,
        context=context,
        duplicates=len(items) - len(seen),
        ignored=tuple(sorted(payload.keys() - REQUEST_FIELDS)),
    )


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: missing feature values are reported as null."""
    value = float(value)
    return value if math.isfinite(value) else None
