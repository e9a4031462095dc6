"""Online feature fetch latency: the scorer's path (``ranker.serving.features.OnlineFeatures``, cache
off and on) against the Feast SDK (``get_online_features`` + ``feature_matrix``, i.e.
``feast_reference``) for the same requests, measured in the same run, on a private redis-server
started here on a free loopback port.

    .venv/bin/python benchmarks/online_features.py                      # temp world, default demo size
    RANKER_HOME=/path/to/home .venv/bin/python benchmarks/online_features.py [--service recs_ranker_v1]
        [--sizes 50 200 1000] [--requests 300] [--feast-requests 60] [--store redis|sqlite|both|cluster|redis+cluster]

``cluster``: a private 3-master Redis Cluster (redis-server --cluster-enabled yes + redis-cli
--cluster create on free loopback ports), read by the cluster reader; ``redis+cluster`` runs the
single node then the cluster in one run (materialize rows/s and fetch latency side by side).

Without RANKER_HOME a temporary world of the default demo size is built with the `ranker` CLI
(`data simulate`, `features build`, `features apply`: ~20 s). With RANKER_HOME its feature tables and
registry are used (run `ranker features build` and `ranker features apply` first); the online load
happens in a temporary copy of the registry, so RANKER_HOME itself is not modified.

Each request: one random user, N random live listings, a random query (search services). Prints
p50/p99 per candidate count for OnlineFeatures without cache, with a warm item cache (the same
requests replayed: every listing a hit), and the Feast SDK, plus the speed-up, and checks that the
two paths returned bit-identical matrices for every request Feast was timed on.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_world(home: Path) -> None:
    """A world of the default demo size, built with the `ranker` CLI."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "feature_repo", home / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANKER_ONLINE_STORE", "REDIS_URL")}
    env["RANKER_HOME"] = str(home)
    for args in (["data", "simulate"], ["features", "build"], ["features", "apply"]):
        print(f"$ ranker {' '.join(args)}", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"`ranker {' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}")


def _bench_home(source: Path, target: Path):
    """A home sharing ``source``'s feature tables (symlink) with its own registry and sqlite store
    (``feast apply`` of a copy of its feature_repo/), so ``source`` is never modified."""
    from ranker.config import Settings
    from ranker.features.store import apply

    if not (source / "feature_repo").is_dir():
        raise SystemExit(f"{source}/feature_repo not found: RANKER_HOME must be a platform home")
    if not (source / "data" / "features").is_dir():
        raise SystemExit(f"{source}/data/features not found: run `ranker features build`")
    shutil.copytree(source / "feature_repo", target / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "data").mkdir(parents=True)
    (target / "data" / "features").symlink_to((source / "data" / "features").resolve(), target_is_directory=True)
    settings = Settings(home=target)
    apply(settings)
    return settings


