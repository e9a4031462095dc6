"""`ranker pipeline daily|retrain`: run records, skip-when-unchanged, resume after a failure, the
one-run-at-a-time lock, the two promotion gates, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ranker.config import Settings
from ranker.jobs.runs import PipelineError, Step, _pipeline_lock, list_records, run_pipeline, runs_dir
from tests.conftest import REPO_ROOT, make_home

pytestmark = pytest.mark.slow

# retrain on the sample's last two days only: a model too weak to pass the quality bar
WEAK = ["--surface", "search", "--start", "2026-10-07"]
SAMPLE = ["--simulate", "--scale", "0.15", "--days", "8", "--start", "2026-10-01", "--end", "2026-10-09T00:00:00+00:00"]


def ranker_process(home: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `ranker` entry point in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO_ROOT,
        env={"RANKER_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def ranker(home: Path, *args: str, check: bool = True):
    """The same CLI in process (click's runner): no 5 s of imports per call."""
    from click.testing import CliRunner

    from pipelines.cli import _register, cli

    _register()
    result = CliRunner().invoke(cli, list(args), env={"RANKER_HOME": str(home)}, catch_exceptions=False)
    result.returncode = result.exit_code
    if check:
        assert result.exit_code == 0, result.stderr[-3000:]
    return result


def newest(settings: Settings, pipeline: str) -> dict:
    return list_records(settings, pipeline)[-1]


def steps(record: dict) -> dict[str, dict]:
    return {s["name"]: s for s in record["steps"]}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Settings:
    """A fresh home after one daily run of a small simulated sample (through the CLI)."""
    settings = make_home(tmp_path_factory.mktemp("pipeline") / "home")
    ranker_process(settings.home, "pipeline", "daily", *SAMPLE)
    return settings


def test_daily_records_every_step_with_inputs_outputs_and_durations(home):
    record = newest(home, "daily")
    assert record["status"] == "succeeded" and record["attempts"] == 1
    by = steps(record)
    assert [s["name"] for s in record["steps"]] == ["ingest", "features", "apply", "materialize"]
    assert all(
        s["status"] == "succeeded" and s["seconds"] > 0 and s["started_at"] <= s["finished_at"] for s in by.values()
    )
    assert by["ingest"]["inputs"]["simulate"]["scale"] == 0.15
    assert by["ingest"]["outputs"]["rows"]["events"] > 10_000
    assert by["features"]["outputs"]["tables"]["item_stats"]["rows"] > 0
    assert "search_ranker_v1" in by["apply"]["outputs"]["feature_services"]
    assert by["materialize"]["outputs"]["rows"] > 0 and by["materialize"]["outputs"]["online_store"] == "sqlite"
    assert (home.feast_dir / "online.db").exists()


def test_a_rerun_skips_unchanged_steps_and_redoes_missing_outputs(home):
    first = newest(home, "daily")
    ranker(home.home, "pipeline", "daily", *SAMPLE)
    by = steps(newest(home, "daily"))
    for name in ("ingest", "features", "apply"):
        assert by[name]["status"] == "skipped" and by[name]["reused_from"] == first["run_id"], name
    assert by["materialize"]["status"] == "succeeded" and by["materialize"]["outputs"]["rows"] == 0  # incremental

    # A lost output is rebuilt even though the inputs did not change.
    (home.features_dir / "item_stats.parquet").unlink()
    ranker(home.home, "pipeline", "daily", *SAMPLE)
    by = steps(newest(home, "daily"))
    assert by["ingest"]["status"] == "skipped" and by["features"]["status"] == "succeeded"
    assert (home.features_dir / "item_stats.parquet").exists()


def test_a_failed_run_resumes_at_the_failed_step(home):
    broken = home.feature_repo / "zz_broken.py"
    broken.write_text("this is not python\n")
    try:
        failed = ranker(home.home, "pipeline", "daily", *SAMPLE, "--force", check=False)
    finally:
        broken.unlink()
    assert failed.returncode == 2
    assert (
        failed.stderr.strip().splitlines()[-1].startswith("error: daily run daily-")
        and "step apply failed" in failed.stderr
    )
    assert "Traceback" not in failed.stderr
    record = newest(home, "daily")
    by = steps(record)
    assert record["status"] == "failed" and by["apply"]["status"] == "failed" and by["apply"]["error"]
    assert by["materialize"]["status"] == "pending"

    ranker(home.home, "pipeline", "daily", *SAMPLE, "--resume")
    resumed = newest(home, "daily")
    by = steps(resumed)
    assert resumed["run_id"] == record["run_id"] and resumed["attempts"] == 2 and resumed["status"] == "succeeded"
    assert by["ingest"]["status"] == by["features"]["status"] == "succeeded"  # kept from attempt 1
    assert by["ingest"]["finished_at"] < by["apply"]["started_at"]
    assert by["apply"]["status"] == "succeeded" and by["materialize"]["status"] == "succeeded"


def test_resume_refuses_other_parameters_and_concurrent_runs(home):
    run_id = newest(home, "daily")["run_id"]
    other = ranker(home.home, "pipeline", "daily", "--run-id", run_id, check=False)
    assert other.returncode == 2 and "was started with other parameters" in other.stderr
    with _pipeline_lock(runs_dir(home, "daily"), "daily", "holder-run"):
        busy = ranker(home.home, "pipeline", "daily", *SAMPLE, check=False)
    assert busy.returncode == 2 and "another daily run is in progress (run holder-run" in busy.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["daily", "--end", "yesterday"], "is not an ISO date/time"),
        (["daily", "--end", "2026-10-09T00:00:00"], "has no timezone"),
        (["daily", "--run-id", "../escape"], "must be 1-120 characters"),
        (["daily", "--step", "nope"], "unknown step(s) nope of daily"),
        (["retrain", "--start", "soon"], "--start"),
        (["retrain", "--staging-margin", "0.1"], "must not be stricter"),
        (["show", "daily", "no-such-run"], "no daily run 'no-such-run'"),
    ],
)
def test_bad_input_is_a_one_line_error(home, args, message):
    result = ranker(home.home, "pipeline", *args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_step_error_is_recorded_with_its_traceback_and_the_run_raises(tmp_path):
    settings = Settings(home=tmp_path)

    def explode(ctx):
        raise ValueError("boom")

    with pytest.raises(PipelineError, match="step b failed: ValueError: boom"):
        run_pipeline(
            settings,
            pipeline="unit",
            steps=[Step("a", lambda ctx: {"x": 1}), Step("b", explode)],
            params={},
            echo=lambda line: None,
        )
    record = list_records(settings, "unit")[-1]
    assert steps(record)["a"]["outputs"] == {"x": 1}
    assert "ValueError: boom" in steps(record)["b"]["traceback"]


def test_retrain_gates_staging_then_production_and_is_idempotent(home):
    from ranker.registry import Registry

    registry = Registry.from_settings(home)
    # Two days of a small sample do not beat every baseline with confidence: staging yes, production no.
    out = ranker(home.home, "pipeline", "retrain", *WEAK, "--bootstrap", "200").stdout
    first = newest(home, "retrain")
    by = steps(first)
    assert [s["name"] for s in first["steps"]] == [
        f"{k}:search" for k in ("dataset", "train", "evaluate", "publish", "staging", "production")
    ]
    version = by["publish:search"]["outputs"]["version"]
    assert by["staging:search"]["status"] == "succeeded" and by["staging:search"]["outputs"]["gate"]["passed"]
    assert by["production:search"]["status"] == "blocked"
    gate = by["production:search"]["outputs"]["gate"]
    assert gate["failed"] == ["quality_bar"] and {c["name"] for c in gate["checks"]} >= {
        "registry_roundtrip",
        "ndcg_vs_champion",
    }
    assert next(c for c in gate["checks"] if c["name"] == "registry_roundtrip")["figures"]["max_abs_diff"] == 0.0
    assert f"search: {version} in staging only" in out
    assert registry.pointer("search_ranker", "staging").version == version
    assert registry.pointer("search_ranker", "production") is None
    assert Path(by["evaluate:search"]["outputs"]["report"]).exists()

    # Without the quality bar: same training set and model (no new version), promoted to production.
    ranker(home.home, "pipeline", "retrain", *WEAK, "--bootstrap", "200", "--no-quality-bar")
    by = steps(newest(home, "retrain"))
    assert by["dataset:search"]["status"] == "skipped" and by["dataset:search"]["reused_from"] == first["run_id"]
    assert by["train:search"]["outputs"]["reused"] is True and by["train:search"]["outputs"]["version"] == version
    assert by["publish:search"]["outputs"]["created"] is False
    assert by["production:search"]["status"] == "succeeded"
    assert registry.pointer("search_ranker", "production").version == version
    assert len(list((home.artifacts_dir / "models" / "search_ranker").iterdir())) == 1

    # Once more: production already serves this exact model, so nothing moves.
    out = ranker(home.home, "pipeline", "retrain", *WEAK, "--bootstrap", "200", "--no-quality-bar").stdout
    by = steps(newest(home, "retrain"))
    assert by["staging:search"]["status"] == "blocked" and by["production:search"]["status"] == "skipped"
    assert "kept production: production already serves this model" in out
    actions = [e["action"] for e in registry.audit_log("search_ranker")]
    assert actions == ["publish", "promote", "promote"]
    assert json.loads(ranker(home.home, "pipeline", "runs", "retrain", "--json").stdout)[-1]["status"] == "succeeded"
