"""gunicorn settings of the scorer (``ranker serve`` loads them; also usable directly with
``gunicorn -c python:api.gunicorn_conf``).

Workers load the app after the fork (no ``preload_app``): each worker owns its models, feature
path, registry poller thread and fetch pool, since threads do not survive a fork.
"""

from __future__ import annotations

import os

bind = os.environ.get("RANKER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RANKER_WORKERS", "2"))
# CPU-bound scoring: one request at a time per process; scale with workers. Measured here
# (benchmarks/rank_load.py, 2 workers, 200 candidates): sync 437 req/s; gthread with 2 or 4
# threads per worker 265 req/s (GIL hand-offs between the threads of a worker cost more than the
# Redis waits they overlap), and no latency gain from its keep-alive.
worker_class = "sync"
timeout = 30
graceful_timeout = 10
keepalive = 2
wsgi_app = "api.app:create_app()"
errorlog = "-"
loglevel = os.environ.get("RANKER_LOG_LEVEL", "info")
# gunicorn 27 opens a control socket under ~/.gunicorn unless told otherwise; keep it per instance.
if os.environ.get("XDG_RUNTIME_DIR"):
    control_socket = os.path.join(os.environ["XDG_RUNTIME_DIR"], "gunicorn.ctl")


def on_starting(server) -> None:
    """In the master, before any worker (and before feast, which sets PROMETHEUS_MULTIPROC_DIR to a
    temp folder of its own when imported): if the launcher set PROMETHEUS_MULTIPROC_DIR, have the
    workers sum /metrics over it, and point feast's variable at the same folder."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        os.environ["RANKER_METRICS_MULTIPROCESS"] = "1"
        os.environ.setdefault("PROMETHEUS_MULTIPROCESS_DIR", folder)
    # Import the heavy libraries once, here: workers fork with them loaded and boot in well under a
    # second instead of ~6 s each (feast alone takes ~4 s). Imports only: no thread, connection or
    # OpenMP work happens before the fork; the app itself is still built in each worker.
    import feast.feature_store  # noqa: F401
    import lightgbm  # noqa: F401

    import api.app  # noqa: F401
    import ranker.serving.features  # noqa: F401

    # The compiled kernels (RESP parsing, tree inference): compiled or loaded from numba's cache
    # once here, so workers fork with the machine code in memory.
    from ranker.serving import resp, trees

    resp.warm_up()
    trees.warm_up()


def post_worker_init(worker) -> None:
    """The app is loaded: freeze the start-up heap so gen-2 collections skip it (p99 spikes)."""
    from api.app import freeze_heap

    freeze_heap()


def worker_exit(server, worker) -> None:
    """Stop the registry poller and close the feature paths of the exiting worker."""
    app = getattr(worker, "wsgi", None)
    scorer = getattr(app, "extensions", {}).get("ranker") if app is not None else None
    if scorer is not None:
        scorer.close()


def child_exit(server, worker) -> None:
    """In Prometheus multiprocess mode, drop the dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
