"""The evaluation of a model as a plain-text table (for the CLI) and as one self-contained HTML file
(plots inlined as base64 PNG, no external assets: it can be mailed, attached to a ticket or opened
from the model registry offline).

The evaluation dict
-------------------
One JSON-serialisable dict, produced by the evaluation step and stored as-is in the model card
(``card.json``). Only ``metrics.test`` is required; every other part is optional, and a ranker that
is absent (no ``oracle`` on real logs) is simply left out of tables and plots. Numbers may be
``None`` or NaN where undefined (e.g. a slice without a relevant item); they render as "-".
Rankers are listed in the order of ``metrics.test``, with ``model`` first.

::

    {
      "model": {"name": str, "version": str, "feature_service": str},
      "metrics": {
        "test": {                                 # ranker name -> mean metrics on the test split,
          "model": {                              # as returned by metrics.mean_metrics
            "ndcg@5": float, "ndcg@10": float, "ndcg@20": float,
            "mrr": float, "map": float, "recall@10": float,
            "groups": int, "groups_with_relevant": int,
          },
          "random": {...}, "popularity": {...}, "logged": {...}, "oracle": {...},
        },
        "slices": {                               # slice name -> ranker -> NDCG@10 and its interval
          "surface=search": {                     # (metrics.bootstrap_mean_ci over the slice's groups)
            "model": {"ndcg@10": float, "low": float, "high": float, "groups": int},
            "logged": {...}, ...
          },
          "new_user": {...}, ...
        },
        "ci": {                                   # "{a}-vs-{b}" -> metrics.paired_bootstrap_ci(a, b)
          "model-vs-random": {"metric": "ndcg@10", "diff": float, "low": float, "high": float,
                              "p_value": float, "n": int, "level": 0.95},
          ...
        },
        "true_utility": {"model": float, ..., "oracle": 1.0},   # simulated data only: NDCG@10
                                                  # against the hidden utility
                                                  # (metrics.graded_ndcg_against_utility, mean)
        "oracle_fraction": float,                 # metrics.oracle_fraction(true_utility): share of
                                                  # the random -> oracle gap the model closes
      },
      "feature_importance": {"feature_name": float, ...},  # total gain per feature
      "score_distributions": {"model": [float, ...], ...},  # a sample of each ranker's scores
      "ndcg_curve": {"model": [float, ...], ...},           # mean NDCG@1..@20 (metrics.ndcg_curve)
      "full_catalogue": {                         # optional: ranker.training.catalogue.evaluate_catalogue
        "at": str, "listings_live": int, "test_users": int, "users_scored": int, ...,
        "rankers": {"model": {"ndcg@10": float, "recall@10": float, "recall@50": float,
                              "ndcg@10_ci": [low, high], "users": int}, "popularity": {...}, ...},
        "ci": {"model-vs-best_popularity": {"baseline": str, "diff", "low", "high", ...},
               "model-vs-ease": {...}},
      },
    }

In ``ci`` entries ``metric`` defaults to ``ndcg@10`` and ``level`` to 0.95 when absent.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Keys of a ranker's test metrics that are counts, not metrics: shown once, not as metric columns.
COUNT_KEYS = ("groups", "groups_with_relevant")
HEADLINE_METRIC = "ndcg@10"
TOP_FEATURES = 25


# --------------------------------------------------------------------------------------------------
# Reading the evaluation dict


def _number(value: Any, where: str) -> float | None:
    """A finite float, or None for missing/undefined values (None, NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ValueError(f"evaluation{where} must be a number or null; got {value!r}")
    number = float(value)
    return number if math.isfinite(number) else None


def _mapping(evaluation: Mapping, *keys: str, required: bool = False) -> Mapping:
    node: Any = evaluation
    path = ""
    for key in keys:
        path += f"[{key!r}]"
        if not isinstance(node, Mapping) or key not in node or node[key] is None:
            if required:
                raise ValueError(f"evaluation{path} is missing; see the evaluation contract in ranker.training.report")
            return {}
        node = node[key]
    if not isinstance(node, Mapping):
        raise ValueError(f"evaluation{path} must be a mapping; got {type(node).__name__}")
    return node


def _test_metrics(evaluation: Mapping) -> Mapping:
    if not isinstance(evaluation, Mapping):
        raise ValueError(f"evaluation must be a mapping; got {type(evaluation).__name__}")
    test = _mapping(evaluation, "metrics", "test", required=True)
    if not test:
        raise ValueError("evaluation['metrics']['test'] has no ranker; it needs at least the model's metrics")
    for ranker, values in test.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"evaluation['metrics']['test'][{ranker!r}] must map metric names to numbers")
    return test


