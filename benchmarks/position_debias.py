"""Does LightGBM's position-debiased LambdaRank (the `position` of lgb.Dataset) help?

Trains each surface with and without it on the training sets in RANKER_HOME (run `make demo`
first, or `ranker dataset build` for both surfaces) and prints test NDCG@10 on clicks and against
the simulator's hidden utility, side by side. Models go to a temporary folder.

    RANKER_HOME=$PWD .venv/bin/python benchmarks/position_debias.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds per variant (results are averaged).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from ranker.config import Settings
    from ranker.training.evaluate import evaluate_model
    from ranker.training.train import TrainOptions, train_model

    settings = Settings.from_env()
    print(f"{'surface':<8} {'position_debias':<16} {'click ndcg@10':>14} {'true ndcg@10':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for surface in ("search", "recs"):
            for debias in (False, True):
                clicks, truth = [], []
                for seed in range(args.seeds):
                    out = train_model(
                        settings,
                        TrainOptions(surface=surface, seed=seed, position_debias=debias),
                        out_root=Path(tmp) / f"{surface}-{debias}-{seed}",
                    )
                    metrics = evaluate_model(settings, out, n_boot=100, write=False)["metrics"]
                    clicks.append(metrics["test"]["model"]["ndcg@10"])
                    truth.append((metrics.get("true_utility") or {}).get("model", float("nan")))
                print(
                    f"{surface:<8} {str(debias):<16} {sum(clicks) / len(clicks):>14.4f} "
                    f"{sum(truth) / len(truth):>13.4f}"
                )


if __name__ == "__main__":
    main()
