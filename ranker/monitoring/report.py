"""``ranker monitor report``: one self-contained HTML page (plots inlined as PNG) with drift per
feature, the skew table and the online metrics per variant over time. Any part may be missing
(e.g. no engagement logged yet); the page says so instead of failing."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from ranker.training.report import html_table, png_base64

TOP = 15


def _png(figure) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{png_base64(figure)}">'


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _drift_section(drift: dict | None) -> str:
    if not drift:
        return "<p>No drift report (no served rows in the window).</p>"
    from matplotlib.figure import Figure

    parts = []
    for m in drift["models"]:
        feats = m["features"][:TOP]
        title = f"{m['model_name']} {m['version']}: {m['rows']:,} served rows, score PSI {_fmt(m['score_psi'], '.3f')}"
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if not m["judged"]:
            parts.append(f"<p>Shown, not judged: {html.escape(m.get('unjudged_reason') or 'too few rows')}.</p>")
        if feats:
            names = [f["feature"] for f in reversed(feats)]
            values = [f["psi"] for f in reversed(feats)]
            drifting = [f.get("verdict") == "drift" for f in reversed(feats)]
            figure = Figure(figsize=(7, 1.0 + 0.28 * len(names)))
            axes = figure.add_subplot()
            colours = ["#c44e52" if d else "#4c72b0" for d in drifting]
            axes.barh(range(len(names)), values, color=colours)
            axes.scatter(
                [f.get("threshold", drift["threshold"]) for f in reversed(feats)],
                range(len(names)),
                marker="|",
                color="#c44e52",
                s=80,
                label="threshold (healthy range)",
            )
            axes.set_yticks(range(len(names)), names, fontsize=8)
            axes.set_xlabel(f"PSI vs {m.get('reference', 'training')} (red tick: the feature's threshold)")
            axes.set_title(f"Drift per feature (top {len(names)})")
            parts.append(_png(figure))
    names = drift["drifted"]
    more = f" and {len(names) - 12} more" if len(names) > 12 else ""
    verdict = (
        "no drift (every feature within its healthy range)"
        if drift["ok"]
        else f"drift in {len(names)}: " + ", ".join(names[:12]) + more
    )
    return f"<p><b>{html.escape(verdict)}</b></p>" + "".join(parts)


def _skew_section(skew: dict | None) -> str:
    if not skew:
        return "<p>No skew report.</p>"
    rows = []
    for f in skew["features"][:TOP]:
        ex = f["example"]
        rows.append(
            [
                f["feature"],
                f["feature_service"],
                f"{f['mismatch_rate']:.2%}",
                f["mismatches"],
                _fmt(f["max_abs_diff"], ".4g") if f["max_abs_diff"] is not None else "inf (missing on one side)",
                f"{ex.get('item_id')}: {ex.get('served')} -> {ex.get('recomputed')}" if ex else "",
            ]
        )
    verdict = f"{skew['rows']:,} rows of {skew['requests']:,} requests recomputed; " + (
        "no feature above the threshold" if skew["ok"] else "skewed: " + ", ".join(skew["failed"])
    )
    return f"<p><b>{html.escape(verdict)}</b> (threshold {skew['threshold']:.2%} mismatches)</p>" + html_table(
        ["feature", "service", "mismatch rate", "mismatches", "max |diff|", "example (served -> Feast)"], rows
    )


def _online_section(online: dict | None, timeline: pd.DataFrame | None) -> str:
    if not online:
        return "<p>No online metrics (no engagement joined yet).</p>"
    k = online["k"]
    rows = []
    for g in online["groups"]:
        rows.append(
            [g["surface"], g["variant"], g["model_version"], g["requests"]]
            + [f"{_fmt(g[m]['mean'])} [{_fmt(g[m]['low'])}, {_fmt(g[m]['high'])}]" for m in online["metrics"]]
        )
    labels = {
        f"ctr@{k}": f"CTR@{k}",
        "purchase": "purchase rate",
        "revenue": "revenue/request",
        f"ndcg@{k}": f"click NDCG@{k}",
    }
    parts = [
        html_table(["surface", "variant", "version", "requests"] + [labels.get(m, m) for m in online["metrics"]], rows)
    ]
    crow = []
    for c in online["comparisons"]:
        for m in online["metrics"]:
            r = c[m]
            crow.append(
                [
                    c["surface"],
                    f"{c['treatment']} - {c['control']}",
                    m,
                    _fmt(r["diff"], "+.4f"),
                    f"[{_fmt(r['low'], '+.4f')}, {_fmt(r['high'], '+.4f')}]",
                    r["better"] or "not yet",
                    r["requests_needed"] or "-",
                ]
            )
    if crow:
        srm = "; ".join(f"{c['surface']}: sample ratio {c['srm']['verdict']}" for c in online["comparisons"])
        parts.append(
            "<h3>Variant comparison (user-level 95% interval of the difference; better = decided by "
            f"{html.escape(online.get('rule', ''))})</h3><p>{html.escape(srm)}</p>"
        )
        parts.append(
            html_table(["surface", "difference", "metric", "diff", "interval", "better", "requests needed"], crow)
        )
    if timeline is not None and not timeline.empty:
        from matplotlib.figure import Figure

        surfaces = sorted(timeline.surface.unique())
        figure = Figure(figsize=(7, 2.8 * len(surfaces)))
        for i, surface in enumerate(surfaces, start=1):
            axes = figure.add_subplot(len(surfaces), 1, i)
            for variant, part in timeline[timeline.surface == surface].groupby("variant"):
                axes.plot(part.n, part[f"ctr@{k}"], label=variant)
            axes.set_title(f"{surface}: cumulative CTR@{k} per variant")
            axes.set_xlabel("requests served to the variant")
            axes.legend(fontsize=8)
        figure.tight_layout()
        parts.append(_png(figure))
    return "".join(parts)


def render(
    *,
    title: str,
    drift: dict | None,
    skew: dict | None,
    online: dict | None,
    timeline: pd.DataFrame | None,
    notes: list[str] | None = None,
) -> str:
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes or [])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
{f"<ul>{notes_html}</ul>" if notes_html else ""}
<h2>Online metrics per variant</h2>{_online_section(online, timeline)}
<h2>Drift (PSI per feature)</h2>{_drift_section(drift)}
<h2>Training/serving skew</h2>{_skew_section(skew)}
</body></html>"""
