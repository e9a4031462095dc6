"""`make example-open-bandit`: the platform on real data nobody here generated.

The Open Bandit Dataset's small sample (real ZOZOTOWN fashion recommendations: 20,000 logged
rounds of the uniform-random and Thompson-sampling policies, 80 items, 3 slots, ~80 clicks) goes
through the same pipeline as the simulated demo, in its own home (default
``artifacts/open_bandit/``, so the demo's data is untouched):

import -> feature tables -> feast apply -> materialize -> sampled training groups from Feast
(generic_ranker_v1) -> train -> evaluate against baselines -> inverse-propensity CTR of the learned
ranking vs the logging policies' actual CTR -> publish, promote, rank one request through the scorer.

Equivalent commands (RANKER_HOME=artifacts/open_bandit, with a copy of feature_repo/ inside):
  ranker data import --format open-bandit ../shared/data/open_bandit
  ranker features build && ranker features apply && ranker features materialize --full
  ranker dataset build --surface recs --feature-service generic_ranker_v1 --negatives 20
  ranker train --surface recs && ranker evaluate artifacts/models/recs_ranker/<version>
The training split here keeps a longer test window (50% train, 15% validation, 35% test) than
`ranker train`'s default so the off-policy estimate has more logged rounds; min_data_in_leaf is
lowered to 20 because the log holds ~80 clicks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data/open_bandit beside the repo, or $RANKER_SHARED_DATA/open_bandit
DEFAULT_DATA = Path(os.environ.get("RANKER_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data") / "open_bandit"


def prepare_home(home: Path) -> None:
    """A platform home for the imported data: its own copy of feature_repo/ (Feast rejects
    symlinked definition files) and its own data/ and artifacts/."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / "feature_repo"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO_ROOT / "feature_repo", target, ignore=shutil.ignore_patterns("__pycache__"))


def run(
    home: Path,
    data: Path,
    *,
    negatives: int = 20,
    seed: int = 0,
    sample_rows: int | None = None,
    max_ips_rows: int | None = None,
    serve: bool = True,
) -> dict:
    """The whole example; returns the evaluation and off-policy results (used by the test)."""
    import json

    from ranker.config import Settings
    from ranker.data.importers import ImportOptions, describe, import_log
    from ranker.features.materialize import materialize
    from ranker.features.store import apply
    from ranker.jobs.feature_tables import build_feature_tables
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.evaluate import evaluate_model
    from ranker.training.ips import evaluate_ips, ips_table
    from ranker.training.report import evaluation_table
    from ranker.training.train import TrainOptions, train_model

    warnings.filterwarnings("ignore")
    prepare_home(home)
    settings = Settings.from_env({"RANKER_HOME": str(home)})
    print(f"== import ({data})", flush=True)
    report = import_log(settings, ImportOptions(fmt="open-bandit", path=data, sample_rows=sample_rows, seed=seed))
    print(describe(report))
    print("== features", flush=True)
    summary = build_feature_tables(settings)
    print(", ".join(f"{k} {v['rows']:,}" for k, v in summary["tables"].items()))
    apply(settings)
    mat = materialize(settings, full=True)
    print(f"materialized {mat['rows']:,} rows into {mat['online_store']}")
    print("== training set (sampled groups, generic_ranker_v1)", flush=True)
    manifest = build_dataset(
        settings,
        DatasetOptions(surface="recs", feature_service="generic_ranker_v1", negatives=negatives, negatives_seed=seed),
    )
    print(
        f"{manifest['rows']:,} rows, {manifest['groups']:,} groups ({manifest['positives']} clicks, "
        f"{negatives} sampled negatives each), {len(manifest['features'])} features"
    )
    model_dir = train_model(
        settings,
        TrainOptions(surface="recs", seed=42, train_share=0.5, valid_share=0.15, params={"min_data_in_leaf": 20}),
    )
    card = json.loads((model_dir / "card.json").read_text())
    print(
        f"== trained {card['name']} {card['version']}: best iteration {card['best_iteration']}, "
        f"validation NDCG@10 {card['valid_ndcg@10']:.4f}"
    )
    evaluation = evaluate_model(settings, model_dir, n_boot=1000, seed=seed)
    print("== ranking metrics on the sampled test groups (no oracle on real data)")
    print(evaluation_table(evaluation))
    print("== off-policy evaluation on the logged rounds (ZOZOTOWN propensities)", flush=True)
    ips = evaluate_ips(settings, model_dir, n_boot=1000, seed=seed, max_rows=max_ips_rows)
    print(ips_table(ips))
    served = None
    if serve:
        served = _serve_one(settings, model_dir)
    return {
        "import": report,
        "manifest": manifest,
        "model_dir": model_dir,
        "evaluation": evaluation,
        "ips": ips,
        "served": served,
    }


def _serve_one(settings, model_dir: Path) -> dict:
    """Publish, promote through the gate (forced with a recorded reason if the tiny log cannot
    pass it) and rank the catalogue for one logged user through the scorer."""
    import pandas as pd

    from api.app import create_app
    from ranker.registry.gate import GatePolicy, evaluate_gate
    from ranker.registry.registry import Registry
    from ranker.registry.evidence import gate_evidence

    settings = settings.with_(registry_uri=(settings.artifacts_dir / "registry").resolve().as_uri())
    registry = Registry.from_settings(settings)
    published = registry.publish(model_dir)
    result = evaluate_gate(gate_evidence(settings, challenger_dir=model_dir, champion_dir=None), GatePolicy())
    if result.passed:
        registry.promote(published.name, published.version, stage="production", gate=result)
    else:
        registry.promote(
            published.name,
            published.version,
            stage="production",
            gate=result,
            force=True,
            reason=f"example on a tiny real log: {result.summary()}",
        )
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    user = pd.read_parquet(settings.raw_dir / "events.parquet").user_id.iloc[-1]
    app = create_app(test_config={"RANKER_SURFACES": "recs", "RANKER_RELOAD_INTERVAL_S": 0}, settings=settings)
    try:
        response = app.test_client().post(
            "/v1/rank", json={"surface": "recs", "user_id": user, "items": listings.item_id.tolist(), "limit": 5}
        )
        body = response.get_json()
    finally:
        app.extensions["ranker"].close()
    print(
        f"== scorer: POST /v1/rank for {user} over {len(listings)} items -> HTTP {response.status_code}, "
        f"model {body.get('model', {}).get('version')}, top 5: "
        + ", ".join(f"{i['item_id']} ({i['score']:.3f})" for i in body.get("items", []))
    )
    return {"status": response.status_code, "body": body}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="The Open Bandit folder (random/, bts/).")
    parser.add_argument(
        "--home",
        type=Path,
        default=REPO_ROOT / "artifacts" / "open_bandit",
        help="RANKER_HOME of the imported data (kept apart from the demo).",
    )
    parser.add_argument("--negatives", type=int, default=20, help="Sampled negatives per click.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(
            f"error: {args.data} not found: the Open Bandit sample lives in ../shared/data/open_bandit (see its README)"
        )
    from ranker.errors import RankerError

    try:
        run(args.home.resolve(), args.data.resolve(), negatives=args.negatives, seed=args.seed)
    except RankerError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
