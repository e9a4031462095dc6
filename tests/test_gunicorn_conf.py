"""One gunicorn configuration: the image's command, `make stack` and `ranker serve` load the same
module (api/gunicorn_conf.py) with the same hooks, including post_fork (the fast close measured at
+8-13% requests/s), so the figures measured through `ranker serve` describe the image."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

_COMPARE = """
import json, sys
from gunicorn.app.wsgiapp import WSGIApplication

def describe(cfg):
    hooks = {}
    for name in ("on_starting", "post_fork", "post_worker_init", "worker_exit", "child_exit", "pre_fork", "when_ready"):
        fn = cfg.settings[name].get()
        hooks[name] = f"{fn.__module__}.{fn.__qualname__}"
    keys = ("bind", "workers", "worker_class_str", "timeout", "graceful_timeout", "keepalive", "max_requests",
            "wsgi_app", "loglevel", "worker_tmp_dir", "proc_name", "control_socket")
    return {"hooks": hooks, "settings": {k: getattr(cfg, k) for k in keys}}

# 1. The image's CMD, as gunicorn's own command line parses it.
sys.argv = CMD
image = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
out = {"image": describe(image.cfg), "image_app": image.app_uri}
# 2. `ranker serve` (its options reach the same module through the environment it sets).
from pipelines.cmd_serve import scorer_server
serve = scorer_server()
out["serve"] = describe(serve.cfg)
out["serve_app"] = serve.app_uri
print(json.dumps(out))
"""


def _image_command() -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    return json.loads(re.findall(r"^CMD (\[.*\])$", text, flags=re.M)[-1])


def test_image_stack_and_ranker_serve_load_the_same_gunicorn_configuration(tmp_path):
    from infra.stack import GUNICORN_CONF
    from pipelines.cmd_serve import GUNICORN_CONFIG

    command = _image_command()
    assert command[:2] == ["gunicorn", "-c"]
    assert command[2] == GUNICORN_CONF == GUNICORN_CONFIG == "python:api.gunicorn_conf"
    assert not (REPO_ROOT / "infra" / "gunicorn.conf.py").exists(), "a second gunicorn configuration is back"

    env = {
        "PATH": "/usr/bin:/bin",
        "XDG_RUNTIME_DIR": str(tmp_path),
        "RANKER_BIND": "127.0.0.1:9",
        "RANKER_WORKERS": "3",
        "RANKER_LOG_LEVEL": "warning",
    }
    code = f"CMD = {command!r}\n" + _COMPARE
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["image"] == out["serve"]
    assert out["image_app"] == out["serve_app"] == "api.app:create_app()"
    hooks = out["image"]["hooks"]
    for name in ("on_starting", "post_fork", "post_worker_init", "worker_exit", "child_exit"):
        assert hooks[name] == f"api.gunicorn_conf.{name}", hooks
    settings = out["image"]["settings"]
    assert settings["workers"] == 3 and settings["bind"] == ["127.0.0.1:9"] and settings["worker_class_str"] == "sync"
    assert settings["control_socket"] == str(tmp_path / "gunicorn.ctl")


def test_the_hooks_listed_by_the_configuration_are_its_functions():
    import api.gunicorn_conf as conf

    for name in conf.HOOKS:
        assert callable(getattr(conf, name)) and getattr(conf, name).__module__ == "api.gunicorn_conf"


def test_serving_refuses_a_port_another_process_listens_on():
    """`serving()` (demo, benchmarks) checks the port first: another listener would answer its readiness poll."""
    import socket

    from pipelines.cmd_serve import serving
    from ranker.errors import RankerError

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RankerError, match=f"port {port} on 127.0.0.1 is in use"):
            with serving(port=port, workers=1):
                pass
