"""mkdocs hooks: the reference pages are generated from the code at every build.

A page asks for generated content with a marker on a line of its own, ``<!-- generated: NAME -->``:

* ``settings``: the settings tables, from their one declaration (``api/settings.py``, ``ranker/config.py``);
* ``http-api``: the scorer's routes, request and answer fields, from its OpenAPI document (``api/openapi.py``);
* ``features``: every feature view, on-demand view and feature service, from the Feast declarations
  in ``feature_repo/``.

The CLI reference uses mkdocs-click on the ``ranker`` group (its commands are registered here first).
Everything is deterministic (sorted, no times, no absolute paths): ``tests/test_docs.py`` generates
each page twice and builds the site with ``mkdocs build --strict``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


def _import_root() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def settings_page() -> str:
    """The settings tables (Markdown), from api/settings.py and ranker/config.py."""
    _import_root()
    from api.settings import settings_markdown

    return settings_markdown().split("\n", 1)[1].lstrip("\n")  # the page has its own title


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "object" if "properties" in schema else "any")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(kinds)
    if "items" in schema and isinstance(schema["items"], dict):
        inner = schema["items"].get("type") or schema["items"].get("$ref", "").rsplit("/", 1)[-1]
        text = f"array of {inner}" if inner else text
    if "$ref" in schema:
        text = schema["$ref"].rsplit("/", 1)[-1]
    return text


def _constraints(schema: dict[str, Any]) -> str:
    names = {
        "enum": "one of",
        "minLength": "min length",
        "maxLength": "max length",
        "minItems": "min items",
        "maxItems": "max items",
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "pattern": "pattern",
        "default": "default",
    }
    parts = []
    for key, label in names.items():
        if key in schema:
            value = schema[key]
            shown = ", ".join(f"`{v}`" for v in value) if isinstance(value, list) else f"`{json.dumps(value)}`"
            parts.append(f"{label} {shown}")
    return "; ".join(parts)


def _fields_table(schema: dict[str, Any], prefix: str = "") -> list[str]:
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        flag = "yes" if name in required else ""
        description = str(prop.get("description", "")).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_schema_type(prop)} | {flag} | {_constraints(prop)} | {description} |")
        if prop.get("properties"):
            rows += _fields_table(prop, prefix=f"{prefix}{name}.")
    return rows


def http_api_page() -> str:
    """Routes and schemas (Markdown) from the scorer's OpenAPI document, with its default settings."""
    _import_root()
    from api.openapi import build_spec

    spec = build_spec()
    lines = [
        f"OpenAPI {spec['openapi']} document *{spec['info']['title']}*, version {spec['info']['version']}: "
        "`GET /openapi.json` on a running scorer serves it (with that scorer's surfaces and candidate limit; "
        "the figures below are the defaults).",
        "",
    ]
    lines += ["## Routes", "", "| method | path | summary | answers |", "| --- | --- | --- | --- |"]
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            answers = ", ".join(f"{code}" for code in operation["responses"])
            lines.append(f"| `{method.upper()}` | `{path}` | {operation['summary']} | {answers} |")
    lines.append("")
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            lines += [f"## `{method.upper()} {path}`", "", operation["summary"] + ".", ""]
            if operation.get("security") == [{"bearer": []}]:
                lines += ["Needs `Authorization: Bearer <RANKER_API_TOKEN>`.", ""]
            lines += ["| status | meaning |", "| --- | --- |"]
            for code, answer in operation["responses"].items():
                lines.append(f"| {code} | {answer['description']} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [schema["description"].capitalize() + ".", ""]
        rows = _fields_table(schema)
        if rows:
            lines += [
                "| field | type | required | constraints | meaning |",
                "| --- | --- | --- | --- | --- |",
                *rows,
                "",
            ]
    lines += ["## The whole document", "", '??? note "openapi.json"', "", "    ```json"]
    lines += ["    " + line for line in json.dumps(spec, indent=2).splitlines()]
    lines += ["    ```", ""]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day" + ("s" if days != 1 else "")
    return f"{seconds / 3600:g} h"


def features_page() -> str:
    """Every view and service declared in feature_repo/ (Markdown), from Feast's own parser."""
    _import_root()
    from feast.repo_operations import parse_repo

    from ranker.features.store import in_feature_repo

    repo = ROOT / "feature_repo"
    with in_feature_repo(repo):
        contents = parse_repo(repo)
    lines: list[str] = []
    lines += [
        "## Feature views",
        "",
        "Batch features, loaded into the online store by `ranker features materialize`.",
        "",
    ]
    join_keys = {e.name: e.join_key for e in contents.entities}
    for view in sorted(contents.feature_views, key=lambda v: v.name):
        entities = ", ".join(f"`{join_keys.get(e, e)}`" for e in view.entities) or "none"
        seconds = view.ttl.total_seconds() if view.ttl else 0
        ttl = _duration(seconds) if seconds else "none (the latest row holds)"
        source = view.batch_source.name if view.batch_source is not None else "none"
        lines += [
            f"### `{view.name}`",
            "",
            f"{view.description}".strip(),
            "",
            f"Entity keys: {entities}. TTL: {ttl}. Source: `{source}`.",
            "",
            "| feature | type | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for field in view.features:
            default = (field.tags or {}).get("default", "missing")
            lines.append(f"| `{field.name}` | {field.dtype} | {default} | {field.description} |")
        lines.append("")
    lines += [
        "## On-demand views",
        "",
        "Computed at request time, by the same function in training and serving. "
        "Feast 0.67 rejects descriptions on on-demand fields: the meanings are in the table of "
        "[Feature store](../concepts/feature-store.md#the-features).",
        "",
    ]
    for odfv in sorted(contents.on_demand_feature_views, key=lambda v: v.name):
        inputs = sorted([*odfv.source_feature_view_projections, *odfv.source_request_sources])
        lines += [
            f"### `{odfv.name}`",
            "",
            f"{odfv.description}".strip(),
            "",
            f"Inputs: {', '.join(f'`{i}`' for i in inputs)}.",
            "",
            "| feature | type |",
            "| --- | --- |",
        ]
        for field in odfv.features:
            lines.append(f"| `{field.name}` | {field.dtype} |")
        lines.append("")
    lines += [
        "## Feature services",
        "",
        "The model contracts: a model card names its service; the scorer fetches it.",
        "",
        "| service | features | views | description |",
        "| --- | --- | --- | --- |",
    ]
    for service in sorted(contents.feature_services, key=lambda s: s.name):
        projections = service.feature_view_projections
        count = sum(len(p.features) for p in projections)
        views = ", ".join(f"`{p.name}`" for p in projections)
        lines.append(f"| `{service.name}` | {count} | {views} | {service.description} |")
    lines.append("")
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings_page,
    "http-api": http_api_page,
    "features": features_page,
}


def render(markdown: str) -> str:
    """Replace every generation marker of a page by its generated Markdown."""

    def generated(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated section {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(generated, markdown)


# ------------------------------------------------------------------------------------------ mkdocs events


def on_config(config: Any) -> Any:
    """Register the `ranker` subcommands on the click group mkdocs-click documents."""
    _import_root()
    from pipelines import cli

    if not cli.cli.commands:
        cli._register()
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown)
