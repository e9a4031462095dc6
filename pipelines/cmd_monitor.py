"""`ranker monitor ...`: skew, drift, online metrics, the live environment and the HTML report.

Each command reads the scorer's served-feature log (RANKER_SERVED_LOG_URI, default data/served_log),
prints a table (or --json), writes its figures as Prometheus gauges (textfile, optional Pushgateway)
and exits 1 when its check fails (skew or drift above the threshold), 2 on bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

WINDOW_HELP = "Start of the served-log window: ISO time/date or a duration ago (24h, 7d, 30m)."


def _common(f):
    f = click.option("--since", default="24h", show_default=True, help=WINDOW_HELP)(f)
    f = click.option("--until", default=None, help="End of the window (exclusive), same forms; default now.")(f)
    f = click.option("--surface", type=click.Choice(["search", "recs"]), default=None, help="Only this surface.")(f)
    f = click.option(
        "--log-uri", default="", help="Served log location (default RANKER_SERVED_LOG_URI or data/served_log)."
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")(f)
    f = click.option(
        "--textfile-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Folder for the Prometheus textfile (default artifacts/monitoring/metrics).",
    )(f)
    f = click.option(
        "--pushgateway",
        default=lambda: os.environ.get("RANKER_PUSHGATEWAY_URL", ""),
        help="Also push the gauges to this Pushgateway (env RANKER_PUSHGATEWAY_URL).",
    )(f)
    return f


def _frames(settings, *, since, until, surface, log_uri, include_degraded=False):
    from ranker.monitoring.servedlog import log_store, parse_time, read_served_log

    start, end = parse_time(since, option="--since"), parse_time(until, option="--until")
    if start is not None and end is not None and end <= start:
        from ranker.errors import RankerError

        raise RankerError(f"--until {until} is not after --since {since}")
    return read_served_log(
        log_store(settings, log_uri), surface=surface, since=start, until=end, include_degraded=include_degraded
    )


def _export(settings, registry, monitor: str, textfile_dir: Path | None, pushgateway: str) -> None:
    from ranker.monitoring.export import export

    where = export(
        registry,
        monitor,
        textfile_dir=textfile_dir or settings.artifacts_dir / "monitoring" / "metrics",
        pushgateway=pushgateway or None,
    )
    click.echo(f"prometheus: {', '.join(where)}", err=True)


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))


def known_versions(settings, frames):
    """The frames without the rows of model versions the registry does not know (an old or foreign
    log part), and those versions as ``[{"model_name", "version", "rows", "reason"}]``."""
    import numpy as np

    from ranker.errors import RankerError
    from ranker.monitoring.servedlog import ServedFrame
    from ranker.registry import Registry

    registry = Registry.from_settings(settings)
    known: dict[tuple[str, str], bool] = {}
    skipped = []
    out = []
    for frame in frames:
        keep = []
        for (name, version), part in frame.rows.groupby(["model_name", "model_version"], sort=True):
            if (name, version) not in known:
                try:
                    registry.card(name, version=version)
                    known[(name, version)] = True
                except RankerError:
                    known[(name, version)] = False
            if known[(name, version)]:
                keep.append(part.index.to_numpy())
            else:
                skipped.append(
                    {
                        "model_name": name,
                        "version": version,
                        "feature_service": frame.feature_service,
                        "rows": int(len(part)),
                        "reason": "model version unknown to the registry",
                    }
                )
        if keep:
            idx = np.sort(np.concatenate(keep))
            out.append(
                ServedFrame(
                    frame.feature_service,
                    frame.feature_names,
                    frame.rows.iloc[idx].reset_index(drop=True),
                    frame.matrix[idx],
                )
            )
    if not out:
        raise RankerError(
            "every served-log row in the window belongs to a model version the registry does not know: "
            + ", ".join(f"{s['model_name']} {s['version']}" for s in skipped)
            + "; is RANKER_REGISTRY_URI the scorer's registry?"
        )
    return out, skipped


def _report_skipped(skipped) -> None:
    for s in skipped:
        click.echo(f"skipped {s['rows']:,} served rows of {s['model_name']} {s['version']} ({s['reason']})", err=True)


def run_skew(settings, *, since, until, surface, log_uri, threshold, rtol, atol, max_rows):
    from ranker.monitoring.skew import SkewOptions, skew_report

    options = SkewOptions(threshold=threshold, rtol=rtol, atol=atol, max_rows=max_rows)
    frames, skipped = known_versions(
        settings, _frames(settings, since=since, until=until, surface=surface, log_uri=log_uri)
    )
    return {**skew_report(settings, frames, options), "skipped_versions": skipped}


def parse_offset(value: str):
    """``--reference-offset``: ``30m``, ``12h``, ``1d``, ``7d`` as a Timedelta."""
    import pandas as pd

    from ranker.errors import RankerError

    text = str(value).strip()
    units = {"m": "min", "h": "h", "d": "D"}
    if text[-1:] not in units or not text[:-1].replace(".", "", 1).isdigit() or float(text[:-1]) <= 0:
        raise RankerError(f"--reference-offset={value!r} is not a duration; use e.g. 1d or 7d")
    return pd.Timedelta(float(text[:-1]), unit=units[text[-1]])


def _reference_frames(settings, *, since, until, surface, log_uri, reference_since, reference_until, reference_offset):
    """The served reference window: explicit bounds, or the window shifted back by ``reference_offset``."""
    import pandas as pd

    from ranker.monitoring.servedlog import ServedLogError, log_store, parse_time, read_served_log

    if reference_since:
        start, end = (
            parse_time(reference_since, option="--reference-since"),
            parse_time(reference_until, option="--reference-until"),
        )
    elif reference_offset:
        shift = parse_offset(reference_offset)
        start = parse_time(since, option="--since")
        end = parse_time(until, option="--until") or pd.Timestamp.now(tz="UTC")
        if start is None:
            return None
        start, end = start - shift, end - shift
    else:
        return None
    try:
        return read_served_log(log_store(settings, log_uri), surface=surface, since=start, until=end)
    except ServedLogError:
        return None


def run_drift(
    settings,
    *,
    since,
    until,
    surface,
    log_uri,
    threshold,
    score_threshold,
    min_rows,
    min_threshold=0.1,
    history_days=7,
    reference_since=None,
    reference_until=None,
    reference_offset="1d",
    shift=None,
    against_training=False,
):
    """``shift``: ``{feature: factor}`` multiplies served values (the demo's injected-shift check)."""
    import numpy as np

    from ranker.monitoring.drift import DriftOptions, cards_for, drift_report, healthy_baseline, reference_scores
    from ranker.monitoring.servedlog import ServedFrame
    from ranker.registry import Registry

    options = DriftOptions(
        threshold=threshold,
        score_threshold=score_threshold,
        min_rows=min_rows,
        min_threshold=min_threshold,
        history_days=history_days,
        against_training=against_training,
    )
    if reference_offset and not reference_since:
        parse_offset(reference_offset)  # bad input is reported before any reading
    frames = _frames(settings, since=since, until=until, surface=surface, log_uri=log_uri)
    if shift:
        shifted = []
        for frame in frames:
            matrix = frame.matrix.copy()
            for feature, factor in shift.items():
                if feature in frame.feature_names:
                    matrix[:, frame.feature_names.index(feature)] *= np.float32(factor)
            shifted.append(ServedFrame(frame.feature_service, frame.feature_names, frame.rows, matrix))
        frames = shifted
    registry = Registry.from_settings(settings)
    cards = cards_for(frames, registry)
    refs = {key: reference_scores(registry, *key, card) for key, card in cards.items()}
    baselines = {key: healthy_baseline(card, history_days=history_days) for key, card in cards.items()}
    reference = _reference_frames(
        settings,
        since=since,
        until=until,
        surface=surface,
        log_uri=log_uri,
        reference_since=reference_since,
        reference_until=reference_until,
        reference_offset=reference_offset,
    )
    return drift_report(frames, cards, options, refs, reference_frames=reference, baselines=baselines)


def variant_weights(variants: str) -> dict[str, dict[str, float]]:
    """``surface -> {variant: weight}`` from ``--variants`` (JSON text or @file) or the scorer's
    RANKER_VARIANTS / RANKER_VARIANTS_FILE."""
    from ranker.monitoring.abtest import load_variants

    text = (variants or "").strip()
    path = ""
    if text.startswith("@"):
        text, path = "", text[1:]
    elif not text:
        text, path = os.environ.get("RANKER_VARIANTS", ""), os.environ.get("RANKER_VARIANTS_FILE", "")
    if not text and not path:
        return {}
    experiments = load_variants(text, path, surfaces=("search", "recs"))
    return {s: {v.name: v.weight for v in e.variants} for s, e in experiments.items() if len(e.variants) > 1}


def run_online(settings, *, since, until, surface, log_uri, events, k, variants="", alpha=0.05, step=20):
    from ranker.monitoring.abstats import SequentialOptions
    from ranker.monitoring.live import live_events_dir, live_utility_dir, read_events, read_utility
    from ranker.monitoring.online import listing_prices, online_report, per_request, served_rankings

    weights = variant_weights(variants)
    sequential = SequentialOptions(alpha=alpha, step=step)
    frames, skipped = known_versions(
        settings, _frames(settings, since=since, until=until, surface=surface, log_uri=log_uri, include_degraded=True)
    )
    paths = [Path(p) for p in events] or [live_events_dir(settings)]
    table = read_events(paths)
    if table.empty:
        from ranker.errors import RankerError

        raise RankerError(
            f"no events in {', '.join(map(str, paths))}: run `ranker monitor live` against the "
            "scorer, or pass --events with your event log"
        )
    prices = listing_prices(settings.raw_dir / "listings.parquet")
    # The simulator's replay also wrote each served item's hidden utility; a real event log has none.
    utility = None if events else read_utility(live_utility_dir(settings))
    reqs = per_request(served_rankings(frames), table, k=k, prices=prices, utility=utility)
    report = online_report(reqs, k=k, weights=weights, sequential=sequential)
    return {**report, "skipped_versions": skipped}, reqs


def register(cli: click.Group) -> None:
    @cli.group("monitor")
    def monitor() -> None:
        """Monitoring of the served models: skew, drift, online metrics per variant, report.

        The scorer logs served feature vectors (RANKER_SERVED_LOG_SAMPLE, RANKER_SERVED_LOG_URI);
        these commands read that log. Exit 1 = a check failed, 2 = bad input.
        """

    @monitor.command("skew")
    @_common
    @click.option(
        "--threshold",
        default=0.01,
        show_default=True,
        type=float,
        help="Fail when a feature's mismatch rate is above this.",
    )
    @click.option("--rtol", default=1e-5, show_default=True, type=float, help="Relative tolerance of a match.")
    @click.option("--atol", default=1e-6, show_default=True, type=float, help="Absolute tolerance of a match.")
    @click.option(
        "--max-rows",
        default=20_000,
        show_default=True,
        type=int,
        help="Logged (request, item) rows recomputed per feature service (seeded sample).",
    )
    @click.pass_obj
    def skew(
        settings, since, until, surface, log_uri, as_json, textfile_dir, pushgateway, threshold, rtol, atol, max_rows
    ) -> None:
        """Recompute logged vectors with Feast get_historical_features at the logged times; compare
        feature by feature (mismatch rate, largest difference), worst first."""
        from ranker.monitoring.export import skew_metrics
        from ranker.monitoring.skew import skew_table

        report = run_skew(
            settings,
            since=since,
            until=until,
            surface=surface,
            log_uri=log_uri,
            threshold=threshold,
            rtol=rtol,
            atol=atol,
            max_rows=max_rows,
        )
        click.echo(_dump(report) if as_json else skew_table(report))
        _report_skipped(report["skipped_versions"])
        _export(settings, skew_metrics(report), "skew", textfile_dir, pushgateway)
        if not report["ok"]:
            click.echo(f"skew above {threshold:.2%} in: {', '.join(report['failed'])}", err=True)
            raise SystemExit(1)
        click.echo(f"skew ok: {report['rows']:,} rows, every feature within {threshold:.2%} mismatches", err=True)

    @monitor.command("drift")
    @_common
    @click.option(
        "--threshold",
        default=0.25,
        show_default=True,
        type=float,
        help="Feature PSI alert level when there is no healthy history to calibrate on.",
    )
    @click.option(
        "--min-threshold",
        default=0.1,
        show_default=True,
        type=float,
        help="No feature alerts below this PSI, whatever its healthy range.",
    )
    @click.option(
        "--history-days",
        default=7,
        show_default=True,
        type=int,
        help="Consecutive healthy days of the training set each feature's range comes from.",
    )
    @click.option(
        "--reference-offset",
        default="1d",
        show_default=True,
        help="Reference = the same window this long before (1d; 7d = same place in the week).",
    )
    @click.option("--reference-since", default=None, help="Explicit reference window start (overrides the offset).")
    @click.option("--reference-until", default=None, help="Explicit reference window end.")
    @click.option("--score-threshold", default=0.25, show_default=True, type=float, help="Score PSI alert level.")
    @click.option(
        "--against-training",
        is_flag=True,
        help="Without a served reference window, judge against the training set's last day anyway "
        "(its rows are the logging policy's impressions, not the scorer's candidates: expect false alarms).",
    )
    @click.option(
        "--min-rows",
        default=200,
        show_default=True,
        type=int,
        help="Model versions with fewer served rows are reported, not judged.",
    )
    @click.pass_obj
    def drift(
        settings,
        since,
        until,
        surface,
        log_uri,
        as_json,
        textfile_dir,
        pushgateway,
        threshold,
        min_threshold,
        history_days,
        reference_offset,
        reference_since,
        reference_until,
        score_threshold,
        against_training,
        min_rows,
    ) -> None:
        """PSI per feature between the served window and a like-with-like reference (the same window
        --reference-offset earlier in the served log), judged against each feature's own day-to-day
        range in healthy history; and the score PSI. Without a served reference the PSIs against the
        training set's last day are shown and not judged (unless --against-training)."""
        from ranker.monitoring.drift import drift_table, materialization_times
        from ranker.monitoring.export import drift_metrics

        report = run_drift(
            settings,
            since=since,
            until=until,
            surface=surface,
            log_uri=log_uri,
            threshold=threshold,
            score_threshold=score_threshold,
            min_rows=min_rows,
            min_threshold=min_threshold,
            history_days=history_days,
            reference_offset=reference_offset,
            reference_since=reference_since,
            reference_until=reference_until,
            against_training=against_training,
        )
        click.echo(_dump(report) if as_json else drift_table(report))
        _report_skipped(report["skipped_versions"])
        _export(
            settings,
            drift_metrics(report, materialized=materialization_times(settings)),
            "drift",
            textfile_dir,
            pushgateway,
        )
        if not report["ok"]:
            names = report["drifted"]
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            click.echo(
                f"drift beyond the healthy range in {len(names)} feature(s)/score(s): {', '.join(names[:10])}{more}",
                err=True,
            )
            raise SystemExit(1)
        unjudged = [m for m in report["models"] if not m["judged"]]
        if unjudged and len(unjudged) == len(report["models"]):
            click.echo(f"drift not judged: {unjudged[0]['unjudged_reason']}", err=True)
        elif unjudged:
            names = ", ".join(f"{m['model_name']} {m['version']}" for m in unjudged)
            click.echo(f"no drift in the judged versions; not judged: {names}", err=True)
        else:
            click.echo("no drift: every feature within its healthy range", err=True)

    @monitor.command("online")
    @_common
    @click.option(
        "--events",
        multiple=True,
        type=click.Path(exists=True),
        help="Event parquet files or folders (default data/live/events). Repeatable.",
    )
    @click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100), help="Cut-off of CTR and NDCG.")
    @click.option(
        "--variants",
        default="",
        help="The experiment's variants (JSON or @file) for the sample-ratio check; default the "
        "scorer's RANKER_VARIANTS / RANKER_VARIANTS_FILE.",
    )
    @click.option("--alpha", default=0.05, show_default=True, type=float, help="Type-I error of the sequential test.")
    @click.option(
        "--step",
        default=20,
        show_default=True,
        type=click.IntRange(1, 100_000),
        help="Requests between two looks of the sequential test.",
    )
    @click.pass_obj
    def online(
        settings, since, until, surface, log_uri, as_json, textfile_dir, pushgateway, events, k, variants, alpha, step
    ) -> None:
        """CTR@k, purchase rate, revenue per request and click NDCG@k per surface, model version and
        variant with user-level 95% intervals and guardrails; each variant against the control with
        the always-valid mSPRT decision and the sample-ratio check (exit 1 on a sample-ratio mismatch)."""
        from ranker.monitoring.export import online_metrics
        from ranker.monitoring.online import online_table

        report, _ = run_online(
            settings,
            since=since,
            until=until,
            surface=surface,
            log_uri=log_uri,
            events=events,
            k=k,
            variants=variants,
            alpha=alpha,
            step=step,
        )
        click.echo(_dump(report) if as_json else online_table(report))
        _report_skipped(report["skipped_versions"])
        _export(settings, online_metrics(report), "online", textfile_dir, pushgateway)
        if not report["ok"]:
            click.echo(
                f"SAMPLE RATIO MISMATCH on {', '.join(report['srm_failed'])}: the assignment is broken, "
                "the comparison is void; check the scorer's variants and what filters users per variant",
                err=True,
            )
            raise SystemExit(1)

    @monitor.command("ab-plan")
    @_common
    @click.option(
        "--events",
        multiple=True,
        type=click.Path(exists=True),
        help="Event parquet files or folders (default data/live/events). Repeatable.",
    )
    @click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100), help="Cut-off of CTR.")
    @click.option(
        "--metric",
        default="ctr",
        show_default=True,
        type=click.Choice(["ctr", "purchase", "revenue", "ndcg"]),
        help="Primary metric.",
    )
    @click.option(
        "--variant", default="control", show_default=True, help="Variant whose traffic measures the variance."
    )
    @click.option("--mde", required=True, type=float, help="Minimum detectable effect (relative, 0.05 = 5%).")
    @click.option("--absolute", is_flag=True, help="--mde is an absolute difference, not relative.")
    @click.option("--alpha", default=0.05, show_default=True, type=float)
    @click.option("--power", default=0.8, show_default=True, type=float)
    @click.pass_obj
    def ab_plan(
        settings,
        since,
        until,
        surface,
        log_uri,
        as_json,
        textfile_dir,
        pushgateway,
        events,
        k,
        metric,
        variant,
        mde,
        absolute,
        alpha,
        power,
    ) -> None:
        """Fixed-horizon plan: users (and requests) per variant to detect --mde, from the user-level
        variance measured on the served traffic. Read the A/B once, at that horizon."""
        from ranker.errors import RankerError
        from ranker.monitoring.abstats import fixed_horizon_plan

        if not mde > 0:
            raise RankerError("--mde must be > 0 (relative, e.g. 0.05 = 5%, or absolute with --absolute)")
        _, reqs = run_online(settings, since=since, until=until, surface=surface, log_uri=log_uri, events=events, k=k)
        column = {"ctr": f"ctr@{k}", "ndcg": f"ndcg@{k}"}.get(metric, metric)
        if column not in reqs:
            raise RankerError(f"metric {metric} is not measurable here (revenue needs data/raw/listings.parquet)")
        part = reqs[reqs.variant == variant]
        if part.empty:
            raise RankerError(
                f"no served requests of variant {variant!r}; variants here: {', '.join(sorted(reqs.variant.unique()))}"
            )
        plan = fixed_horizon_plan(
            part[column].to_numpy(dtype=float),
            part.user_id.to_numpy(),
            mde=mde,
            relative=not absolute,
            alpha=alpha,
            power=power,
        )
        plan = {**plan, "metric": column, "measured_variant": variant}
        if as_json:
            click.echo(_dump(plan))
            return
        size = f"{mde:.1%} relative ({plan['mde_absolute']:.4f})" if not absolute else f"{mde:.4f} absolute"
        click.echo(
            f"rule: {plan['rule']}; metric {column} mean {plan['metric_mean']:.4f} "
            f"(user-level variance {plan['user_variance']:.4g}, {plan['measured_users']} users measured)"
        )
        per_variant = plan["users_per_variant"]["control"]
        click.echo(
            f"to detect {size} at alpha {alpha} with power {power:.0%}: {per_variant:,} "
            f"users per variant ({plan['users_total']:,} in all, ~{plan['requests_total']:,} requests at "
            f"{plan['requests_per_user']:.1f} requests per user); read the result once, at that horizon"
        )

    @monitor.command("live")
    @click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The scorer to rank with.")
    @click.option("--requests", "n_requests", default=400, show_default=True, type=int, help="Requests to replay.")
    @click.option(
        "--last-days",
        default=1.0,
        show_default=True,
        type=float,
        help="Replay requests of this many last days of the simulated log.",
    )
    @click.option("--limit", default=None, type=click.IntRange(1, 1000), help="List length asked of the scorer.")
    @click.option(
        "--timestamp",
        default=None,
        type=float,
        help="Send this request time (unix s) as context.timestamp; default: now.",
    )
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.option(
        "--token", default=lambda: os.environ.get("RANKER_API_TOKEN", ""), help="Bearer token (env RANKER_API_TOKEN)."
    )
    @click.pass_obj
    def live(settings, url, n_requests, last_days, limit, timestamp, seed, as_json, token) -> None:
        """Act as the live marketplace: replay logged requests through the scorer, draw each user's
        engagement from the simulator's hidden utility and position bias, append it to data/live/events/."""
        from ranker.errors import RankerError
        from ranker.monitoring.live import LiveEnvironment, append_events, append_utility, http_sender

        env = LiveEnvironment(settings, last_days=last_days, seed=seed)
        result = env.run(http_sender(url, token=token or None), n_requests, request_ts=timestamp, limit=limit)
        if result["requests"] == 0:
            raise RankerError(
                f"the scorer at {url} answered none of {n_requests} requests; is it running (ranker serve)?"
            )
        path = append_events(settings, result["events"])
        append_utility(settings, result["utility"])
        counts = result["events"].event_type.value_counts().to_dict()
        if as_json:
            click.echo(
                _dump(
                    {
                        "requests": result["requests"],
                        "failed": result["failed"],
                        "by_variant": result["by_variant"],
                        "events": {k: int(v) for k, v in counts.items()},
                        "path": str(path) if path else None,
                    }
                )
            )
            return
        click.echo(
            f"replayed {result['requests']} requests ({result['failed']} failed) "
            f"by variant {result['by_variant']}; events {counts} -> {path}"
        )

    @monitor.command("report")
    @click.option("--since", default="24h", show_default=True, help=WINDOW_HELP)
    @click.option("--until", default=None, help="End of the window (exclusive).")
    @click.option("--log-uri", default="", help="Served log location.")
    @click.option("--events", multiple=True, type=click.Path(exists=True), help="Event files or folders.")
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=None,
        help="HTML file (default artifacts/monitoring/report.html).",
    )
    @click.option("--skip-skew", is_flag=True, help="Leave out the skew section (it queries Feast's offline store).")
    @click.option("--json", "as_json", is_flag=True, help="Print {path, drift_ok, skew_ok, online_ok, notes} as JSON.")
    @click.pass_obj
    def report(settings, since, until, log_uri, events, out, skip_skew, as_json) -> None:
        """One HTML page: drift per feature, skew table, online metrics per variant over time."""
        from ranker.errors import RankerError
        from ranker.monitoring import report as html_report
        from ranker.training.report import write_html
        from ranker.monitoring.online import timeline

        kw = dict(since=since, until=until, surface=None, log_uri=log_uri)
        notes = []
        drift = run_drift(settings, threshold=0.25, score_threshold=0.25, min_rows=200, **kw)
        skew = None
        if not skip_skew:
            skew = run_skew(settings, threshold=0.01, rtol=1e-5, atol=1e-6, max_rows=20_000, **kw)
        online, tl = None, None
        try:
            online, reqs = run_online(settings, events=events, k=10, **kw)
            tl = timeline(reqs, "ctr@10")
        except RankerError as exc:
            notes.append(f"online metrics: {exc}")
        notes.append(f"served-log window: since {since}" + (f" until {until}" if until else ""))
        path = write_html(
            out or settings.artifacts_dir / "monitoring" / "report.html",
            html_report.render(
                title="Ranking monitoring report", drift=drift, skew=skew, online=online, timeline=tl, notes=notes
            ),
        )
        if as_json:
            click.echo(
                _dump(
                    {
                        "path": str(path),
                        "drift_ok": drift["ok"],
                        "skew_ok": None if skew is None else skew["ok"],
                        "online_ok": None if online is None else online["ok"],
                        "notes": notes,
                    }
                )
            )
            return
        click.echo(str(path))
