"""The one gunicorn configuration of the scorer: ``ranker serve`` and ``make serve`` load it (their
``--host/--port/--workers/--log-level`` options override those settings), ``make stack``
(``infra/stack.py``) and the container image run ``gunicorn -c python:api.gunicorn_conf``.
``tests/test_gunicorn_conf.py`` checks that all of them load this module with the same hooks.

The numbers come from the environment (declared in :data:`api.settings.SERVER_SETTINGS`: defaults,
rules, help; a bad value stops the start with one line), so one image serves any size of host.
Workers load the app after the fork (no ``preload_app``): each worker owns its models, feature
path, registry poller thread and fetch pool, since threads do not survive a fork.
"""

from __future__ import annotations

import os

from api.settings import ServerConfig
from ranker.config import ConfigError

try:
    _server = ServerConfig.from_env()
except ConfigError as _exc:
    raise SystemExit(f"error: {_exc}") from None

bind = _server.bind
workers = _server.workers
# CPU-bound scoring: one request at a time per process; scale with workers. Measured here
# (benchmarks/rank_load.py, 2 workers, 200 candidates): sync 437 req/s; gthread with 2 or 4
# threads per worker 265 req/s (GIL hand-offs between the threads of a worker cost more than the
# Redis waits they overlap), and no latency gain from its keep-alive.
worker_class = "sync"
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout
keepalive = _server.keepalive  # used by threaded/async workers only; kept for a switch of worker class
max_requests = _server.max_requests
max_requests_jitter = _server.max_requests_jitter
wsgi_app = "api.app:create_app()"
errorlog = "-"
accesslog = _server.accesslog
loglevel = _server.loglevel
proc_name = "ranker-scorer"
# Worker heartbeats on tmpfs: a container's overlay filesystem can stall them into false timeouts.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 27 opens a control socket under ~/.gunicorn unless told otherwise (the image's home is
# read-only): put it under XDG_RUNTIME_DIR when set, else go without it.
if os.environ.get("XDG_RUNTIME_DIR"):
    control_socket = os.path.join(os.environ["XDG_RUNTIME_DIR"], "gunicorn.ctl")
else:
    control_socket_disable = True

HOOKS = ("on_starting", "post_fork", "post_worker_init", "worker_exit", "child_exit")


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


def post_fork(server, worker) -> None:
    """In each worker: close a finished connection at once when its client left nothing unread.

    gunicorn 27's sync worker ends every request with ``util.close_graceful``: shut the write
    side, then wait (up to 2 s) for the client to close its side, reading what it still sends, so
    that unread request bytes cannot turn the close into a reset that truncates the response. A
    sync worker serves one connection at a time, so that wait (a round trip to the client, more
    when the client is slow to close) is time it serves no one: measured here, +8-13% requests/s
    with 2 workers without it. When nothing is unread there is no reset to fear, so the socket is
    closed at once; with bytes unread (e.g. a 413 answered before its body was read) the
    graceful drain still runs."""
    import socket
    import ssl

    from gunicorn import util

    graceful = getattr(util, "close_graceful", None)
    if graceful is None or getattr(graceful, "ranker_fast", False):
        return

    def close(sock, *args, **kwargs):
        if isinstance(sock, ssl.SSLSocket):
            return graceful(sock, *args, **kwargs)
        try:
            unread = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            unread = b""  # nothing received and not closed: nothing to reset over
        except OSError:
            unread = b""  # reset or gone already
        if unread:
            return graceful(sock, *args, **kwargs)
        try:
            sock.close()
        except OSError:
            pass

    close.ranker_fast = True  # type: ignore[attr-defined]  # a marker on the function: installed once (see above)
    util.close_graceful = close


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
