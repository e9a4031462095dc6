"""`make stack`: the topology of infra/docker-compose.yml from local processes, on one machine.

=====================  ==============================  ==============================================
compose service        here                            what it does
=====================  ==============================  ==============================================
``redis``              a private ``redis-server``      Feast online store (RANKER_ONLINE_STORE=redis)
``registry`` (MinIO)   moto's S3 server (``moto_server``)  model registry bucket (RANKER_REGISTRY_URI=s3://...)
``jobs``               ``ranker pipeline daily`` etc.  features into Redis, models into the bucket
``scorer``             gunicorn -c python:api.gunicorn_conf  the Flask scorer, polling the registry
=====================  ==============================  ==============================================

Prometheus and Grafana are left out here (they would scrape ``/metrics``; see the compose file).
Every server listens on a free loopback port; everything started is stopped on exit.

Usage::

    python -m infra.stack up [--workers 2] [--reload-interval 5]   # make stack
    # then, in another shell, the printed `export ...` line and e.g.
    ranker registry list; ranker pipeline retrain; curl $SCORER/readyz

The same :class:`LocalStack` is the end-to-end test's fixture (tests/test_stack.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = "python:api.gunicorn_conf"  # the one gunicorn configuration: the image's and `ranker serve`'s


class StackError(RuntimeError):
    """A component did not start; the message says which and shows its last output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate, *, timeout_s: float, what: str, interval_s: float = 0.1, proc: subprocess.Popen | None = None
):
    """Poll ``predicate`` until it returns something truthy or the deadline passes (no blind sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what}: the process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def http_json(url: str, *, body: dict | None = None, timeout_s: float = 5.0) -> tuple[int, dict]:
    """GET (or POST ``body`` as JSON) and return (status, decoded JSON); (0, {}) when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, {}


class LocalStack:
    """Redis + an S3-compatible registry + the gunicorn scorer, as local processes.

    Args:
        home: RANKER_HOME (feature_repo/, data/ with feature tables and the Feast registry).
        workers: gunicorn workers.
        reload_interval_s: how often each worker polls the registry for a promotion.
        surfaces: surfaces the scorer serves.
        bucket, prefix: where the model registry lives in the S3 server.
    """

    def __init__(
        self,
        home: Path,
        *,
        workers: int = 2,
        reload_interval_s: float = 5.0,
        surfaces: tuple[str, ...] = ("search", "recs"),
        bucket: str = "ranker-models",
        prefix: str = "registry",
        extra_env: dict | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.workers = workers
        self.reload_interval_s = reload_interval_s
        self.surfaces = surfaces
        self.bucket, self.prefix = bucket, prefix
        self.extra_env = dict(extra_env or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="ranker-stack-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_url = self.s3_endpoint = self.scorer_url = ""
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """The variables every component and `ranker` command of the stack runs with."""
        return {
            "RANKER_HOME": str(self.home),
            "RANKER_ONLINE_STORE": "redis",
            "REDIS_URL": self.redis_url,
            "RANKER_REGISTRY_URI": f"s3://{self.bucket}/{self.prefix}",
            "RANKER_RELOAD_INTERVAL_S": str(self.reload_interval_s),
            "RANKER_SURFACES": ",".join(self.surfaces),
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": "stack",
            "AWS_SECRET_ACCESS_KEY": "stack",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.workdir / "aws-config-absent"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "aws-credentials-absent"),
            **self.extra_env,
        }

    def exports(self) -> str:
        keys = (
            "RANKER_HOME",
            "RANKER_ONLINE_STORE",
            "REDIS_URL",
            "RANKER_REGISTRY_URI",
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
        return "export " + " ".join(f"{k}={self.env[k]}" for k in keys) + f" SCORER={self.scorer_url}"

    def _popen(self, name: str, argv: list[str], *, env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ------------------------------------------------------------------------------ components
    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        data = self.workdir / "redis"
        data.mkdir()
        proc = self._popen(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data),
            ],
        )
        wait_until(
            lambda: "Ready to accept connections" in self.log_tail("redis"),
            timeout_s=20,
            what="redis-server",
            proc=proc,
        )
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    def start_s3(self) -> str:
        binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        if not Path(binary).exists():
            raise StackError("moto_server is not installed (pip install 'moto[server]')")
        port = free_port()
        proc = self._popen("s3", [binary, "-H", "127.0.0.1", "-p", str(port)])
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(endpoint), timeout_s=30, what="the S3 server (moto)", proc=proc)
        self.s3_endpoint = endpoint
        import boto3

        client = boto3.session.Session(
            aws_access_key_id="stack", aws_secret_access_key="stack", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=self.bucket)
        return endpoint

    def ranker(self, *args: str, check: bool = True, timeout_s: float = 900) -> subprocess.CompletedProcess:
        """Run a `ranker` command against the stack (the jobs container of the compose file)."""
        result = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *args],
            cwd=str(REPO_ROOT),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if check and result.returncode != 0:
            raise StackError(f"`ranker {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}")
        return result

    def start_scorer(self, *, port: int | None = None, wait_ready: bool = False, timeout_s: float = 180) -> str:
        """gunicorn with the image's config; returns its URL once /healthz (or /readyz) answers 200."""
        port = port or free_port()
        runtime = self.workdir / "scorer"
        (runtime / "prometheus").mkdir(parents=True)
        env = {
            **self.env,
            "RANKER_BIND": f"127.0.0.1:{port}",
            "RANKER_WORKERS": str(self.workers),
            "RANKER_LOG_LEVEL": "warning",
            "XDG_RUNTIME_DIR": str(runtime),
            "PROMETHEUS_MULTIPROC_DIR": str(runtime / "prometheus"),
        }
        proc = self._popen("scorer", [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF], env=env)
        self.scorer_url = f"http://127.0.0.1:{port}"
        route = "/readyz" if wait_ready else "/healthz"
        try:
            wait_until(
                lambda: http_json(self.scorer_url + route, timeout_s=2)[0] == 200,
                timeout_s=timeout_s,
                what=f"the scorer's {route}",
                interval_s=0.2,
                proc=proc,
            )
        except StackError as exc:
            raise StackError(f"{exc}\n{self.log_tail('scorer')}") from None
        return self.scorer_url

    def stop(self) -> None:
        for name in reversed(list(self.procs)):  # scorer first, the stores last
            proc = self.procs.pop(name)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


