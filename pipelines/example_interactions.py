"""`make example-interactions`: a public-format interactions log, end to end, with the full-catalogue
evaluation.

A simulated marketplace (``ranker data simulate``, in a scratch home) is exported the way most apps
export their logs: ``interactions.csv`` (``user_id, item_id, timestamp, event_type``: the engagement
events only, no impressions, no positions, no request ids) and ``items.csv`` (the listings'
attributes with ``created_at`` and ``sold_at``). The export is imported into its own home (default
``artifacts/interactions/``, so the demo's data is untouched) and goes through the ordinary commands:

  ranker data import --format interactions interactions.csv --items items.csv
  ranker features build && ranker features apply
  ranker dataset build --surface recs --feature-service generic_ranker_v2 --negatives 8 [--negatives-popular P]
  ranker train --surface recs
  ranker evaluate artifacts/models/recs_ranker/<version> --catalogue-users 500

``ranker evaluate`` adds the full-catalogue table on its own for a sampled-group training set: at
the test window's start, every live listing is ranked for each sampled test user, beside all-time
and 7-day popularity, EASE and random (``ranker.training.catalogue``). At the default scale (2.2)
the log holds ~100k interactions.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# generic_ranker_v2: v1 + co-engagement and popularity (feature_repo/features/coengagement.py)
DEFAULT_SERVICE = "generic_ranker_v2"
DEFAULT_POPULAR = (
    0.0  # share of popularity-drawn (hard) negatives: 0.5 measured worse (docs/guides/bring-your-own-events.md)
)
ITEM_COLUMNS = (
    "item_id",
    "seller_id",
    "title",
    "category",
    "brand",
    "size",
    "condition",
    "colour",
    "price",
    "original_price",
    "created_at",
    "sold_at",
)


def export_public_format(raw_dir: Path, out_dir: Path) -> tuple[Path, Path, int]:
    """Write the simulated log as ``interactions.csv`` (engagement events) and ``items.csv``."""
    import pandas as pd

    events = pd.read_parquet(raw_dir / "events.parquet", columns=["user_id", "item_id", "timestamp", "event_type"])
    events = events[events.event_type != "impression"].sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    out_dir.mkdir(parents=True, exist_ok=True)
    interactions = out_dir / "interactions.csv"
    frame = events.assign(timestamp=pd.to_datetime(events.timestamp, utc=True).map(lambda t: t.isoformat()))
    frame.to_csv(interactions, index=False)
    listings = pd.read_parquet(raw_dir / "listings.parquet")
    items = out_dir / "items.csv"
    listings = listings[list(ITEM_COLUMNS)].copy()
    for column in ("created_at", "sold_at"):
        ts = pd.to_datetime(listings[column], utc=True)
        listings[column] = ts.map(lambda t: t.isoformat() if pd.notna(t) else "")
    listings.to_csv(items, index=False)
    return interactions, items, int(len(events))


def _ranker(home: Path, *args: str) -> None:
    """Run one `ranker` command in ``home`` (a subprocess, as a user would), stop on failure."""
    import os

    print(f"\n$ ranker {' '.join(args)}", flush=True)
    env = {**os.environ, "RANKER_HOME": str(home), "RANKER_ONLINE_STORE": "sqlite"}
    env.pop("RANKER_REGISTRY_URI", None)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=REPO_ROOT)
    if result.returncode != 0:
        sys.exit(f"example stopped: `ranker {' '.join(args)}` failed (exit {result.returncode})")


def run(
    home: Path,
    *,
    scale: float = 2.2,
    seed: int = 7,
    negatives: int = 8,
    users: int = 500,
    service: str = DEFAULT_SERVICE,
    popular: float = DEFAULT_POPULAR,
) -> Path:
    """The whole example in ``home``; returns the evaluated model folder."""
    import shutil

    started = time.perf_counter()
    home.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "artifacts", "feature_repo", "simulated", "export"):
        shutil.rmtree(home / sub, ignore_errors=True)
    shutil.copytree(REPO_ROOT / "feature_repo", home / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    sim = home / "simulated"
    shutil.copytree(REPO_ROOT / "feature_repo", sim / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    _ranker(sim, "data", "simulate", "--scale", str(scale), "--seed", str(seed))
    interactions, items, n = export_public_format(sim / "data" / "raw", home / "export")
    print(f"\nexported {n:,} interactions to {interactions} and the listings to {items}", flush=True)
    shutil.rmtree(sim)
    _ranker(home, "data", "import", "--format", "interactions", str(interactions), "--items", str(items))
    _ranker(home, "features", "build")
    _ranker(home, "features", "apply")
    _ranker(
        home,
        "dataset",
        "build",
        "--surface",
        "recs",
        "--feature-service",
        service,
        "--negatives",
        str(negatives),
        "--negatives-popular",
        str(popular),
    )
    _ranker(home, "train", "--surface", "recs")
    model_dir = sorted((home / "artifacts" / "models" / "recs_ranker").glob("*/card.json"))[-1].parent
    _ranker(home, "evaluate", str(model_dir), "--catalogue-users", str(users))
    print(f"\nexample-interactions done in {time.perf_counter() - started:.0f} s; home {home}")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=REPO_ROOT / "artifacts" / "interactions", help="RANKER_HOME.")
    parser.add_argument("--scale", type=float, default=2.2, help="Simulator scale (2.2: ~100k interactions).")
    parser.add_argument("--seed", type=int, default=7, help="Simulator seed.")
    parser.add_argument("--negatives", type=int, default=8, help="Sampled negatives per interaction.")
    parser.add_argument("--catalogue-users", type=int, default=500, help="Test users of the full catalogue.")
    parser.add_argument("--feature-service", default=DEFAULT_SERVICE, help="generic_ranker_v2 or generic_ranker_v1.")
    parser.add_argument(
        "--negatives-popular", type=float, default=DEFAULT_POPULAR, help="Share of popularity-drawn negatives."
    )
    args = parser.parse_args(argv)
    run(
        args.home.resolve(),
        scale=args.scale,
        seed=args.seed,
        negatives=args.negatives,
        users=args.catalogue_users,
        service=args.feature_service,
        popular=args.negatives_popular,
    )


if __name__ == "__main__":
    main()
