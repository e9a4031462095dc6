"""gunicorn settings of the scorer in the container image and in `make stack`:
``gunicorn -c infra/gunicorn.conf.py``.

The hooks come from ``api/gunicorn_conf.py`` (heavy imports in the master before the fork, ``gc.freeze``
of the start-up heap in every worker once the app is loaded, Prometheus multiprocess clean-up); this
file only takes every number from the environment, validated, so one image serves any size of host:

=============================  =======  =============================================================
variable                       default  meaning
=============================  =======  =============================================================
``RANKER_BIND``                0.0.0.0:8000  address:port to listen on
``RANKER_WORKERS``             2        worker processes (CPU-bound scoring: about one per core)
``RANKER_TIMEOUT_S``           30       a worker silent this long is killed and replaced
``RANKER_GRACEFUL_TIMEOUT_S``  10       time to finish in-flight requests on SIGTERM
``RANKER_KEEPALIVE_S``         5        keep-alive behind a load balancer (keep it below the LB's idle timeout)
``RANKER_MAX_REQUESTS``        0        recycle a worker after this many requests (0 = never)
``RANKER_MAX_REQUESTS_JITTER`` 0        random spread of that limit, so workers do not recycle together
``RANKER_ACCESS_LOG``          unset    ``-`` for stdout
``RANKER_LOG_LEVEL``           info     gunicorn log level
=============================  =======  =============================================================
"""

from __future__ import annotations

import os



def _int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} must be >= {minimum}")
    return value


bind = os.environ.get("RANKER_BIND", "0.0.0.0:8000")
workers = _int("RANKER_WORKERS", 2, minimum=1)
worker_class = "sync"  # CPU-bound scoring: one request at a time per process; scale with workers
timeout = _int("RANKER_TIMEOUT_S", 30, minimum=1)
graceful_timeout = _int("RANKER_GRACEFUL_TIMEOUT_S", 10, minimum=0)
keepalive = _int("RANKER_KEEPALIVE_S", 5, minimum=0)
max_requests = _int("RANKER_MAX_REQUESTS", 0, minimum=0)
max_requests_jitter = _int("RANKER_MAX_REQUESTS_JITTER", 0, minimum=0)
wsgi_app = "api.app:create_app()"
loglevel = os.environ.get("RANKER_LOG_LEVEL", "info")
errorlog = "-"
accesslog = os.environ.get("RANKER_ACCESS_LOG") or None
proc_name = "ranker-scorer"
# Worker heartbeats on tmpfs: a container's overlay filesystem can stall them into false timeouts.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 27 opens a control socket under ~/.gunicorn unless told otherwise (the image's home is
# read-only): put it under XDG_RUNTIME_DIR when set, else go without it.
if os.environ.get("XDG_RUNTIME_DIR"):
    control_socket = os.path.join(os.environ["XDG_RUNTIME_DIR"], "gunicorn.ctl")
else:
    control_socket_disable = True

# The hooks, imported after the checks above (api/gunicorn_conf.py parses RANKER_WORKERS itself, unchecked).
from api.gunicorn_conf import child_exit, on_starting, post_worker_init, worker_exit  # noqa: E402,F401 - gunicorn hooks