def _ranker_order(names: Sequence[str]) -> list[str]:
    """``model`` first, then the others in their given order."""
    return sorted(dict.fromkeys(names), key=lambda name: name != "model")


def _metric_names(test: Mapping) -> list[str]:
    names: dict[str, None] = {}
    for values in test.values():
        names.update((key, None) for key in values if key not in COUNT_KEYS)
    return list(names)


def _ci_entries(evaluation: Mapping) -> dict[tuple[str, str], Mapping]:
    """``{(a, b): entry}`` from the ``a-vs-b`` keys of ``metrics.ci``."""
    out = {}
    for key, entry in _mapping(evaluation, "metrics", "ci").items():
        first, sep, second = str(key).partition("-vs-")
        if not sep or not isinstance(entry, Mapping):
            raise ValueError(f"evaluation['metrics']['ci'][{key!r}] must be keyed 'a-vs-b' and map to a CI dict")
        out[(first, second)] = entry
    return out


# --------------------------------------------------------------------------------------------------
# Tables


def _fmt(value: float | None, *, signed: bool = False, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_count(value: Any, where: str) -> str:
    number = _number(value, where)
    return "-" if number is None else f"{int(number):,}"


def _fmt_ci(entry: Mapping | None, where: str) -> str:
    if not entry:
        return "-"
    diff = _number(entry.get("diff"), f"{where}['diff']")
    low = _number(entry.get("low"), f"{where}['low']")
    high = _number(entry.get("high"), f"{where}['high']")
    if diff is None:
        return "-"
    return f"{_fmt(diff, signed=True)} [{_fmt(low, signed=True)}, {_fmt(high, signed=True)}]"


def _summary_rows(evaluation: Mapping) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: rankers x metrics, true utility, model-vs-ranker CI."""
    test = _test_metrics(evaluation)
    metric_names = _metric_names(test)
    true_utility = _mapping(evaluation, "metrics", "true_utility")
    ci = _ci_entries(evaluation)
    model_cis = {b: entry for (a, b), entry in ci.items() if a == "model"}
    ci_metric = next((str(e.get("metric", HEADLINE_METRIC)) for e in model_cis.values()), HEADLINE_METRIC)
    level = next((_number(e.get("level"), "['level']") for e in model_cis.values()), None) or 0.95

    header = ["ranker", *metric_names]
    if true_utility:
        header.append(f"true {HEADLINE_METRIC}")
    if model_cis:
        header.append(f"model - ranker {ci_metric} [{level:.0%} CI]")
    header.append("groups")

    rows = []
    for ranker in _ranker_order(list(test)):
        values = test[ranker]
        where = f"['metrics']['test'][{ranker!r}]"
        row = [ranker] + [_fmt(_number(values.get(m), f"{where}[{m!r}]")) for m in metric_names]
        if true_utility:
            row.append(_fmt(_number(true_utility.get(ranker), f"['metrics']['true_utility'][{ranker!r}]")))
        if model_cis:
            row.append(_fmt_ci(model_cis.get(ranker), f"['metrics']['ci']['model-vs-{ranker}']"))
        row.append(_fmt_count(values.get("groups"), f"{where}['groups']"))
        rows.append(row)
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]

    # Names left-aligned, numbers right-aligned so decimal points line up.
    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def evaluation_table(evaluation: Mapping) -> str:
    """The evaluation as plain text for the CLI: rankers as rows, the test metrics as columns, the
    true-utility NDCG@10 (simulated data) and the model-vs-ranker interval from ``metrics.ci``.

    Args:
        evaluation: the evaluation dict described in this module's docstring.
    """
    header, rows = _summary_rows(evaluation)
    model = _mapping(evaluation, "model")
    test = _test_metrics(evaluation)
    lines = []
    if model:
        lines.append(
            f"model {model.get('name', '?')} {model.get('version', '')}".rstrip()
            + (f" (feature service {model['feature_service']})" if model.get("feature_service") else "")
        )
    counts = test.get("model") or next(iter(test.values()))
    groups, with_relevant = counts.get("groups"), counts.get("groups_with_relevant")
    if groups is not None:
        engaged = ""
        if with_relevant is not None:
            engaged = f", {_fmt_count(with_relevant, '[groups_with_relevant]')} with an engagement"
        lines.append(
            f"test set: {_fmt_count(groups, '[groups]')} requests{engaged}; means over requests with an engagement"
        )
    lines.append(_text_table(header, rows))
    fraction = _number(_mapping(evaluation, "metrics").get("oracle_fraction"), "['metrics']['oracle_fraction']")
    if fraction is not None:
        lines.append(f"oracle fraction: {fraction:.3f} of the random -> oracle gap in true {HEADLINE_METRIC}")
    ceiling = _number(_mapping(evaluation, "metrics").get("ceiling_fraction"), "['metrics']['ceiling_fraction']")
    if ceiling is not None:
        lines.append(f"ceiling: {ceiling:.3f} (a ranker knowing every hidden parameter, not the impression's noise)")
    return "\n".join(lines)


FULL_CATALOGUE_METRICS = ("ndcg@10", "recall@10", "recall@50")


def _full_catalogue_rows(fc: Mapping) -> tuple[list[str], list[list[str]]]:
    """Rankers as rows: NDCG@10 (with its bootstrap interval), Recall@10, Recall@50."""
    header = ["ranker", *FULL_CATALOGUE_METRICS, "ndcg@10 95% CI", "users"]
    rows = []
    for name, values in _mapping(fc, "rankers").items():
        where = f"['full_catalogue']['rankers']['{name}']"
        ci = values.get("ndcg@10_ci") or [None, None]
        rows.append(
            [
                str(name),
                *(_fmt(_number(values.get(m), f"{where}['{m}']")) for m in FULL_CATALOGUE_METRICS),
                f"[{_fmt(_number(ci[0], where))}, {_fmt(_number(ci[1], where))}]",
                _fmt_count(values.get("users"), f"{where}['users']"),
            ]
        )
    return header, rows


def _ci_row(label: str, entry: Mapping, where: str) -> list[str]:
    """One row of an interval table: the comparison, metric, difference with its interval, p, count."""
    return [
        label,
        str(entry.get("metric", HEADLINE_METRIC)),
        _fmt(_number(entry.get("diff"), f"{where}['diff']"), signed=True),
        _fmt(_number(entry.get("low"), f"{where}['low']"), signed=True),
        _fmt(_number(entry.get("high"), f"{where}['high']"), signed=True),
        _fmt(_number(entry.get("p_value"), f"{where}['p_value']"), digits=3),
        _fmt_count(entry.get("n"), f"{where}['n']"),
    ]


def _full_catalogue_ci_rows(fc: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "metric", "difference", "low", "high", "p (diff <= 0)", "users"]
    rows = []
    for key, entry in _mapping(fc, "ci").items():
        where = f"['full_catalogue']['ci']['{key}']"
        rows.append(_ci_row(f"model vs {entry.get('baseline', key.split('-vs-', 1)[-1])}", entry, where))
    return header, rows


def _full_catalogue_caption(fc: Mapping) -> str:
    sampled = "a seeded sample of " if fc.get("users_sampled") else ""
    ease = _mapping(fc, "ease")
    return (
        f"full catalogue at {fc.get('at')}: {_fmt_count(fc.get('listings_live'), '[listings_live]')} live listings, "
        f"{sampled}{_fmt_count(fc.get('users_scored'), '[users_scored]')} of "
        f"{_fmt_count(fc.get('test_users'), '[test_users]')} test users "
        f"(seed {fc.get('user_sample_seed')}); graded relevance; EASE lambda {ease.get('lambda')} on the "
        f"top {ease.get('top_n')} listings"
    )


def full_catalogue_table(evaluation: Mapping) -> str:
    """The full-catalogue evaluation (rankers, then the paired intervals) as plain text; empty when
    the evaluation has none."""
    fc = _mapping(evaluation, "full_catalogue")
    if not fc:
        return ""
    lines = [_full_catalogue_caption(fc), _text_table(*_full_catalogue_rows(fc))]
    ci_header, ci_rows = _full_catalogue_ci_rows(fc)
    if ci_rows:
        lines.append(_text_table(ci_header, ci_rows))
    ratio = _number(fc.get("model_over_best_popularity"), "['full_catalogue']['model_over_best_popularity']")
    if ratio is not None:
        lines.append(f"model / best popularity ({fc.get('best_popularity')}) NDCG@10: {ratio:.3f}")
    return "\n".join(lines)


def html_table(header: list, rows: list[list]) -> str:
    """An HTML table of the cells' text, escaped (shared with the monitoring report)."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci_rows(evaluation: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "metric", "difference", "low", "high", "p (diff <= 0)", "groups"]
    rows = []
    for (a, b), entry in _ci_entries(evaluation).items():
        where = f"['metrics']['ci']['{a}-vs-{b}']"
        rows.append(_ci_row(f"{a} vs {b}", entry, where))
    return header, rows


def _slice_values(evaluation: Mapping) -> tuple[list[str], list[str], dict[tuple[str, str], tuple]]:
    """Slice names, rankers, and ``(slice, ranker) -> (value, low, high, groups)``."""
    slices = _mapping(evaluation, "metrics", "slices")
    values: dict[tuple[str, str], tuple] = {}
    rankers: list[str] = []
    for slice_name, by_ranker in slices.items():
        if not isinstance(by_ranker, Mapping):
            raise ValueError(f"evaluation['metrics']['slices'][{slice_name!r}] must map ranker names to values")
        for ranker, entry in by_ranker.items():
            where = f"['metrics']['slices'][{slice_name!r}][{ranker!r}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"evaluation{where} must be a mapping with {HEADLINE_METRIC}, low, high, groups")
            rankers.append(ranker)
            values[(slice_name, ranker)] = (
                _number(entry.get(HEADLINE_METRIC), f"{where}[{HEADLINE_METRIC!r}]"),
                _number(entry.get("low"), f"{where}['low']"),
                _number(entry.get("high"), f"{where}['high']"),
                entry.get("groups"),
            )
    return list(slices), _ranker_order(rankers), values


def _slice_rows(evaluation: Mapping) -> tuple[list[str], list[list[str]]]:
    slices, rankers, values = _slice_values(evaluation)
    rows = []
    for slice_name in slices:
        row = [slice_name]
        for ranker in rankers:
            value, low, high, groups = values.get((slice_name, ranker), (None, None, None, None))
            cell = _fmt(value)
            if value is not None and low is not None and high is not None:
                cell += f" [{_fmt(low)}, {_fmt(high)}]"
            row.append(cell)
        first = next((values[(slice_name, r)][3] for r in rankers if (slice_name, r) in values), None)
        row.append(_fmt_count(first, f"['metrics']['slices'][{slice_name!r}]['groups']"))
        rows.append(row)
    return ["slice", *rankers, "groups"], rows


# --------------------------------------------------------------------------------------------------
# Plots: matplotlib's object API (Figure + Agg canvas) rather than pyplot, so no global backend is
# switched and nothing is left open in pyplot's figure registry; it works headless and in threads.


def _colours(rankers: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % palette.N) for i, name in enumerate(rankers)}


