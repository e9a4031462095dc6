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
    f = click.option("--log-uri", default="", help="Served log location (default RANKER_SERVED_LOG_URI or data/served_log).")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")(f)
    f = click.option("--textfile-dir", type=click.Path(path_type=Path), default=None,
                     help="Folder for the Prometheus textfile (default artifacts/monitoring/metrics).")(f)
    f = click.option("--pushgateway", default=lambda: os.environ.get("RANKER_PUSHGATEWAY_URL", ""),
                     help="Also push the gauges to this Pushgateway (env RANKER_PUSHGATEWAY_URL).")(f)
    return f


def _frames(settings, *, since, until, surface, log_uri, include_degraded=False):
    from ranker.monitoring.servedlog import log_store, parse_time, read_served_log

    start, end = parse_time(since, option="--since"), parse_time(until, option="--until")
    if start is not None and end is not None and end <= start:
        from ranker.errors import RankerError

        raise RankerError(f"--until {until} is not after --since {since}")
    return read_served_log(log_store(settings, log_uri), surface=surface, since=start, until=end,
                           include_degraded=include_degraded)


def _export(settings, registry, monitor: str, textfile_dir: Path | None, pushgateway: str) -> None:
    from ranker.monitoring.export import export

    where = export(registry, monitor, textfile_dir=textfile_dir or settings.artifacts_dir / "monitoring" / "metrics",
                   pushgateway=pushgateway or None)
    click.echo(f"prometheus: {', '.join(where)}", err=True)


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))


def run_skew(settings, *, since, until, surface, log_uri, threshold, rtol, atol, max_rows):
    from ranker.monitoring.skew import SkewOptions, skew_report

    options = SkewOptions(threshold=threshold, rtol=rtol, atol=atol, max_rows=max_rows)
    return skew_report(settings, _frames(settings, since=since, until=until, surface=surface, log_uri=log_uri), options)


def run_drift(settings, *, since, until, surface, log_uri, threshold, score_threshold, min_rows):
    from ranker.monitoring.drift import DriftOptions, cards_for, drift_report, reference_scores
    from ranker.registry import Registry

    frames = _frames(settings, since=since, until=until, surface=surface, log_uri=log_uri)
    registry = Registry.from_settings(settings)
    cards = cards_for(frames, registry)
    refs = {key: reference_scores(registry, *key, card) for key, card in cards.items()}
    return drift_report(frames, cards, DriftOptions(threshold=threshold, score_threshold=score_threshold,
                                                    min_rows=min_rows), refs)


def run_online(settings, *, since, until, surface, log_uri, events, k):
    from ranker.monitoring.live import live_events_dir, read_events
    from ranker.monitoring.online import online_report, per_request, served_rankings

    frames = _frames(settings, since=since, until=until, surface=surface, log_uri=log_uri, include_degraded=True)
    paths = [Path(p) for p in events] or [live_events_dir(settings)]
    table = read_events(paths)
    if table.empty:
        from ranker.errors import RankerError

        raise RankerError(f"no events in {', '.join(map(str, paths))}: run `ranker monitor live` against the "
                          "scorer, or pass --events with your event log")
    reqs = per_request(served_rankings(frames), table, k=k)
    return online_report(reqs, k=k), reqs


