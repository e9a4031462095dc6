"""Scale-out engines against the single-machine ones, in one run on the same world: the feature
tables (DuckDB vs Spark ``local[2]``), the point-in-time training set (Feast's DuckDB offline store
vs the Spark as-of join) and LambdaRank training (one LightGBM process vs
``lightgbm.dask`` on a LocalCluster of 2 workers x 1 thread).

    .venv/bin/python benchmarks/scale_out.py                      # scale 2: ~1M events, a few minutes
    .venv/bin/python benchmarks/scale_out.py --scale 10           # ~5M events
    .venv/bin/python benchmarks/scale_out.py --home /tmp/w2 --keep   # build a world once, reuse it

Each measurement is a fresh process (its own peak RSS, getrusage ru_maxrss; for Spark and Dask
that is the driver/client only: the JVM and the worker processes are children, reported as
"children peak"). Printed beside the figures: the machine-speed probe before and after
(``benchmarks/_stack.py``); the machine is shared, so the engines run alternately and the
ratios within one run are the figures to compare.
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
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, os, resource, sys, threading, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import psutil
from ranker.config import Settings
task = sys.argv[1]
settings = Settings.from_env()
out = {}
# Peak RSS of the whole process tree (this process + the Spark JVM + Dask's workers and their
# children), sampled every 0.2 s: the JVM is no waited child, so getrusage cannot see it.
# Also the CPU seconds of the tree (last reading per process): on a loaded host the wall clock
# measures the share of the CPU a job got; CPU seconds move much less with the neighbours.
tree_peak = [0]
tree_cpu = {}
stop = threading.Event()
def sample():
    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
                cpu = proc.cpu_times()
                tree_cpu[proc.pid] = cpu.user + cpu.system
            except psutil.Error:
                pass
        tree_peak[0] = max(tree_peak[0], total)
        stop.wait(0.2)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
if task == "features-duckdb":
    from ranker.features.build import build_features
    s = build_features(settings)
    out["rows_out"] = sum(t["rows"] for t in s["tables"].values())
elif task == "features-spark":
    from ranker.features.spark_build import build_features_spark
    s = build_features_spark(settings)
    out["rows_out"] = sum(t["rows"] for t in s["tables"].values())
elif task.startswith("dataset-"):
    from ranker.training.dataset import DatasetOptions, build_dataset
    timings = {}
    from datetime import datetime, timezone
    end = datetime.fromisoformat(sys.argv[3]).replace(tzinfo=timezone.utc) if len(sys.argv) > 3 else None
    m = build_dataset(settings, DatasetOptions(surface=sys.argv[2], end=end), engine=task.split("-", 1)[1],
                      timings=timings)
    out.update(rows=m["rows"], fingerprint=m["fingerprint"],
               join_seconds=sum(v for k, v in timings.items() if k not in ("labels", "feast_setup")),
               stages={k: round(v, 1) for k, v in timings.items()})
elif task.startswith("train-"):
    import json as _json
    from ranker.training import metrics
    from ranker.training.evaluate import holdout_frame, load_model, predict
    from ranker.training.train import TrainOptions, train_model
    engine = task.split("-", 1)[1]
    model_dir = train_model(settings.with_(train_engine=engine), TrainOptions(surface=sys.argv[2]),
                            out_root=settings.artifacts_dir / "bench_models" / (engine + os.environ.get(
                                "RANKER_DASK_WORKERS", "")))
    card = _json.loads((model_dir / "card.json").read_text())
    model = load_model(model_dir)
    frame, _ = holdout_frame(settings, model)
    scores = predict(model, frame)
    ndcg = metrics.per_group_metrics(frame.request_id.to_numpy(), frame.label.to_numpy(), scores, ks=(10,))
    out.update(best_iteration=card["best_iteration"], test_ndcg10=float(np.nanmean(ndcg["ndcg@10"])),
               fitted_rows=card["dataset"]["fitted_rows"]["train_rows"], engine=card["training_engine"],
               training_seconds=card["training_seconds"])
out["seconds"] = time.perf_counter() - t0
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
out["children_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
stop.set()
sampler.join()
out["tree_peak_rss_gb"] = tree_peak[0] / 1e9
own = psutil.Process().cpu_times()
tree_cpu[os.getpid()] = own.user + own.system
out["tree_cpu_s"] = sum(tree_cpu.values())
print(json.dumps(out))
"""


def _ranker(args: list[str], env: dict, label: str) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from pipelines.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stdout[-4000:]}")
    print(f"  {label:<24} {time.perf_counter() - t0:7.1f} s", flush=True)