def png_base64(figure) -> str:
    """The figure as a base64 PNG (shared with the monitoring report)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_feature_importance(importance: Mapping) -> str | None:
    from matplotlib.figure import Figure

    gains_by_name = {str(name): _number(gain, f"['feature_importance'][{name!r}]") for name, gain in importance.items()}
    known = [(name, gain) for name, gain in gains_by_name.items() if gain is not None]
    pairs = sorted(known, key=lambda pair: pair[1], reverse=True)[:TOP_FEATURES]
    if not pairs:
        return None
    names, gains = zip(*reversed(pairs), strict=False)  # largest at the top of a horizontal bar chart
    figure = Figure(figsize=(7, 1.0 + 0.28 * len(names)))
    axes = figure.add_subplot()
    axes.barh(range(len(names)), gains, color="#4c72b0")
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("total gain")
    axes.set_title(f"Feature importance (top {len(names)})")
    return png_base64(figure)


def _plot_slices(evaluation: Mapping, colours: Mapping[str, Any]) -> str | None:
    from matplotlib.figure import Figure

    slices, rankers, values = _slice_values(evaluation)
    if not values:
        return None
    figure = Figure(figsize=(max(6.0, 1.1 * len(slices) + 2), 4.2))
    axes = figure.add_subplot()
    width = 0.8 / max(len(rankers), 1)
    for j, ranker in enumerate(rankers):
        xs, ys, below, above = [], [], [], []
        for i, slice_name in enumerate(slices):
            value, low, high, _ = values.get((slice_name, ranker), (None, None, None, None))
            if value is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))  # dodge rankers side by side within a slice
            ys.append(value)
            below.append(value - low if low is not None else 0.0)
            above.append(high - value if high is not None else 0.0)
        if xs:
            axes.errorbar(xs, ys, yerr=[below, above], fmt="o", capsize=3, label=ranker, color=colours.get(ranker))
    axes.set_xticks(range(len(slices)), slices, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel(HEADLINE_METRIC)
    axes.set_title(f"{HEADLINE_METRIC} by slice (bootstrap interval)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return png_base64(figure)


def _plot_score_distributions(distributions: Mapping, colours: Mapping[str, Any]) -> str | None:
    from matplotlib.figure import Figure

    samples = {}
    for ranker in _ranker_order(list(distributions)):
        parsed = [_number(v, f"['score_distributions'][{ranker!r}]") for v in distributions[ranker] or []]
        scores = [v for v in parsed if v is not None]
        if scores:
            samples[ranker] = scores
    if not samples:
        return None
    # One panel per ranker: their scores live on unrelated scales (raw margins, counts, uniforms).
    columns = min(3, len(samples))
    rows = math.ceil(len(samples) / columns)
    figure = Figure(figsize=(3.6 * columns, 2.6 * rows))
    for i, (ranker, scores) in enumerate(samples.items()):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.hist(scores, bins=50, color=colours.get(ranker))
        axes.set_title(f"{ranker} (n={len(scores):,})", fontsize=9)
        axes.tick_params(labelsize=7)
    figure.suptitle("Score distributions")
    figure.tight_layout()
    return png_base64(figure)


def _plot_ndcg_curves(curves: Mapping, colours: Mapping[str, Any]) -> str | None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.add_subplot()
    drawn = False
    for ranker in _ranker_order(list(curves)):
        points = [(k + 1, _number(v, f"['ndcg_curve'][{ranker!r}]")) for k, v in enumerate(curves[ranker] or [])]
        points = [(k, v) for k, v in points if v is not None]
        if points:
            ks, vs = zip(*points, strict=False)
            axes.plot(ks, vs, marker=".", label=ranker, color=colours.get(ranker))
            drawn = True
    if not drawn:
        return None
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("k")
    axes.set_ylabel("mean NDCG@k")
    axes.set_title("NDCG@k")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return png_base64(figure)


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _image(png: str | None, alt: str) -> str:
    if png is None:
        return f'<p class="note">No data for "{html.escape(alt)}" in this evaluation.</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def render_html(evaluation: Mapping, *, title: str) -> str:
    """The report as one HTML string (what :func:`write_report` writes).

    Args:
        evaluation: the evaluation dict described in this module's docstring.
        title: the page title and heading.
    """
    test = _test_metrics(evaluation)
    model = _mapping(evaluation, "model")
    metrics = _mapping(evaluation, "metrics")
    rankers = _ranker_order(
        [*test, *_mapping(evaluation, "score_distributions"), *_mapping(evaluation, "ndcg_curve")]
        + _slice_values(evaluation)[1]
    )
    colours = _colours(rankers)

    parts = [f"<h1>{html.escape(title)}</h1>"]
    if model:
        facts = [f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}" for k, v in model.items()]
        parts.append(f"<p>{' &middot; '.join(facts)}</p>")
    fraction = _number(metrics.get("oracle_fraction"), "['metrics']['oracle_fraction']")
    if fraction is not None:
        parts.append(
            f"<p>Oracle fraction: <b>{fraction:.3f}</b> of the gap between the random ranker and the oracle "
            f"in true-utility {HEADLINE_METRIC} is closed by the model.</p>"
        )
    ceiling = _number(metrics.get("ceiling_fraction"), "['metrics']['ceiling_fraction']")
    if ceiling is not None:
        parts.append(
            f"<p>Ceiling: <b>{ceiling:.3f}</b>, what a ranker that knew every hidden parameter of the simulator "
            "(but not the noise of each impression) would close.</p>"
        )
    parts.append(
        _section(
            "Test metrics",
            html_table(*_summary_rows(evaluation))
            + '<p class="note">Means over requests with at least one engagement; ties in score averaged.</p>',
        )
    )
    ci_header, ci_rows = _ci_rows(evaluation)
    if ci_rows:
        parts.append(
            _section(
                "Paired bootstrap intervals",
                html_table(ci_header, ci_rows)
                + '<p class="note">p is the share of bootstrap mean differences &le; 0.</p>',
            )
        )
    slice_header, slice_rows = _slice_rows(evaluation)
    if slice_rows:
        parts.append(_section(f"{HEADLINE_METRIC} by slice", html_table(slice_header, slice_rows)))
    fc = _mapping(evaluation, "full_catalogue")
    if fc:
        ci_header, ci_rows = _full_catalogue_ci_rows(fc)
        parts.append(
            _section(
                "Full catalogue",
                f'<p class="note">{html.escape(_full_catalogue_caption(fc))}; every live listing minus the '
                "user's earlier engagements is ranked.</p>"
                + html_table(*_full_catalogue_rows(fc))
                + (html_table(ci_header, ci_rows) if ci_rows else ""),
            )
        )

    plots = [
        ("Feature importance", _plot_feature_importance(_mapping(evaluation, "feature_importance"))),
        (f"{HEADLINE_METRIC} by slice", _plot_slices(evaluation, colours)),
        ("Score distributions", _plot_score_distributions(_mapping(evaluation, "score_distributions"), colours)),
        ("NDCG@k", _plot_ndcg_curves(_mapping(evaluation, "ndcg_curve"), colours)),
    ]
    parts.append(_section("Plots", "\n".join(_image(png, name) for name, png in plots)))

    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def write_report(evaluation: Mapping, *, path: Path, title: str) -> Path:
    """Write the evaluation as one self-contained HTML file and return its path.

    Args:
        evaluation: the evaluation dict described in this module's docstring.
        path: the HTML file to write; parent folders are created. Written atomically, so a failed
            run never leaves a half-written report behind.
        title: the page title and heading, e.g. ``"search_ranker 2024-06-01 evaluation"``.
    """
    return write_html(path, render_html(evaluation, title=title))


def write_html(path: Path, document: str) -> Path:
    """Write ``document`` to ``path`` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(document, encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = [
    "evaluation_table",
    "full_catalogue_table",
    "html_table",
    "png_base64",
    "render_html",
    "write_html",
    "write_report",
]
