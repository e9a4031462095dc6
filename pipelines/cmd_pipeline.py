"""`ranker pipeline daily|retrain|runs|show`: the scheduled jobs, with a run record per run.

Logic lives in ``ranker.jobs``; these commands parse options, run the steps and print the outcome.
"""

from __future__ import annotations

import json
from datetime import datetime

import click

from ranker.errors import RankerError


def _common(fn):
    """Options every pipeline shares: which run, resume, single steps, force."""
    fn = click.option(
        "--run-id",
        default=None,
        help="Start or continue this run (default: a new id from the time). "
        "Airflow passes one per schedule date so retries resume the same run.",
    )(fn)
    fn = click.option("--resume", is_flag=True, help="Continue the newest run of this pipeline that did not succeed.")(
        fn
    )
    fn = click.option("--step", "steps", multiple=True, help="Run only this step of the run (repeatable).")(fn)
    fn = click.option("--force", is_flag=True, help="Run steps even when their inputs are unchanged.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON at the end.")(fn)
    return fn


def _finish(result, as_json: bool) -> None:
    record = result.record
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    counts: dict[str, int] = {}
    for step in record["steps"]:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    click.echo(
        f"{record['pipeline']} run {record['run_id']}: {record['status']} in {record['seconds']} s "
        f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})\nrecord: {result.path}"
    )


