"""Issue 17: models side by side on the same simulated world (e.g. v3 vs v4): the oracle fraction in
true-utility NDCG@10, and on listings younger than 48 h (each request restricted to its young
listings, as in `ranker evaluate`) the model's NDCG@10 minus the logged order's, on clicks and on the
hidden utility, with paired bootstrap 95% intervals over requests.

    python -m benchmarks.signals_eval artifacts/models/search_ranker/<v3> artifacts/models/search_ranker/<v4>

Each model is scored on its surface's training set (``ranker dataset build`` keeps one per surface:
build it with the model's feature service first; the test windows of v3 and v4 are the same
requests). Evaluation, not timing: the host probe is printed for the record only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def young_slice(frame, scores: dict, *, n_boot: int, seed: int) -> dict:
    from ranker.training import metrics
    from ranker.training.evaluate import YOUNG_LISTING_HOURS

    mask = frame.listing_age_hours.to_numpy(dtype=np.float64) < YOUNG_LISTING_HOURS
    sub = frame[mask]
    groups = metrics.encode_groups(sub.request_id.to_numpy())
    out: dict = {"rows": int(mask.sum()), "requests": int(sub.request_id.nunique())}
    clicks = {
        n: metrics.per_group_metrics(groups, sub.label.to_numpy(), s[mask], ks=(10,))["ndcg@10"].to_numpy()
        for n, s in scores.items()
    }
    out["clicks"] = {n: float(np.nanmean(v)) for n, v in clicks.items()}
    out["clicks_model_vs_logged"] = metrics.paired_bootstrap_ci(
        clicks["model"], clicks["logged"], n_boot=n_boot, seed=seed
    )
    if "oracle" in scores:
        true = {
            n: metrics.graded_ndcg_against_utility(groups, scores["oracle"][mask], s[mask], k=10).to_numpy()
            for n, s in scores.items()
        }
        out["true"] = {n: float(np.nanmean(v)) for n, v in true.items()}
        out["true_model_vs_logged"] = metrics.paired_bootstrap_ci(
            true["model"], true["logged"], n_boot=n_boot, seed=seed
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders (card.json + model.txt)")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    from benchmarks._stack import machine_speed
    from ranker.config import Settings
    from ranker.training import metrics
    from ranker.training.evaluate import holdout_frame, load_model, score_rankers

    settings = Settings.from_env()
    rows = []
    for folder in args.models:
        model = load_model(folder)
        frame, manifest = holdout_frame(settings, model)
        if manifest["feature_service"] != model.card["feature_service"]:
            raise SystemExit(
                f"{folder}: the {model.card['surface']} training set holds {manifest['feature_service']}, the model "
                f"needs {model.card['feature_service']}: `ranker dataset build --surface {model.card['surface']} "
                f"--feature-service {model.card['feature_service']}` first"
            )
        scores = score_rankers(settings, model, frame)
        groups = metrics.encode_groups(frame.request_id.to_numpy())
        true = {
            n: float(metrics.graded_ndcg_against_utility(groups, scores["oracle"], s, k=10).mean())
            for n, s in scores.items()
        }
        rows.append(
            {
                "model": str(folder),
                "service": model.card["feature_service"],
                "requests": int(frame.request_id.nunique()),
                "oracle_fraction": metrics.oracle_fraction(true),
                "ceiling_fraction": metrics.oracle_fraction(true, ranker="expected_oracle"),
                "young": young_slice(frame, scores, n_boot=args.boot, seed=0),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1, default=float))
        return
    print(f"host: {machine_speed()}")
    for r in rows:
        y = r["young"]
        c, t = y["clicks_model_vs_logged"], y.get("true_model_vs_logged", {})
        print(
            f"{r['service']:<18} requests {r['requests']:,}  oracle fraction {r['oracle_fraction']:.3f} "
            f"(ceiling {r['ceiling_fraction']:.3f})\n"
            f"  < 48 h: {y['requests']:,} requests; clicks NDCG@10 model {y['clicks']['model']:.4f} logged "
            f"{y['clicks']['logged']:.4f}, diff {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]; true NDCG@10 "
            f"model {y['true']['model']:.4f} logged {y['true']['logged']:.4f}, diff {t['diff']:+.4f} "
            f"[{t['low']:+.4f}, {t['high']:+.4f}]"
        )


if __name__ == "__main__":
    main()
