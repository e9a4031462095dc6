"""Shared set-up for the scorer benchmarks: a private redis-server on a free loopback port loaded
with the features of RANKER_HOME (run `make demo` first), the scorer under gunicorn, and request
bodies drawn from the simulated data. Everything it starts, it stops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis():
    """Yield the URL of a fresh redis-server; stop and delete it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: the benchmarks measure the Redis online store")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for raw in proc.stdout:
        if b"Ready to accept connections" in raw:
            break
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def redis_settings(redis_url: str):
    """Settings of RANKER_HOME switched to the given Redis, with its features materialized."""
    from ranker.config import Settings
    from ranker.features.materialize import materialize

    settings = Settings.from_env().with_(online_store="redis", redis_url=redis_url)
    if not (settings.features_dir / "item_stats.parquet").exists():
        raise SystemExit(f"no feature tables under {settings.features_dir}: run `make demo` first")
    materialize(settings, full=True)
    return settings


def request_bodies(settings, *, surface: str, candidates: int, n: int, seed: int = 0) -> list[dict]:
    """Realistic requests: random known users, live listings as candidates, a query on search."""
    import duckdb

    con = duckdb.connect()
    raw = settings.raw_dir
    users = [r[0] for r in con.execute(f"SELECT user_id FROM read_parquet('{raw}/users.parquet')").fetchall()]
    items = [r[0] for r in con.execute(f"SELECT item_id FROM read_parquet('{raw}/listings.parquet') WHERE sold_at IS NULL").fetchall()]
    queries = [r[0] for r in con.execute(
        f"SELECT DISTINCT query FROM read_parquet('{raw}/events.parquet') WHERE query IS NOT NULL LIMIT 500").fetchall()]
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(n):
        body = {"surface": surface, "user_id": str(rng.choice(users)),
                "items": [str(x) for x in rng.choice(items, size=candidates, replace=False)]}
        if surface == "search":
            body["query"] = str(rng.choice(queries))
        bodies.append(body)
    return bodies


@contextlib.contextmanager
def gunicorn(settings, *, workers: int, extra_env: dict | None = None):
    """Run `ranker serve` against the given settings; yield its base URL once /readyz answers."""
    from pipelines.cmd_serve import serving

    port = free_port()
    env = {**os.environ, "RANKER_HOME": str(settings.home), "RANKER_ONLINE_STORE": settings.online_store,
           "REDIS_URL": settings.redis_url, "RANKER_RELOAD_INTERVAL_S": "0", **(extra_env or {})}
    with serving(port=port, workers=workers, env=env, log_level="warning", ready_timeout_s=180) as base:
        yield base


def post(conn, body: bytes) -> tuple[int, bytes]:
    """One POST /v1/rank on a keep-alive http.client connection (reconnects if the server closed it)."""
    for attempt in range(2):
        try:
            conn.request("POST", "/v1/rank", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except (ConnectionError, OSError):
            conn.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


def summary(samples_ms: list[float]) -> str:
    a = np.asarray(samples_ms)
    return f"p50 {np.percentile(a, 50):7.2f} ms  p99 {np.percentile(a, 99):7.2f} ms  mean {a.mean():7.2f} ms"


def dumps(body: dict) -> bytes:
    return json.dumps(body).encode()


__all__ = ["free_port", "private_redis", "redis_settings", "request_bodies", "gunicorn", "post", "summary", "dumps", "Path"]
