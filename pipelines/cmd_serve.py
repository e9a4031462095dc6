"""`ranker serve`: run the Flask scorer under gunicorn (production) or Flask's dev server (local).

The app and its settings live in ``api/``; this command only prepares the process environment and
starts the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

import click

from ranker.errors import RankerError


@contextlib.contextmanager
def serving(
    *,
    port: int,
    workers: int,
    env: Mapping[str, str] | None = None,
    log_level: str | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Run `ranker serve` in a child process and yield its base URL once ``/readyz`` answers 200;
    stop it (SIGTERM to its process group: workers flush on exit) when the block ends. RankerError
    when it exits or is not ready within ``ready_timeout_s``. Used by the demo and the benchmarks."""
    import socket

    with socket.socket() as probe:  # another process on the port would answer the readiness poll below
        # SO_REUSEADDR as gunicorn binds: a closed scorer's connections in TIME_WAIT do not hold the
        # port, a live listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RankerError(f"port {port} on 127.0.0.1 is in use by another process; choose another") from None
    args = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workers", str(workers)]
    if log_level:
        args += ["--log-level", log_level]
    proc = subprocess.Popen(args, env=None if env is None else dict(env), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:  # bounded readiness poll over HTTP
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RankerError(f"the scorer on port {port} did not become ready")
            time.sleep(0.25)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _clear_multiproc_dir(folder: Path) -> None:
    # prometheus_client's files from an earlier run would be summed into this run's counters.
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def _run_gunicorn(*, host: str, port: int, workers: int, log_level: str) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ranker-gunicorn-"))
    try:
        # gunicorn 27 reads XDG_RUNTIME_DIR when its config module is imported (control socket path):
        # set it first, to a private folder, so nothing is written under ~/.gunicorn.
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc:
            Path(multiproc).mkdir(parents=True, exist_ok=True)
            _clear_multiproc_dir(Path(multiproc))
        elif workers > 1:
            # Without it each worker would report only its own counters on /metrics.
            folder = runtime / "prometheus"
            folder.mkdir()
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)

        # The command's options are the server settings of the one gunicorn configuration
        # (api/gunicorn_conf.py, which the image and `make stack` load too): pass them the same way.
        os.environ.update(
            {"RANKER_BIND": f"{host}:{port}", "RANKER_WORKERS": str(workers), "RANKER_LOG_LEVEL": log_level}
        )
        # A bad RANKER_* setting: one error line now, not a worker that fails to boot. (Imported only
        # now: prometheus_client picks its multiprocess mode from the variable above when imported.)
        from api.app import check_config
        from api.settings import ServerConfig

        check_config()
        ServerConfig.from_env()
        server = scorer_server()
        click.echo(f"scorer: http://{host}:{port} ({workers} gunicorn workers)", err=True)
        server.run()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


GUNICORN_CONFIG = "python:api.gunicorn_conf"  # the one configuration: `ranker serve`, `make stack`, the image


def scorer_server():
    """gunicorn's application for the scorer, configured exactly as ``gunicorn -c python:api.gunicorn_conf``
    (the image's command): gunicorn's own loader reads the module, settings and hooks alike."""
    from gunicorn.app.wsgiapp import WSGIApplication

    class ScorerServer(WSGIApplication):
        def load_config(self) -> None:
            self.load_config_from_module_name_or_filename(GUNICORN_CONFIG)
            self.app_uri = self.cfg.wsgi_app

    return ScorerServer()


def _settings_epilog() -> str:
    """The scorer's settings for ``--help``, from their one declaration (api/settings.py)."""
    from api.settings import SCORER_SETTINGS, settings_help

    lines = settings_help(SCORER_SETTINGS).splitlines()
    return "\b\nScorer settings (environment; all of them: docs/reference/settings.md):\n" + "\n".join(
        f"  {line}" for line in lines
    )


def register(cli: click.Group) -> None:
    @cli.command("serve", epilog=_settings_epilog())
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for all).")
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
    @click.option(
        "--workers",
        default=2,
        show_default=True,
        type=click.IntRange(0, 256),
        help="gunicorn worker processes; 0 runs Flask's threaded dev server (local use only).",
    )
    @click.option("--dev", is_flag=True, help="Flask's threaded dev server (same as --workers 0).")
    @click.option(
        "--log-level",
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="Server log level.",
    )
    @click.pass_context
    def serve(ctx: click.Context, host: str, port: int, workers: int, dev: bool, log_level: str) -> None:
        """Serve the ranking API: POST /v1/rank, /healthz, /readyz, /metrics, /openapi.json, POST /admin/reload.

        Each worker loads the production model of every surface from the registry and polls it for
        promotions. gunicorn runs with api/gunicorn_conf.py, the container image's configuration too.
        With several workers, PROMETHEUS_MULTIPROC_DIR (created when unset) lets /metrics add up every worker.
        """
        import logging

        if dev or workers == 0:
            from api.app import check_config, create_app, freeze_heap

            check_config()

            logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            app = create_app(settings=ctx.obj)
            freeze_heap()
            click.echo(f"scorer (dev server, not for production): http://{host}:{port}", err=True)
            try:
                app.run(host=host, port=port, threaded=True, use_reloader=False, debug=False)
            finally:
                app.extensions["ranker"].close()
            return
        _run_gunicorn(host=host, port=port, workers=workers, log_level=log_level)