def _measure(task: str, env: dict, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, task, *extra], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"{task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env(home: Path) -> dict:
    env = {**os.environ, "RANKER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def main() -> None:
    from benchmarks._stack import machine_speed

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=2.0, help="Simulator scale of a new world (2: ~1M events).")
    parser.add_argument("--home", type=Path, default=None, help="Use this RANKER_HOME (built there if needed).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary world.")
    parser.add_argument("--surface", choices=["search", "recs"], default="recs")
    parser.add_argument("--skip", nargs="*", default=[], choices=["features", "pit", "training"])
    parser.add_argument(
        "--end", default=None, help="PIT: only impressions before this UTC date (e.g. 2026-10-11): a smaller set"
    )
    parser.add_argument(
        "--dask-workers", type=int, nargs="*", default=[1, 2], help="Training: LocalCluster sizes measured."
    )
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="ranker-scale-out-", dir="/tmp"))
    env = _env(home)
    spark_home = home / "spark_copy"  # same raw data, its own feature folder
    try:
        print(machine_speed(), flush=True)
        if not (home / "data" / "feast" / "registry.db").exists():
            print(f"building a world at scale {args.scale:g} in {home}")
            home.mkdir(parents=True, exist_ok=True)
            if not (home / "feature_repo").exists():
                shutil.copytree(
                    REPO / "feature_repo", home / "feature_repo", ignore=shutil.ignore_patterns("__pycache__")
                )
            _ranker(["data", "simulate", "--scale", f"{args.scale:g}"], env, "data simulate")
            _ranker(["features", "build"], env, "features build")
            _ranker(["features", "apply"], env, "features apply")
        import pyarrow.parquet as pq

        events = pq.ParquetFile(home / "data" / "raw" / "events.parquet").metadata.num_rows
        print(f"world: {events:,} events, machine: {os.cpu_count()} cores\n")
        if "features" not in args.skip:
            (spark_home / "data").mkdir(parents=True, exist_ok=True)
            if not (spark_home / "data" / "raw").exists():
                (spark_home / "data" / "raw").symlink_to(home / "data" / "raw")
            print(
                f"{'features build':<26} {'events':>11} {'seconds':>8} {'s per 1M':>9} {'peak GB':>8} "
                f"{'children GB':>11}"
            )
            for engine, env_ in (("duckdb", env), ("spark", _env(spark_home)), ("duckdb", env)):
                r = _measure(f"features-{engine}", env_)
                print(
                    f"{engine:<26} {events:>11,} {r['seconds']:>8.1f} {r['seconds'] / events * 1e6:>9.1f} "
                    f"{r['peak_rss_gb']:>8.2f} {r['children_peak_rss_gb']:>11.2f}",
                    flush=True,
                )
            print(machine_speed(), flush=True)
        if "pit" not in args.skip:
            print(
                f"\n{'PIT training set (' + args.surface + ')':<26} {'rows':>11} {'seconds':>8} {'join s':>7} "
                f"{'join s/1M':>9} {'CPU s':>7} {'peak GB':>8} {'tree GB':>8}  fingerprint"
            )
            window = [args.end] if args.end else []
            for engine in ("duckdb", "spark", "duckdb"):
                r = _measure(f"dataset-{engine}", env, args.surface, *window)
                print(
                    f"{engine:<26} {r['rows']:>11,} {r['seconds']:>8.1f} {r['join_seconds']:>7.1f} "
                    f"{r['join_seconds'] / r['rows'] * 1e6:>9.1f} {r['tree_cpu_s']:>7.0f} {r['peak_rss_gb']:>8.2f} "
                    f"{r['tree_peak_rss_gb']:>8.2f}  {r['fingerprint'][:16]}",
                    flush=True,
                )
                print(f"    stages (s): {r['stages']}", flush=True)
            print(
                "(join s: all but labelling and Feast's setup; Spark's includes starting its session; peak GB: "
                "this process; tree GB: peak RSS of the process tree, the Spark JVM included, sampled every 0.2 s; "
                "CPU s: CPU seconds of the whole process tree, the figure a loaded host disturbs least)"
            )
            print(machine_speed(), flush=True)
        if "training" not in args.skip:
            if not (home / "artifacts" / "datasets" / args.surface / "manifest.json").exists():
                _ranker(["dataset", "build", "--surface", args.surface], env, f"dataset build {args.surface}")
            print(
                f"\n{'training (' + args.surface + ')':<26} {'fit rows':>11} {'seconds':>8} {'s per 1M':>9} "
                f"{'trees':>6} {'s/tree':>7} {'test NDCG@10':>12} {'NDCG delta':>10} {'CPU s':>7} {'peak GB':>8} "
                f"{'tree GB':>8}"
            )
            runs = [("local", None), *(("dask", w) for w in args.dask_workers), ("local", None)]
            anchor = None
            for engine, workers in runs:
                env_ = {**env, "RANKER_DASK_WORKERS": str(workers)} if workers else env
                r = _measure(f"train-{engine}", env_, args.surface)
                trees = r["engine"].get("trees_trained", min(400, r["best_iteration"] + 40))
                per_tree = r["engine"].get("seconds_per_tree", r["training_seconds"] / trees)
                anchor = r["test_ndcg10"] if anchor is None else anchor
                label = f"dask, {workers} worker(s) x 1 thread" if workers else "local, one process"
                print(
                    f"{label:<26} {r['fitted_rows']:>11,} {r['seconds']:>8.1f} "
                    f"{r['seconds'] / r['fitted_rows'] * 1e6:>9.1f} "
                    f"{trees:>6} {per_tree:>7.3f} {r['test_ndcg10']:>12.4f} {r['test_ndcg10'] - anchor:>+10.4f} "
                    f"{r['tree_cpu_s']:>7.0f} {r['peak_rss_gb']:>8.2f} {r['tree_peak_rss_gb']:>8.2f}",
                    flush=True,
                )
            print(
                "(local trees = best iteration + early_stopping_rounds, as LightGBM stops; local s/tree = the card's "
                "training seconds / trees, dask's = cluster start + scatter + fit / trees; seconds include loading "
                "the training set and writing the card; NDCG delta against the first local run; tree GB: peak RSS "
                "of the process tree, Dask's workers included)"
            )
            print(machine_speed(), flush=True)
    finally:
        if args.home is None and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        elif args.home is None:
            print(f"world kept in {home}")


if __name__ == "__main__":
    main()
