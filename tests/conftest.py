"""Shared fixtures: a small simulated marketplace with its Feast repository, and a private
redis-server on a free loopback port (never the machine's shared Redis)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import warnings
from datetime import date
from pathlib import Path

import pytest

from ranker.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# A world small enough for seconds, big enough for every feature to take several values.
SMALL_WORLD = dict(seed=11, users=300, items=900, new_items_per_day=60, days=8, start=date(2026, 10, 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_home(root: Path) -> Settings:
    """A platform home: a copy of feature_repo/ and an empty data folder."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "feature_repo", root / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    return Settings(home=root)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Settings:
    """Simulated raw data, feature tables and an applied Feast registry (sqlite online store)."""
    from ranker.data.simulate import SimConfig, simulate
    from ranker.features.store import apply
    from ranker.jobs.feature_tables import build_feature_tables

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    settings = make_home(tmp_path_factory.mktemp("world"))
    simulate(SimConfig(**SMALL_WORLD), raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
    build_feature_tables(settings)  # `ranker features build`: batch tables and the real-time backfill
    apply(settings)
    return settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port; yields its URL prefix (append /db)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed: Redis tests need a real server")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Synchronise on the server's own "ready" line, not on a sleep.
    seen = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        seen.append(line)
        if "Ready to accept connections" in line:
            break
    else:
        pytest.fail("redis-server exited before it was ready:\n" + "".join(seen))
    yield f"redis://127.0.0.1:{port}"
    proc.stdout.close()
    proc.terminate()
    proc.wait(timeout=10)
