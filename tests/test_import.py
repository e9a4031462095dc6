"""`ranker data import`: each format on small files, malformed rows counted per reason, --strict,
missing columns and bad paths as one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ranker.config import Settings
from ranker.data import schema
from ranker.data.importers import ImportOptions, LogImportError, import_log

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _write(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _import(tmp_path: Path, **kwargs) -> tuple[Settings, dict]:
    settings = Settings(home=tmp_path / "home")
    return settings, import_log(settings, ImportOptions(**kwargs))


def test_interactions_minimal_columns_become_canonical_tables(tmp_path):
    path = _write(
        tmp_path / "log.csv",
        [
            {"user_id": "a", "item_id": "x", "timestamp": "2026-01-02T10:00:00Z"},
            {"user_id": "a", "item_id": "y", "timestamp": "1767434400"},  # unix seconds: 2026-01-03T10:00Z
            {"user_id": "b", "item_id": "x", "timestamp": "2026-01-04 08:30:00"},  # naive = UTC
        ],
    )
    settings, report = _import(tmp_path, fmt="interactions", path=path)
    assert report["rows_read"] == 3 and report["rows_imported"] == 3 and report["rejected"] == {}
    assert report["events"]["click"] == 3 and not report["has_impressions"]
    events = schema.read_table(settings.raw_dir, schema.EVENTS)
    assert events.timestamp.tolist() == [
        pd.Timestamp(t, tz="UTC") for t in ("2026-01-02T10:00", "2026-01-03T10:00", "2026-01-04T08:30")
    ]
    assert set(events.surface) == {"recs"} and (events.position == 0).all() and events.event_id.is_unique
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS).set_index("item_id")
    # a listing goes live at its first event; attributes the log lacks are "unknown"
    assert listings.loc["x", "created_at"] == pd.Timestamp("2026-01-02T10:00", tz="UTC")
    assert listings.loc["y", "category"] == "unknown" and listings.sold_at.isna().all()
    users = schema.read_table(settings.raw_dir, schema.USERS).set_index("user_id")
    assert users.loc["b", "signup_at"] == pd.Timestamp("2026-01-04T08:30", tz="UTC")
    assert json.loads((settings.raw_dir / "import_manifest.json").read_text())["rows_imported"] == 3


def test_interactions_rejections_are_counted_per_reason(tmp_path):
    rows = [
        {"user_id": "a", "item_id": "x", "timestamp": "2026-01-02T10:00:00Z", "event_type": "view", "value": "4"},
        {
            "user_id": "a",
            "item_id": "x",
            "timestamp": "2026-01-02T10:00:00Z",
            "event_type": "view",
            "value": "4",
        },  # duplicate
        {
            "user_id": "",
            "item_id": "x",
            "timestamp": "2026-01-02T11:00:00Z",
            "event_type": "view",
            "value": "3",
        },  # missing user
        {
            "user_id": "b",
            "item_id": "",
            "timestamp": "2026-01-02T11:00:00Z",
            "event_type": "view",
            "value": "3",
        },  # missing item
        {"user_id": "b", "item_id": "y", "timestamp": "not a time", "event_type": "view", "value": "5"},
        {"user_id": "b", "item_id": "y", "timestamp": "", "event_type": "view", "value": "5"},
        {"user_id": "b", "item_id": "y", "timestamp": "2026-01-03T11:00:00Z", "event_type": "teleport", "value": "5"},
        {
            "user_id": "b",
            "item_id": "y",
            "timestamp": "2026-01-03T12:00:00Z",
            "event_type": "Add To Cart",
            "value": "five",
        },
        {
            "user_id": "b",
            "item_id": "y",
            "timestamp": "2026-01-03T13:00:00Z",
            "event_type": "like",
            "value": "1",
        },  # < min
        {"user_id": "c", "item_id": "z", "timestamp": "2026-01-04T13:00:00Z", "event_type": "order", "value": "5"},
        {
            "user_id": "c",
            "item_id": "q",
            "timestamp": "2026-01-04T14:00:00Z",
            "event_type": "purchase",
            "value": "5",
        },  # unknown item
    ]
    items = _write(
        tmp_path / "items.csv",
        [
            {"item_id": "x", "category": "dresses", "created_at": "2026-01-01T00:00:00Z"},
            {"item_id": "y", "category": "shoes"},
            {"item_id": "z", "category": "shoes", "created_at": "2026-01-05T00:00:00Z"},  # after its event: rejected
            {"item_id": "w", "category": "bags", "created_at": "2026-01-01T00:00:00Z"},  # never interacted with
        ],
    )
    path = _write(tmp_path / "log.csv", rows)
    settings, report = _import(tmp_path, fmt="interactions", path=path, items=items, min_value=3)
    assert report["rejected"] == {
        "missing user_id": 1,
        "missing item_id": 1,
        "missing timestamp": 1,
        "unparsable timestamp": 1,
        "unknown event_type": 1,
        "unparsable value": 1,
        "value below --min-value 3": 1,
        "duplicate": 1,
        "unknown item_id": 1,
        "before the listing's created_at": 1,
    }
    assert report["rows_read"] == len(rows) == report["rows_imported"] + report["rejected_total"]
    events = schema.read_table(settings.raw_dir, schema.EVENTS)
    assert events.event_type.tolist() == ["click"]
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS).set_index("item_id")
    assert listings.loc["w", "category"] == "bags", "items from the items file are listings even without events"
    assert listings.loc["x", "created_at"] == pd.Timestamp("2026-01-01", tz="UTC")

    with pytest.raises(LogImportError, match=r"--strict: 10 row\(s\) rejected"):
        _import(tmp_path / "strict", fmt="interactions", path=path, items=items, min_value=3, strict=True)
    assert not (tmp_path / "strict" / "home" / "data" / "raw" / "events.parquet").exists()


def test_interactions_event_types_sessions_queries_and_sales(tmp_path):
    path = _write(
        tmp_path / "log.jsonl.csv",
        [
            {
                "user_id": "a",
                "item_id": "x",
                "timestamp": "2026-01-02T10:00:00Z",
                "event_type": "purchase",
                "session_id": "s1",
                "query": " Black  Dress ",
            },
            {
                "user_id": "a",
                "item_id": "y",
                "timestamp": "2026-01-02T10:01:00Z",
                "event_type": "wishlist",
                "session_id": "s1",
                "query": "",
            },
        ],
    )
    settings, _ = _import(tmp_path, fmt="interactions", path=path, sold_on_purchase=True)
    events = schema.read_table(settings.raw_dir, schema.EVENTS).set_index("item_id")
    assert events.loc["x", "event_type"] == "purchase" and events.loc["y", "event_type"] == "save"
    assert events.loc["x", "query"] == "black dress" and events.loc["x", "surface"] == "search"
    assert events.loc["y", "surface"] == "recs" and set(events.request_id) == {"s1"}
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS).set_index("item_id")
    assert listings.loc["x", "sold_at"] == pd.Timestamp("2026-01-02T10:00", tz="UTC")
    assert pd.isna(listings.loc["y", "sold_at"])


def test_events_format_validates_positions_orphans_and_duplicates(tmp_path):
    base = {"surface": "recs", "request_id": "r1", "user_id": "a", "query": ""}
    rows = [
        {
            **base,
            "event_id": "1",
            "event_type": "impression",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "x",
            "position": 1,
        },
        {
            **base,
            "event_id": "2",
            "event_type": "impression",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "y",
            "position": 2,
        },
        {
            **base,
            "event_id": "3",
            "event_type": "click",
            "timestamp": "2026-01-02T10:00:30Z",
            "item_id": "y",
            "position": 2,
        },
        {
            **base,
            "event_id": "3",
            "event_type": "save",
            "timestamp": "2026-01-02T10:00:40Z",
            "item_id": "y",
            "position": 2,
        },  # dup id
        {
            **base,
            "event_id": "4",
            "event_type": "click",
            "timestamp": "2026-01-02T09:59:00Z",
            "item_id": "x",
            "position": 1,
        },  # before imp
        {
            **base,
            "event_id": "5",
            "event_type": "click",
            "timestamp": "2026-01-02T10:01:00Z",
            "item_id": "z",
            "position": 3,
        },  # never shown
        {
            **base,
            "event_id": "6",
            "event_type": "impression",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "w",
            "position": 0,
        },
        {
            **base,
            "event_id": "7",
            "event_type": "impression",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "v",
            "position": "1.5",
        },
        {
            **base,
            "event_id": "8",
            "event_type": "impression",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "u",
            "position": 3,
            "surface": "email",
        },
        {
            **base,
            "event_id": "9",
            "event_type": "hover",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "u",
            "position": 3,
        },
        {
            **base,
            "event_id": "10",
            "event_type": "impression",
            "timestamp": "2026-01-02T10:00:00Z",
            "item_id": "x",
            "position": 1,
        },  # same content as 1
    ]
    path = _write(tmp_path / "events.csv", rows)
    settings, report = _import(tmp_path, fmt="events", path=path)
    assert report["rejected"] == {
        "unknown event_type": 1,
        "unknown surface": 1,
        "position not a positive integer": 2,
        "duplicate event_id": 1,
        "duplicate": 1,
        "engagement without an earlier impression of the same (request, item)": 2,
    }
    events = schema.read_table(settings.raw_dir, schema.EVENTS)
    assert sorted(events.event_id) == ["1", "2", "3"]
    assert report["has_impressions"] and report["events"] == {
        "impression": 2,
        "click": 1,
        "save": 0,
        "add_to_bag": 0,
        "purchase": 0,
    }


def test_missing_columns_and_unreadable_files_are_errors(tmp_path):
    path = _write(tmp_path / "log.csv", [{"user": "a", "item_id": "x", "timestamp": "2026-01-02"}])
    with pytest.raises(LogImportError, match="missing column\\(s\\) user_id for the interactions format"):
        _import(tmp_path, fmt="interactions", path=path)
    with pytest.raises(LogImportError, match="missing column\\(s\\) event_type, surface, request_id, position"):
        _import(tmp_path, fmt="events", path=EXAMPLES / "interactions_minimal.csv")
    with pytest.raises(LogImportError, match="not found"):
        _import(tmp_path, fmt="interactions", path=tmp_path / "nope.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(LogImportError, match="not readable"):
        _import(tmp_path, fmt="interactions", path=bad)
    with pytest.raises(LogImportError, match="no valid rows"):
        _import(
            tmp_path,
            fmt="interactions",
            path=_write(tmp_path / "empty.csv", [{"user_id": "", "item_id": "x", "timestamp": "2026-01-02"}]),
        )


def test_open_bandit_example_folder(tmp_path):
    settings, report = _import(tmp_path, fmt="open-bandit", path=EXAMPLES / "open_bandit", policies=("random",))
    log = pd.read_csv(EXAMPLES / "open_bandit" / "random" / "all" / "all.csv", index_col=0)
    assert report["rows_read"] == report["rows_imported"] == len(log)
    assert report["events"]["impression"] == len(log) and report["events"]["click"] == int(log.click.sum())
    props = pd.read_parquet(settings.raw_dir / "propensities.parquet")
    assert len(props) == len(log) and props.propensity.between(0, 1).all()
    assert sorted(props.propensity.round(6).unique()) == [0.0125]  # the uniform policy over 80 items
    events = schema.read_table(settings.raw_dir, schema.EVENTS)
    clicks = events[events.event_type == "click"].set_index("request_id")
    shown = events[events.event_type == "impression"].set_index("request_id")
    assert (clicks.timestamp > shown.loc[clicks.index, "timestamp"]).all(), "a click follows its impression"
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    assert set(events.item_id) <= set(listings.item_id) and (listings.category != "unknown").all()
    # importing another log into the same home removes the propensities that described this one
    import_log(settings, ImportOptions(fmt="interactions", path=EXAMPLES / "interactions_minimal.csv"))
    assert not (settings.raw_dir / "propensities.parquet").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "interactions", "missing.csv"], "error: log file missing.csv not found"),
        (["--format", "interactions", "examples/interactions.csv", "--strict"], "error: --strict: 4 row(s) rejected"),
        (["--format", "open-bandit", "examples/open_bandit"], "error: examples/open_bandit/bts/all/all.csv not found"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    env = {"RANKER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "data", "import", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_cli_import_prints_the_report(tmp_path):
    env = {"RANKER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "data",
            "import",
            "--format",
            "interactions",
            "examples/interactions.csv",
            "--items",
            "examples/items.csv",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "Rejected 5 row(s): missing user_id: 1, unparsable timestamp: 1, unknown event_type: 1, duplicate: 1, "
        "unknown item_id: 1." in result.stdout
    )