def _start_redis(workdir: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (the benchmark starts a private one)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for raw in proc.stdout:
        if b"Ready to accept connections" in raw:
            return proc, port
    raise SystemExit("redis-server exited before it was ready")


def _cluster_port(used: list) -> int:
    """A free port <= 55535 whose cluster bus port (+10000) is free too."""
    while True:
        port = _free_port()
        if port > 55535 or port in used:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def _start_cluster(workdir: Path) -> tuple[list, str]:
    """Three cluster-enabled redis-servers made one cluster (no replicas); (processes, seed URL)."""
    import redis

    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise SystemExit("redis-server/redis-cli are not installed (the benchmark starts a private cluster)")
    ports: list[int] = []
    procs = []
    for _ in range(3):
        port = _cluster_port(ports)
        ports.append(port)
        d = workdir / str(port)
        d.mkdir(parents=True)
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(d / "nodes.conf"),
                    "--dir",
                    str(d),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    until = time.monotonic() + 60
    for port in ports:
        while True:
            try:
                if redis.Redis(port=port).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > until:
                    raise SystemExit(f"redis-server on {port} did not start") from None
    subprocess.run(
        [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for port in ports:
        while redis.Redis(port=port).cluster("INFO").get("cluster_state") != "ok":
            if time.monotonic() > until:
                raise SystemExit(f"cluster node {port} not ok within 60 s")
    return procs, "redis://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def _requests(settings, service: str, sizes: list[int], count: int, seed: int) -> dict:
    import pandas as pd

    end = datetime.now(timezone.utc)

    def latest(name: str, keys: list[str]) -> pd.DataFrame:
        df = pd.read_parquet(settings.features_dir / f"{name}.parquet")
        df = df[df.event_timestamp <= end]
        return df.sort_values("event_timestamp").groupby(keys, as_index=False).tail(1)

    listings = latest("listings", ["item_id"])
    live = listings.item_id[listings.is_sold == 0].to_numpy(dtype=object)
    users = latest("user_stats", ["user_id"]).user_id.to_numpy(dtype=object)
    queries = latest("query_category_stats", ["query", "category"])["query"].unique()
    rng = np.random.default_rng(seed)
    search = service.startswith("search")
    now = int(end.timestamp())
    out = {}
    for size in sizes:
        if size > len(live):
            raise SystemExit(f"only {len(live)} live listings: cannot draw {size} candidates")
        out[size] = [
            dict(
                user_id=str(rng.choice(users)),
                item_ids=[str(i) for i in rng.choice(live, size=size, replace=False)],
                query=str(rng.choice(queries)) if search else None,
                request_ts=now,
            )
            for _ in range(count)
        ]
    return out


def _timed(fn, requests: list[dict]) -> tuple[np.ndarray, list]:
    times, results = [], []
    for req in requests:
        t0 = time.perf_counter()
        results.append(fn(**req))
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1000, results


def _pct(ms: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _identical(a, b) -> bool:
    if a.matrix.shape != b.matrix.shape or not np.array_equal(a.matrix, b.matrix, equal_nan=True):
        return False
    both = ~np.isnan(b.matrix)
    return bool(
        np.array_equal(a.matrix[both].view(np.uint32), b.matrix[both].view(np.uint32))
        and np.array_equal(a.known, b.known)
        and np.array_equal(a.sold, b.sold)
    )


def _breakdown(online, reqs: list[dict]) -> None:
    """Median time per request in each stage of OnlineFeatures.fetch (cache off), by wrapping its
    internal steps while it runs: store round trips (round 2's includes the wait left after the work
    that overlaps it), decoding, and the matrix assembly with the on-demand transforms
    (the stored on-demand functions) inside it."""
    spent: dict = {}

    def timed(label, fn):
        @functools.wraps(fn)  # keeps __module__: the feature path calls ranker's own transforms without pandas
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        return wrapper

    import dataclasses

    from ranker.serving import features
    from ranker.serving.assembly import Assembly

    backend = online._backend
    saved = list(online._plan.odfvs)
    online._plan.odfvs = [
        dataclasses.replace(v, function=timed("of which on-demand functions", v.function)) for v in saved
    ]
    for method in ("send", "receive"):  # every round is sent, then received (round 2 after the work it overlaps)
        setattr(backend, method, timed("store round trips", getattr(backend, method)))
    place_all = features.place_all
    features.place_all = timed("place blocks", place_all)
    assembly = Assembly
    add, matrix = assembly.add, assembly.matrix
    assembly.add = timed("assemble (matrix, defaults, on-demand)", add)
    assembly.matrix = timed("assemble (matrix, defaults, on-demand)", matrix)
    per_request = {}
    try:
        for req in reqs:
            before = dict(spent)
            t0 = time.perf_counter()
            online.fetch(**req)
            per_request.setdefault("total fetch", []).append(time.perf_counter() - t0)
            for label, value in spent.items():
                per_request.setdefault(label, []).append(value - before.get(label, 0.0))
    finally:
        del backend.send, backend.receive
        features.place_all = place_all
        assembly.add, assembly.matrix = add, matrix
        online._plan.odfvs = saved
    n = len(reqs[0]["item_ids"])
    order = [
        "total fetch",
        "store round trips",
        "place blocks",
        "assemble (matrix, defaults, on-demand)",
        "of which on-demand functions",
    ]
    print(
        f"stages for {n} candidates, cache off (median ms per request): "
        + ", ".join(f"{label} {np.median(per_request[label]) * 1000:.2f}" for label in order if label in per_request)
    )


def run(settings, args) -> None:
    from ranker.features.materialize import materialize
    from ranker.features.store import feature_store, service_spec
    from ranker.features.reference import feast_reference
    from ranker.serving.features import OnlineFeatures

    t0 = time.perf_counter()
    summary = materialize(settings, full=True)
    where = settings.redis_url if settings.online_store == "redis" else "sqlite (temporary copy)"
    kind = "redis cluster" if settings.redis_cluster else settings.online_store
    seconds = time.perf_counter() - t0
    print(
        f"\nonline store {kind}: {where}; materialized {summary['rows']:,} rows in {seconds:.1f} s "
        f"({summary['rows'] / seconds:,.0f} rows/s)"
    )
    store = feature_store(settings)
    spec = service_spec(store, args.service)
    requests = _requests(settings, args.service, args.sizes, args.requests, args.seed)
    plain = OnlineFeatures(settings, service=args.service, timeout_s=1.0)
    cached = OnlineFeatures(settings, service=args.service, timeout_s=1.0, item_cache_ttl_s=3600)
    # Warm up every path once (imports, connections, Feast's registry cache), then freeze the heap as
    # the scorer does after start-up (gen-2 collections otherwise dominate p99).
    warm = requests[args.sizes[0]][0]
    plain.fetch(**warm)
    feast_reference(store, spec, **warm)
    gc.collect()
    gc.freeze()
    print(
        f"service {args.service} ({len(spec.features)} features), {args.requests} requests per size "
        f"(Feast SDK: the first {args.feast_requests}); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    head = (
        f"{'candidates':>10} | {'fetch p50':>9} {'p99':>7} | {'cached p50':>10} {'p99':>7} | "
        f"{'Feast SDK p50':>13} {'p99':>7} | {'speed-up p50':>12} {'p99':>6} {'cached p50':>10} | identical"
    )
    print(head)
    print("-" * len(head))
    for size in args.sizes:
        reqs = requests[size]
        ours_ms, ours = _timed(plain.fetch, reqs)
        for req in reqs:
            cached.fetch(**req)
        hits0, misses0 = cached.cache_hits, cached.cache_misses
        cached_ms, cached_rows = _timed(cached.fetch, reqs)
        hits, misses = cached.cache_hits - hits0, cached.cache_misses - misses0
        n_feast = min(args.feast_requests, len(reqs))
        feast_ms, feast_rows = _timed(lambda **r: feast_reference(store, spec, **r), reqs[:n_feast])
        same = sum(_identical(a, b) for a, b in zip(ours, feast_rows, strict=False))
        same_cached = sum(_identical(a, b) for a, b in zip(cached_rows, feast_rows, strict=False))
        (o50, o99), (c50, c99), (f50, f99) = _pct(ours_ms), _pct(cached_ms), _pct(feast_ms)
        print(
            f"{size:>10} | {o50:>7.2f}ms {o99:>5.2f}ms | {c50:>8.2f}ms {c99:>5.2f}ms | {f50:>11.2f}ms {f99:>5.2f}ms | "
            f"{f50 / o50:>11.1f}x {f99 / o99:>5.1f}x {f50 / c50:>9.1f}x | {same}/{n_feast} "
            f"(cached {same_cached}/{n_feast}, hit rate {hits / max(1, hits + misses):.0%})"
        )
    _breakdown(plain, requests[200] if 200 in requests else requests[args.sizes[0]])
    gc.unfreeze()
    plain.close()
    cached.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", default="search_ranker_v1")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--requests", type=int, default=300, help="Timed requests per size for OnlineFeatures.")
    parser.add_argument(
        "--feast-requests", type=int, default=60, help="Of those, how many also go through the slower Feast SDK."
    )
    parser.add_argument("--store", choices=["redis", "sqlite", "both", "cluster", "redis+cluster"], default="redis")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO_ROOT))
    import _stack  # beside this script

    print(_stack.machine_speed())

    tmp = Path(tempfile.mkdtemp(prefix="online-features-bench-"))
    proc = None
    cluster: list = []
    try:
        source = os.environ.get("RANKER_HOME")
        if source:
            source_home = Path(source).resolve()
        else:
            source_home = tmp / "world"
            print(f"building a world of the default demo size in {source_home}")
            _build_world(source_home)
        base = _bench_home(source_home, tmp / "bench")
        if args.store in ("redis", "both", "redis+cluster"):
            (tmp / "redis").mkdir()
            proc, port = _start_redis(tmp / "redis")
            run(base.with_(online_store="redis", redis_url=f"redis://127.0.0.1:{port}/0"), args)
        if args.store in ("cluster", "redis+cluster"):
            cluster, seeds = _start_cluster(tmp / "cluster")
            run(base.with_(online_store="redis", redis_cluster=True, redis_url=seeds), args)
        if args.store in ("sqlite", "both"):
            run(base, args)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        for node in cluster:
            os.killpg(node.pid, 15)
            node.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(_stack.machine_speed())


if __name__ == "__main__":
    main()
