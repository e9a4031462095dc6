"""The documentation site builds with `mkdocs build --strict` (a broken link, anchor or nav entry
fails), and its generated reference pages are deterministic and cover what they claim."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO_ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_deterministic_and_complete():
    hooks = _hooks()
    from api.openapi import build_spec
    from api.settings import ALL_SETTINGS

    for name, generate in hooks.GENERATORS.items():
        first = generate()
        assert first == generate(), f"{name} is not deterministic"
        assert str(REPO_ROOT) not in first and "/tmp/" not in first, f"{name} leaks a local path"
    settings = hooks.settings_page()
    assert all(f"`{s.env}`" in settings for s in ALL_SETTINGS)
    api = hooks.http_api_page()
    routes = [(path, method) for path, methods in build_spec()["paths"].items() for method in methods]
    assert all(f"`{method.upper()} {path}`" in api for path, method in routes)
    assert "`context.timestamp`" in api
    features = hooks.features_page()
    for name in ("listing_fv", "item_stats_fv", "user_listing_features", "search_ranker_v1", "recs_ranker_v1"):
        assert f"`{name}`" in features
    assert "| `price` | Float32 | missing |" in features
    with pytest.raises(ValueError, match="unknown generated section"):
        hooks.render("<!-- generated: nothing -->")


def test_every_page_is_in_the_nav_and_the_readme_links_exist():
    import yaml

    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)
        elif isinstance(node, list):
            for value in node:
                yield from pages(value)

    in_nav = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(REPO_ROOT / "docs")) for p in (REPO_ROOT / "docs").rglob("*.md")}
    assert on_disk - in_nav == set(), "pages missing from the nav of mkdocs.yml"
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    import re

    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO_ROOT / target).exists(), target


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "ranker features status" in cli and "ranker serve" in cli
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    assert "RANKER_FEATURE_TIMEOUT_MS" in settings and "generated:" not in settings