def register(cli: click.Group) -> None:
    @cli.group("monitor")
    def monitor() -> None:
        """Monitoring of the served models: skew, drift, online metrics per variant, report.

        The scorer logs served feature vectors (RANKER_SERVED_LOG_SAMPLE, RANKER_SERVED_LOG_URI);
        these commands read that log. Exit 1 = a check failed, 2 = bad input.
        """

    @monitor.command("skew")
    @_common
    @click.option("--threshold", default=0.01, show_default=True, type=float,
                  help="Fail when a feature's mismatch rate is above this.")
    @click.option("--rtol", default=1e-5, show_default=True, type=float, help="Relative tolerance of a match.")
    @click.option("--atol", default=1e-6, show_default=True, type=float, help="Absolute tolerance of a match.")
    @click.option("--max-rows", default=20_000, show_default=True, type=int,
                  help="Logged (request, item) rows recomputed per feature service (seeded sample).")
    @click.pass_obj
    def skew(settings, since, until, surface, log_uri, as_json, textfile_dir, pushgateway, threshold, rtol, atol,
             max_rows) -> None:
        """Recompute logged vectors with Feast get_historical_features at the logged times; compare
        feature by feature (mismatch rate, largest difference), worst first."""
        from ranker.monitoring.export import skew_metrics
        from ranker.monitoring.skew import skew_table

        report = run_skew(settings, since=since, until=until, surface=surface, log_uri=log_uri, threshold=threshold,
                          rtol=rtol, atol=atol, max_rows=max_rows)
        click.echo(_dump(report) if as_json else skew_table(report))
        _export(settings, skew_metrics(report), "skew", textfile_dir, pushgateway)
        if not report["ok"]:
            click.echo(f"skew above {threshold:.2%} in: {', '.join(report['failed'])}", err=True)
            raise SystemExit(1)
        click.echo(f"skew ok: {report['rows']:,} rows, every feature within {threshold:.2%} mismatches", err=True)

    @monitor.command("drift")
    @_common
    @click.option("--threshold", default=0.25, show_default=True, type=float, help="Feature PSI alert level.")
    @click.option("--score-threshold", default=0.25, show_default=True, type=float, help="Score PSI alert level.")
    @click.option("--min-rows", default=200, show_default=True, type=int,
                  help="Model versions with fewer served rows are reported, not judged.")
    @click.pass_obj
    def drift(settings, since, until, surface, log_uri, as_json, textfile_dir, pushgateway, threshold,
              score_threshold, min_rows) -> None:
        """PSI per feature between the model card's training distribution and the served window,
        and of the scores against the model's test-split scores."""
        from ranker.monitoring.drift import drift_table
        from ranker.monitoring.export import drift_metrics

        from ranker.monitoring.drift import materialization_times

        report = run_drift(settings, since=since, until=until, surface=surface, log_uri=log_uri, threshold=threshold,
                           score_threshold=score_threshold, min_rows=min_rows)
        click.echo(_dump(report) if as_json else drift_table(report))
        _export(settings, drift_metrics(report, materialized=materialization_times(settings)), "drift", textfile_dir,
                pushgateway)
        if not report["ok"]:
            names = report["drifted"]
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            click.echo(f"drift above the threshold in {len(names)} feature(s)/score(s): {', '.join(names[:10])}{more}",
                       err=True)
            raise SystemExit(1)

    @monitor.command("online")
    @_common
    @click.option("--events", multiple=True, type=click.Path(exists=True),
                  help="Event parquet files or folders (default data/live/events). Repeatable.")
    @click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100), help="Cut-off of CTR and NDCG.")
    @click.pass_obj
    def online(settings, since, until, surface, log_uri, as_json, textfile_dir, pushgateway, events, k) -> None:
        """CTR@k, purchase rate and click NDCG@k per surface, model version and variant (95% intervals),
        and each variant against the control."""
        from ranker.monitoring.export import online_metrics
        from ranker.monitoring.online import online_table

        report, _ = run_online(settings, since=since, until=until, surface=surface, log_uri=log_uri, events=events, k=k)
        click.echo(_dump(report) if as_json else online_table(report))
        _export(settings, online_metrics(report), "online", textfile_dir, pushgateway)

    @monitor.command("live")
    @click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The scorer to rank with.")
    @click.option("--requests", "n_requests", default=400, show_default=True, type=int, help="Requests to replay.")
    @click.option("--last-days", default=1.0, show_default=True, type=float,
                  help="Replay requests of this many last days of the simulated log.")
    @click.option("--limit", default=None, type=click.IntRange(1, 1000), help="List length asked of the scorer.")
    @click.option("--timestamp", default=None, type=float,
                  help="Send this request time (unix s) as context.timestamp; default: now.")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--token", default=lambda: os.environ.get("RANKER_API_TOKEN", ""), help="Bearer token (env RANKER_API_TOKEN).")
    @click.pass_obj
    def live(settings, url, n_requests, last_days, limit, timestamp, seed, token) -> None:
        """Act as the live marketplace: replay logged requests through the scorer, draw each user's
        engagement from the simulator's hidden utility and position bias, append it to data/live/events/."""
        from ranker.errors import RankerError
        from ranker.monitoring.live import LiveEnvironment, append_events, http_sender

        env = LiveEnvironment(settings, last_days=last_days, seed=seed)
        result = env.run(http_sender(url, token=token or None), n_requests, request_ts=timestamp, limit=limit)
        if result["requests"] == 0:
            raise RankerError(f"the scorer at {url} answered none of {n_requests} requests; is it running (ranker serve)?")
        path = append_events(settings, result["events"])
        counts = result["events"].event_type.value_counts().to_dict()
        click.echo(f"replayed {result['requests']} requests ({result['failed']} failed) "
                   f"by variant {result['by_variant']}; events {counts} -> {path}")

    @monitor.command("report")
    @click.option("--since", default="24h", show_default=True, help=WINDOW_HELP)
    @click.option("--until", default=None, help="End of the window (exclusive).")
    @click.option("--log-uri", default="", help="Served log location.")
    @click.option("--events", multiple=True, type=click.Path(exists=True), help="Event files or folders.")
    @click.option("--out", type=click.Path(path_type=Path), default=None,
                  help="HTML file (default artifacts/monitoring/report.html).")
    @click.option("--skip-skew", is_flag=True, help="Leave out the skew section (it queries Feast's offline store).")
    @click.pass_obj
    def report(settings, since, until, log_uri, events, out, skip_skew) -> None:
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
        path = write_html(out or settings.artifacts_dir / "monitoring" / "report.html",
                          html_report.render(title="Ranking monitoring report", drift=drift, skew=skew,
                                             online=online, timeline=tl, notes=notes))
        click.echo(str(path))
