"""The OpenAPI 3 document of the scorer, written by hand (it is the contract clients read);
``tests/test_api.py`` checks that its paths and methods are exactly the app's routes. The request
body's schema is not written here: it comes from :func:`api.schemas.rank_request_schema`, beside
the parser it describes, with the serving app's surfaces and candidate limit."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json_content(_ERROR)}


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "machine-readable error code, e.g. invalid_request"},
                    "message": {"type": "string", "description": "what went wrong and what to do"},
                },
            }
        },
    },
    "RankedItem": {
        "type": "object",
        "required": ["item_id", "score", "rank"],
        "properties": {
            "item_id": {"type": "string"},
            "score": {"type": "number", "description": "model score (degraded: last-known item_clicks_7d)"},
            "rank": {"type": "integer", "minimum": 1},
            "propensity": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "description": "exploration on only (RANKER_EXPLORE_SLOTS): the probability that the logging "
                "policy serves this item at this rank (1: deterministic; 1/pool size: an explored slot)",
            },
            "explored": {
                "type": "boolean",
                "description": "exploration on only: this rank is a reserved slot filled by the seeded draw",
            },
            "features": {
                "type": ["object", "null"],
                "additionalProperties": {"type": ["number", "null"]},
                "description": "explain only: feature values served (null = missing); null when degraded",
            },
            "contributions": {
                "type": ["object", "null"],
                "description": "explain only: LightGBM SHAP contributions; sum(top) + other + bias = score",
                "properties": {
                    "bias": {"type": "number"},
                    "top": {
                        "type": "array",
                        "maxItems": 5,
                        "items": {
                            "type": "object",
                            "properties": {"feature": {"type": "string"}, "value": {"type": "number"}},
                        },
                    },
                    "other": {"type": "number", "description": "sum of the remaining features' contributions"},
                },
            },
        },
    },
    "RankResponse": {
        "type": "object",
        "required": ["request_id", "model", "variant", "items", "removed_sold", "degraded"],
        "properties": {
            "request_id": {"type": "string", "description": "uuid4 hex, also in the X-Request-ID header"},
            "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
            "variant": {
                "type": "string",
                "description": "A/B variant the user is assigned to (RANKER_VARIANTS; "
                "salted hash of user_id); 'control' when the surface has no experiment",
            },
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/RankedItem"}},
            "removed_sold": {"type": "integer", "description": "candidates removed because the listing is sold"},
            "duplicates_removed": {"type": "integer", "description": "repeated candidate ids dropped"},
            "degraded": {
                "type": "boolean",
                "description": "true when features were unavailable: items ordered by last-known popularity",
            },
            "degraded_reason": {"type": "string", "enum": ["store_unavailable", "timeout", "error"]},
            "ignored_fields": {
                "type": "array",
                "items": {"type": "string"},
                "description": "top-level request fields this scorer does not know and ignored (present only when any)",
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "surfaces"],
        "properties": {
            "ready": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "surfaces": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/v1/rank": {
        "post": {
            "summary": "Rank candidate listings for a user",
            "operationId": "rank",
            "security": [{"bearer": []}, {}],
            "requestBody": {"required": True, **_json_content({"$ref": "#/components/schemas/RankRequest"})},
            "responses": {
                "200": {
                    "description": "ranked items, sold listings removed",
                    **_json_content({"$ref": "#/components/schemas/RankResponse"}),
                },
                "400": _error("malformed JSON or a body that is not an object"),
                "401": _error("missing or wrong bearer token (when RANKER_API_TOKEN is set)"),
                "413": _error("body over the size limit or more candidates than RANKER_MAX_CANDIDATES"),
                "415": _error("content type is not application/json"),
                "422": _error("unknown surface, wrong field types, empty items, limit < 1"),
                "503": _error("no production model loaded for the surface (code no_model)"),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "operationId": "healthz",
            "responses": {"200": {"description": "the process is up", **_json_content({"type": "object"})}},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: a model per surface, and an online store that answers and holds its views",
            "operationId": "readyz",
            "responses": {
                "200": {"description": "ready", **_json_content({"$ref": "#/components/schemas/Readiness"})},
                "503": {
                    "description": "not ready (no model, store down, or a view the store holds no rows for); "
                    "reasons say why",
                    **_json_content({"$ref": "#/components/schemas/Readiness"}),
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": {"description": "exposition text", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": {"description": "OpenAPI 3 document", **_json_content({"type": "object"})}},
        }
    },
    "/admin/reload": {
        "post": {
            "summary": "Reload production models from the registry now",
            "operationId": "reloadModels",
            "security": [{"bearer": []}],
            "responses": {
                "200": {
                    "description": "per surface: loaded, unchanged, failed (current model kept) or no_model",
                    **_json_content({"type": "object"}),
                },
                "401": _error("missing or wrong bearer token"),
                "403": _error("RANKER_API_TOKEN is not set: admin routes are disabled"),
            },
        }
    },
}


def build_spec(app: Any = None) -> dict[str, Any]:
    """The OpenAPI document; the request schema follows ``app``'s surfaces and candidate limit
    (the defaults without an app)."""
    from api.schemas import rank_request_schema

    if app is not None and "ranker" in app.extensions:
        config = app.extensions["ranker"].config
        surfaces, max_candidates = config.surfaces, config.max_candidates
    else:
        from api.settings import SCORER_SETTINGS

        defaults = {setting.key: setting.default for setting in SCORER_SETTINGS}

        surfaces = tuple(s.strip() for s in str(defaults["RANKER_SURFACES"]).split(",") if s.strip())
        max_candidates = int(defaults["RANKER_MAX_CANDIDATES"])
    schemas = {**_SCHEMAS, "RankRequest": rank_request_schema(surfaces=surfaces, max_candidates=max_candidates)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ranker scorer",
            "version": "1",
            "description": "Real-time learning-to-rank scorer of the second-hand fashion marketplace.",
        },
        "paths": _PATHS,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
