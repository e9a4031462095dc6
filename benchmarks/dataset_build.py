"""Point-in-time training-set build: `build_dataset` (chunked Feast calls, streamed output) against
an anchor measured in the same run, a single unchunked Feast `get_historical_features(...).to_df()`
on a sample of the same impressions (the first 1M, in time order) with the same feature service,
through Feast's own DuckDB offline store (the build uses `ranker.features.offline`, same rows).

    .venv/bin/python benchmarks/dataset_build.py                   # scale 2: ~0.5M search rows, ~2 minutes
    .venv/bin/python benchmarks/dataset_build.py --scale 4         # ~1.0M search rows
    .venv/bin/python benchmarks/dataset_build.py --scale 20        # ~5.2M search rows (10.4M impressions)
    .venv/bin/python benchmarks/dataset_build.py --scale 40        # ~10.5M search rows: the 10M figure
    .venv/bin/python benchmarks/dataset_build.py --home /tmp/w40 --keep   # build a world once, then reuse it
    .venv/bin/python benchmarks/dataset_build.py --home /tmp/w4 --feature-service search_ranker_v4 --no-anchor

(--scale 20 gives 10.4M impressions over both surfaces, i.e. ~5.2M search rows; --scale 40 gives
~10.5M search rows: simulate ~2.5 min, features build ~1.5-4 min and ~4 GB RAM plus DuckDB
temporary files on disk.)

A world is built in a temporary RANKER_HOME (a copy of feature_repo/, `ranker data simulate
--scale N`, `ranker features build`, `ranker features apply`) unless --home points at one that
exists. Every measurement runs in a fresh process, so each peak RSS (getrusage ru_maxrss) is its
own. Printed: rows, seconds (after `import feast`, ~4-5 s), rows/s, seconds per million rows, peak
RSS, the whole process's seconds (as the CLI pays them), the build's stage timings and fingerprint.
The machine is shared: rerun when timings look noisy (`uptime`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs in a child process: one measurement, one JSON line on stdout.
CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
started = time.perf_counter()
mode, surface, chunk_rows, anchor_rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
service = sys.argv[5] or None
import feast  # noqa: F401  (timed: the CLI pays it too)
from ranker.config import Settings
from ranker.training.dataset import DatasetOptions, build_dataset
settings = Settings.from_env()
options = DatasetOptions(surface=surface, chunk_rows=chunk_rows, feature_service=service)
imported = time.perf_counter() - started
out = {"import_s": round(imported, 2)}
if mode == "build":
    timings = {}
    t0 = time.perf_counter()
    manifest = build_dataset(settings, options, timings=timings)
    out.update(rows=manifest["rows"], seconds=time.perf_counter() - t0, fingerprint=manifest["fingerprint"],
               features=len(manifest["features"]), timings={k: round(v, 2) for k, v in timings.items()})
else:
    import pandas as pd
    from ranker.features.store import feature_store, in_feature_repo, service_spec
    from ranker.training.dataset import _entity_frame, _labelled_table
    from feast import FeatureStore
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from ranker.features.store import repo_config
    config = repo_config(settings)
    config._offline_store = DuckDBOfflineStoreConfig()  # the anchor is Feast's own DuckDB join
    store = FeatureStore(repo_path=str(settings.feature_repo), config=config)
    spec = service_spec(store, options.service)
    rows = _labelled_table(settings, options)
    sample = rows.slice(0, min(anchor_rows, rows.num_rows))  # a contiguous stretch of time, as a chunk
    entity_df = _entity_frame(sample, spec)
    entity_df = entity_df.astype({c: object for c in entity_df.columns if entity_df[c].dtype == "str"})
    service = store.get_feature_service(options.service)
    t0 = time.perf_counter()
    with in_feature_repo(settings.feature_repo):
        df = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    out.update(rows=len(df), seconds=time.perf_counter() - t0)
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
out["total_s"] = round(time.perf_counter() - started, 2)
print(json.dumps(out))
"""


def _run(cmd: list[str], env: dict, label: str) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stdout[-4000:]}")
    print(f"  {label:<22} {time.perf_counter() - t0:7.1f} s")


def _measure(mode: str, args, env: dict) -> dict:
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        mode,
        args.surface,
        str(args.chunk_rows),
        str(args.anchor_rows),
        args.feature_service or "",
    ]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _line(name: str, r: dict) -> str:
    rate = r["rows"] / r["seconds"]
    return (
        f"{name:<34} {r['rows']:>11,} {r['seconds']:>9.1f} {rate:>10,.0f} {1e6 / rate:>9.1f} "
        f"{r['peak_rss_gb']:>8.2f} {r['total_s']:>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=2.0, help="Simulator scale of a new world (20: ~5.2M search rows)."
    )
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    parser.add_argument("--feature-service", default=None, help="Override the surface's service (search_ranker_v4).")
    parser.add_argument(
        "--home", type=Path, default=None, help="Use this RANKER_HOME (built there if it has no features yet)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the temporary world.")
    parser.add_argument(
        "--chunk-rows", type=int, default=None, help="Entity rows per Feast call (default: DatasetOptions')."
    )
    parser.add_argument("--anchor-rows", type=int, default=1_000_000, help="Rows of the unchunked anchor call.")
    parser.add_argument("--no-anchor", action="store_true")
    args = parser.parse_args()
    if args.chunk_rows is None:
        from ranker.training.dataset import DatasetOptions

        args.chunk_rows = DatasetOptions(surface=args.surface).chunk_rows

    home = args.home or Path(tempfile.mkdtemp(prefix="ranker-dataset-bench-", dir="/tmp"))
    env = {**os.environ, "RANKER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ranker = [sys.executable, "-c", "from pipelines.cli import main; main()"]
    try:
        if not (home / "data" / "feast" / "registry.db").exists():
            print(f"building a world at scale {args.scale:g} in {home}")
            home.mkdir(parents=True, exist_ok=True)
            if not (home / "feature_repo").exists():
                shutil.copytree(
                    REPO / "feature_repo", home / "feature_repo", ignore=shutil.ignore_patterns("__pycache__")
                )
            _run([*ranker, "data", "simulate", "--scale", f"{args.scale:g}"], env, "data simulate")
            _run([*ranker, "features", "build"], env, "features build")
            _run([*ranker, "features", "apply"], env, "features apply")
        print(f"surface {args.surface}, chunk_rows {args.chunk_rows:,}, machine: {os.cpu_count()} cores\n")
        print(f"{'':<34} {'rows':>11} {'seconds':>9} {'rows/s':>10} {'s per 1M':>9} {'peak GB':>8} {'process s':>9}")
        build = _measure("build", args, env)
        print(_line("build_dataset (chunked, streamed)", build))
        if not args.no_anchor:
            anchor = _measure("anchor", args, env)
            print(_line("anchor: one get_historical_features", anchor))
        print(f"\nfeatures {build['features']}, fingerprint {build['fingerprint']}")
        print("build stages (s; sink_* run on the writer thread, overlapping feast_*):")
        print("  " + ", ".join(f"{k} {v}" for k, v in build["timings"].items()))
        print(f"process: import feast etc. {build['import_s']} s; seconds above exclude it, 'process s' includes it")
    finally:
        if args.home is None and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        elif args.home is None:
            print(f"world kept in {home}")


if __name__ == "__main__":
    main()