def register(cli: click.Group) -> None:
    from ranker.data.simulate import SimConfig

    sim_defaults = SimConfig()

    @cli.group()
    def pipeline() -> None:
        """Scheduled jobs: `daily` (ingest -> features -> apply -> materialize) and `retrain`
        (training set -> train -> evaluate -> publish -> gate -> staging -> gate -> production).

        Every run writes artifacts/runs/PIPELINE/RUN_ID.json (parameters, status, per step: inputs,
        outputs, duration, error). Steps whose inputs did not change since a successful run are
        skipped; a failed run continues where it stopped with --resume (or the same --run-id).
        """

    @pipeline.command("daily")
    @click.option(
        "--simulate",
        is_flag=True,
        help="Produce the raw tables with the simulator (demo, CI sample) "
        "instead of using those an importer landed in data/raw/.",
    )
    @click.option(
        "--days",
        type=click.IntRange(1, 3660),
        default=sim_defaults.days,
        show_default=True,
        help="With --simulate: days of traffic, ending last midnight (UTC) unless --start is given.",
    )
    @click.option(
        "--start",
        "sim_start",
        type=click.DateTime(formats=["%Y-%m-%d"]),
        default=None,
        help="With --simulate: first simulated day (UTC).",
    )
    @click.option(
        "--scale",
        type=click.FloatRange(0, 1000, min_open=True),
        default=sim_defaults.scale,
        show_default=True,
        help="With --simulate: size multiplier (0.3 is a quick sample).",
    )
    @click.option(
        "--seed", type=click.IntRange(0), default=sim_defaults.seed, show_default=True, help="With --simulate: seed."
    )
    @click.option("--end", default=None, help="Materialize rows up to this time (ISO with timezone). Default: now.")
    @click.option("--full", is_flag=True, help="Reload the online store from scratch (after rebuilding history).")
    @_common
    @click.pass_obj
    def daily(
        settings, simulate, days, sim_start, scale, seed, end, full, run_id, resume, steps, force, as_json
    ) -> None:
        """Ingest -> feature tables -> feast apply -> materialize into the online store."""
        from ranker.jobs.daily import PIPELINE, DailyOptions, daily_steps, default_sim
        from ranker.jobs.runs import run_pipeline

        end_ts = None
        if end is not None:
            try:
                end_ts = datetime.fromisoformat(end)
            except ValueError:
                raise RankerError(f"--end {end!r} is not an ISO date/time such as 2026-11-25T00:00:00+00:00") from None
            if end_ts.tzinfo is None:
                raise RankerError(f"--end {end!r} has no timezone; add +00:00 for UTC")
        sim = None
        if simulate:
            sim = default_sim(days=days, scale=scale, seed=seed)
            if sim_start is not None:
                sim["start"] = sim_start.date().isoformat()
        options = DailyOptions(simulate=simulate, sim=sim, materialize_end=end_ts, full=full)
        result = run_pipeline(
            settings,
            pipeline=PIPELINE,
            steps=daily_steps(),
            params=options.params(),
            run_id=run_id,
            resume=resume,
            only=list(steps) or None,
            force=force,
            echo=click.echo,
        )
        _finish(result, as_json)

    @pipeline.command("retrain")
    @click.option(
        "--surface",
        "surfaces",
        type=click.Choice(["search", "recs"]),
        multiple=True,
        help="Surface(s) to retrain (repeatable). Default: both.",
    )
    @click.option("--start", default=None, help="Training-set window start (UTC date or date-time). Default: all data.")
    @click.option("--end", default=None, help="Training-set window end (UTC). Default: all data.")
    @click.option("--seed", default=42, show_default=True, type=click.IntRange(0), help="LightGBM seed.")
    @click.option(
        "--bootstrap", default=1000, show_default=True, type=click.IntRange(100), help="Evaluation bootstrap resamples."
    )
    @click.option(
        "--staging-margin",
        default=-0.01,
        show_default=True,
        type=float,
        help="Staging gate: lower 95% bound of the NDCG@10 gain over production must reach this.",
    )
    @click.option(
        "--production-margin",
        default=0.0,
        show_default=True,
        type=float,
        help="Production gate: the same bound must reach this.",
    )
    @click.option(
        "--slice-tolerance", default=0.02, show_default=True, type=float, help="Largest NDCG@10 drop on any slice."
    )
    @click.option(
        "--predict-budget-ms",
        default=5.0,
        show_default=True,
        type=float,
        help="Median predict time for 200 candidates.",
    )
    @click.option(
        "--quality-bar/--no-quality-bar",
        default=True,
        show_default=True,
        help="The production gate requires the evaluation to beat every baseline (off: small samples).",
    )
    @click.option(
        "--fail-on-blocked", is_flag=True, help="Exit 1 when a gate kept the current model (default: exit 0)."
    )
    @_common
    @click.pass_obj
    def retrain(
        settings,
        surfaces,
        start,
        end,
        seed,
        bootstrap,
        staging_margin,
        production_margin,
        slice_tolerance,
        predict_budget_ms,
        quality_bar,
        fail_on_blocked,
        run_id,
        resume,
        steps,
        force,
        as_json,
    ) -> None:
        """Per surface: training set -> train -> evaluate -> publish -> gate -> staging -> second gate -> production."""
        from ranker.jobs.retrain import PIPELINE, RetrainOptions, outcome, retrain_steps
        from ranker.jobs.runs import run_pipeline
        from ranker.training.dataset import parse_utc

        parse_utc(start, option="--start")  # validate before any work
        parse_utc(end, option="--end")
        options = RetrainOptions(
            surfaces=tuple(dict.fromkeys(surfaces)) or ("search", "recs"),
            start=start,
            end=end,
            seed=seed,
            bootstrap=bootstrap,
            staging_margin=staging_margin,
            production_margin=production_margin,
            slice_tolerance=slice_tolerance,
            predict_budget_ms=predict_budget_ms,
            quality_bar=quality_bar,
        )
        result = run_pipeline(
            settings,
            pipeline=PIPELINE,
            steps=retrain_steps(options.surfaces),
            params=options.params(),
            run_id=run_id,
            resume=resume,
            only=list(steps) or None,
            force=force,
            echo=click.echo,
        )
        for surface, line in outcome(result.record).items():
            click.echo(f"{surface}: {line}")
        _finish(result, as_json)
        if fail_on_blocked and any(s["status"] == "blocked" for s in result.record["steps"]):
            raise click.exceptions.Exit(1)

    @pipeline.command("runs")
    @click.argument("name", type=click.Choice(["daily", "retrain"]))
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.pass_obj
    def runs(settings, name: str, as_json: bool) -> None:
        """List the runs of a pipeline, oldest first."""
        from ranker.jobs.runs import list_records

        records = list_records(settings, name)
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {k: r.get(k) for k in ("run_id", "status", "started_at", "finished_at", "seconds", "attempts")}
                        for r in records
                    ],
                    indent=2,
                )
            )
            return
        if not records:
            click.echo(f"no {name} runs yet")
        for r in records:
            steps = " ".join(f"{s['name']}={s['status']}" for s in r.get("steps", []))
            click.echo(f"{r['run_id']:<40} {r.get('status', '?'):<10} {r.get('seconds') or '-':>8} s  {steps}")

    @pipeline.command("show")
    @click.argument("name", type=click.Choice(["daily", "retrain"]))
    @click.argument("run_id")
    @click.pass_obj
    def show(settings, name: str, run_id: str) -> None:
        """Print one run record (JSON)."""
        from ranker.jobs.runs import load_record

        click.echo(json.dumps(load_record(settings, name, run_id), indent=2, default=str))


__all__ = ["register"]