# ---------------------------------------------------------------------------------------- make stack


def up(args: argparse.Namespace) -> int:
    """Start everything, bootstrap data and models if needed, print how to reach it, wait for Ctrl-C."""
    from ranker.config import Settings
    from ranker.training.train import MODEL_NAMES

    home = Path(args.home or os.environ.get("RANKER_HOME") or REPO_ROOT).resolve()
    settings = Settings(home=home)
    started = time.perf_counter()
    stack = LocalStack(home, workers=args.workers, reload_interval_s=args.reload_interval)
    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        step = time.perf_counter()
        stack.start_redis()
        stack.start_s3()
        stack.timings["stores"] = time.perf_counter() - step
        print(f"redis {stack.redis_url}  s3 {stack.s3_endpoint} (bucket {stack.bucket})", flush=True)
        step = time.perf_counter()
        if not (settings.raw_dir / "events.parquet").exists():
            print("no data yet: ranker pipeline daily --simulate", flush=True)
            stack.ranker("pipeline", "daily", "--simulate")
        # This Redis is new: load every entity's latest row, whatever earlier runs recorded.
        stack.ranker("features", "materialize", "--full")
        stack.timings["features"] = time.perf_counter() - step
        step = time.perf_counter()
        trained = all(
            list((settings.artifacts_dir / "models" / MODEL_NAMES[s]).glob("*/card.json")) for s in stack.surfaces
        )
        if trained:
            for surface in stack.surfaces:
                stack.ranker("deploy", "--surface", surface)  # newest local model -> bucket -> gate -> production
        else:
            stack.ranker("pipeline", "retrain")
        stack.timings["models"] = time.perf_counter() - step
        step = time.perf_counter()
        stack.start_scorer(port=args.port, wait_ready=True)
        stack.timings["scorer"] = time.perf_counter() - step
        total = time.perf_counter() - started
        status, ready = http_json(stack.scorer_url + "/readyz")
        versions = {s: e.get("version") for s, e in ready.get("surfaces", {}).items()}
        print(f"\nstack ready in {total:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in stack.timings.items()) + ")")
        print(f"scorer {stack.scorer_url}  serving {versions}")
        print("\nIn another shell:\n  " + stack.exports())
        print(
            "  curl -s $SCORER/readyz; ranker registry list; ranker pipeline retrain   # promotions reach the "
            f"scorer within {args.reload_interval:g} s\nCtrl-C stops everything.",
            flush=True,
        )
        while not stop["now"]:
            if stack.procs["scorer"].poll() is not None:
                print("the scorer exited:\n" + stack.log_tail("scorer"), file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the stack and keep it running until Ctrl-C")
    p_up.add_argument("--home", default=None, help="RANKER_HOME (default: $RANKER_HOME or the repository)")
    p_up.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p_up.add_argument("--port", type=int, default=None, help="scorer port (default: a free one)")
    p_up.add_argument("--reload-interval", type=float, default=5.0, help="registry poll period in seconds (default 5)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.reload_interval <= 0:
        parser.error("--workers must be >= 1 and --reload-interval > 0")
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
