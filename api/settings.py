"""The scorer's and its server's settings, declared once: name, type, default, rule and help text.

Everything else is produced from these declarations: :data:`api.app.DEFAULTS` and
:func:`api.app.config_from_env` (the app's config layers), the validation in
:class:`api.app.ScorerConfig` (which ``ranker serve`` runs before starting workers), the gunicorn
configuration (:mod:`api.gunicorn_conf`), the settings list of ``ranker serve --help`` and the
settings tables of the documentation (``docs/reference/settings.md``, generated at build time by
:func:`settings_markdown`). ``tests/test_settings.py`` checks that every declared setting reaches
the typed config and the docs, and that nothing else is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ranker.config import PLATFORM_SETTINGS, ConfigError, Setting, parse_setting

__all__ = ["SCORER_SETTINGS", "SERVER_SETTINGS", "ALL_SETTINGS", "Setting", "parse_env", "settings_markdown"]


def _at_least(minimum: float) -> Callable[[Any], bool]:
    return lambda value: value >= minimum


def _above(minimum: float) -> Callable[[Any], bool]:
    return lambda value: value > minimum


def _share(value: float) -> bool:
    return 0.0 <= value <= 1.0


def _slots(value: str) -> bool:
    from ranker.serving.exploration import slots_rule

    return slots_rule(value)


# The scorer (api/app.py). ``key`` is the app.config key (the variable name unless Flask's own).
SCORER_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "RANKER_API_TOKEN",
        str,
        "",
        "when set, `/v1/rank` needs `Authorization: Bearer <token>`; `/admin/*` "
        "always needs it (empty: /v1/rank is open and /admin/* refuses every call)",
        group="scorer",
        secret=True,
    ),
    Setting(
        "RANKER_MAX_CANDIDATES",
        int,
        1000,
        "candidates per request (413 above)",
        group="scorer",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_MAX_BODY_BYTES",
        int,
        1 << 20,
        "request body limit in bytes (413 above)",
        group="scorer",
        key="MAX_CONTENT_LENGTH",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_FEATURE_TIMEOUT_MS",
        float,
        50.0,
        "feature fetch budget; past it the answer is degraded",
        group="scorer",
        check=_above(0),
        rule="> 0",
    ),
    Setting(
        "RANKER_RELOAD_INTERVAL_S",
        float,
        30.0,
        "registry poll period (0: only `POST /admin/reload`)",
        group="scorer",
        check=_at_least(0),
        rule=">= 0 (0 disables polling)",
    ),
    Setting(
        "RANKER_ITEM_CACHE_TTL_S",
        float,
        0.0,
        "in-process cache of listing-level features; values are at most this many seconds behind the store "
        "(the sold flag is always read live; 0: no cache)",
        group="scorer",
        check=_at_least(0),
        rule=">= 0 (0 disables the cache)",
    ),
    Setting(
        "RANKER_SURFACES", str, "search,recs", "surfaces to serve, comma-separated (`search`, `recs`)", group="scorer"
    ),
    Setting(
        "RANKER_FETCH_THREADS",
        int,
        8,
        "threads for readiness pings and warm-up fetches (requests fetch on their own thread, with a deadline)",
        group="scorer",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_COMPILED_TREES",
        bool,
        True,
        "predict with the compiled trees when they verify bit-identical to LightGBM at load (0: LightGBM's predict)",
        group="scorer",
    ),
    Setting(
        "RANKER_METRICS_MULTIPROCESS",
        bool,
        False,
        "sum `/metrics` over gunicorn workers "
        "(PROMETHEUS_MULTIPROC_DIR); set by the gunicorn configuration, not by hand",
        group="scorer",
        internal=True,
    ),
    Setting(
        "RANKER_EXPLORE_SLOTS",
        str,
        "",
        "positions reserved for young listings, comma-separated (e.g. `4,8`); each is filled by a seeded "
        "uniform draw among the young candidates and logged with its propensity (empty: off)",
        group="exploration",
        check=_slots,
        rule="distinct comma-separated positions >= 1, or empty",
    ),
    Setting(
        "RANKER_EXPLORE_YOUNG_HOURS",
        float,
        48.0,
        "a candidate is young (can fill a reserved slot) when its `listing_age_hours` is below this",
        group="exploration",
        check=_above(0),
        rule="> 0",
    ),
    Setting(
        "RANKER_EXPLORE_POOL",
        int,
        0,
        "draw among the best this many young candidates by model score (0: every young candidate); "
        "at least the number of slots",
        group="exploration",
        check=_at_least(0),
        rule=">= 0 (0: every young candidate)",
    ),
    Setting(
        "RANKER_EXPLORE_SEED",
        int,
        0,
        "seed of the draws; with the request id it fixes a request's list (replayable)",
        group="exploration",
    ),
    Setting("RANKER_VARIANTS", str, "", "A/B variants per surface, JSON (see the monitoring guide)", group="A/B"),
    Setting("RANKER_VARIANTS_FILE", str, "", "the same JSON in a file", group="A/B"),
    Setting(
        "RANKER_AB_SALT", str, "", "salt of the user's variant assignment (a new salt reshuffles users)", group="A/B"
    ),
    Setting(
        "RANKER_SERVED_LOG_URI",
        str,
        "",
        "where the served-feature log goes: `file:///abs/path` or "
        "`s3://bucket/prefix` (empty: `data/served_log` of the home)",
        group="served log",
    ),
    Setting(
        "RANKER_SERVED_LOG_SAMPLE",
        float,
        0.1,
        "share of requests logged (0 = off, 1 = all)",
        group="served log",
        check=_share,
        rule="between 0 and 1",
    ),
    Setting(
        "RANKER_SERVED_LOG_QUEUE",
        int,
        2000,
        "requests waiting for the writer before drops",
        group="served log",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_SERVED_LOG_ROTATE_ROWS",
        int,
        50_000,
        "a new file after this many rows",
        group="served log",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_SERVED_LOG_ROTATE_S",
        float,
        60.0,
        "a new file after this many seconds",
        group="served log",
        check=_above(0),
        rule="> 0",
    ),
)

# The gunicorn server (api/gunicorn_conf.py: the one configuration of `ranker serve`, `make serve`,
# `make stack` and the container image). `ranker serve --host/--port/--workers` override the first two.
SERVER_SETTINGS: tuple[Setting, ...] = (
    Setting("RANKER_BIND", str, "127.0.0.1:8000", "listen address (the image sets `0.0.0.0:8000`)", group="server"),
    Setting(
        "RANKER_WORKERS",
        int,
        2,
        "worker processes (about one per core: scoring is CPU-bound)",
        group="server",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_TIMEOUT_S",
        int,
        30,
        "a worker silent this long is killed and replaced",
        group="server",
        check=_at_least(1),
        rule=">= 1",
    ),
    Setting(
        "RANKER_GRACEFUL_TIMEOUT_S",
        int,
        10,
        "time to finish in-flight requests on SIGTERM",
        group="server",
        check=_at_least(0),
        rule=">= 0",
    ),
    Setting(
        "RANKER_KEEPALIVE_S",
        int,
        5,
        "keep-alive seconds (below the load balancer's idle timeout)",
        group="server",
        check=_at_least(0),
        rule=">= 0",
    ),
    Setting(
        "RANKER_MAX_REQUESTS",
        int,
        0,
        "recycle a worker after this many requests (0 = never)",
        group="server",
        check=_at_least(0),
        rule=">= 0",
    ),
    Setting(
        "RANKER_MAX_REQUESTS_JITTER",
        int,
        0,
        "random spread of that limit, so workers do not recycle together",
        group="server",
        check=_at_least(0),
        rule=">= 0",
    ),
    Setting("RANKER_ACCESS_LOG", str, "", "`-` for an access log on stdout (empty: none)", group="server"),
    Setting(
        "RANKER_LOG_LEVEL",
        str,
        "info",
        "gunicorn log level",
        group="server",
        check=lambda v: v in ("debug", "info", "warning", "error", "critical"),
        rule="one of debug, info, warning, error, critical",
    ),
)

ALL_SETTINGS: tuple[Setting, ...] = PLATFORM_SETTINGS + SCORER_SETTINGS + SERVER_SETTINGS


def parse_env(settings: tuple[Setting, ...], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{setting.key: value}`` for the settings present (and not blank) in ``env`` (default
    ``os.environ``), parsed and checked; ConfigError names the variable and the rule it breaks."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for setting in settings:
        raw = env.get(setting.env)
        if raw is None or (setting.kind is not str and not raw.strip()):
            continue
        out[setting.key] = parse_setting(setting, raw)
    return out


def check_values(settings: tuple[Setting, ...], values: Mapping[str, Any]) -> None:
    """ConfigError for the first value (by key) that breaks its setting's rule."""
    for setting in settings:
        if setting.check is not None and setting.key in values and not setting.check(values[setting.key]):
            raise ConfigError(f"{setting.env} must be {setting.rule}, got {values[setting.key]!r}")


def settings_help(settings: tuple[Setting, ...]) -> str:
    """One line per setting (``NAME (default): help``), for ``--help`` epilogs."""
    return "\n".join(f"{s.env} ({s.shown_default}): {s.help}" for s in settings if not s.internal)


def settings_markdown() -> str:
    """The settings reference page (Markdown), one table per group, in declaration order."""
    groups: dict[str, list[Setting]] = {}
    for setting in ALL_SETTINGS:
        groups.setdefault(setting.group, []).append(setting)
    titles = {
        "platform": ("Platform", "Read by every `ranker` command and the scorer (`ranker/config.py`)."),
        "scorer": (
            "Scorer",
            "Read by the scorer at start (`api/settings.py`); `ranker serve` checks them before "
            "starting workers, so a bad value is one error line.",
        ),
        "stream": (
            "Event stream",
            "Read by `ranker stream ...` (`ranker/config.py`): the broker, the partitions, event-time "
            "lateness and checkpoints (docs/guides/streaming.md).",
        ),
        "exploration": (
            "Exploration",
            "Reserved slots for new listings, logged with propensities (`ranker.serving.exploration`, "
            "docs/guides/exploration.md). Off while `RANKER_EXPLORE_SLOTS` is empty.",
        ),
        "A/B": ("A/B variants", "Which model serves which users (`ranker.monitoring.abtest`)."),
        "served log": ("Served-feature log", "What the scorer logs for the skew, drift and online monitors."),
        "server": (
            "Server (gunicorn)",
            "`api/gunicorn_conf.py`, the one gunicorn configuration of `ranker serve`, "
            "`make serve`, `make stack` and the container image.",
        ),
    }
    lines = [
        "# Settings",
        "",
        "<!-- Generated from the declarations in ranker/config.py and api/settings.py by docs/hooks.py: "
        "edit those, not this page. -->",
        "",
        "Every setting is an environment variable, read once when a command or the scorer starts. "
        "A value that does not parse or breaks its rule stops the start with one line naming it.",
        "",
    ]
    for group, members in groups.items():
        title, intro = titles.get(group, (group, ""))
        lines += [f"## {title}", "", intro, "", "| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
        for s in members:
            rule = f" Must be {s.rule}." if s.rule else ""
            internal = " *(internal)*" if s.internal else ""
            lines.append(f"| `{s.env}` | {s.kind.__name__} | {s.shown_default} | {s.help}.{rule}{internal} |")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class ServerConfig:
    """The gunicorn settings, parsed and checked (api/gunicorn_conf.py turns them into gunicorn's)."""

    bind: str
    workers: int
    timeout: int
    graceful_timeout: int
    keepalive: int
    max_requests: int
    max_requests_jitter: int
    accesslog: str | None
    loglevel: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerConfig":
        values = {s.key: s.default for s in SERVER_SETTINGS}
        values.update(parse_env(SERVER_SETTINGS, env))
        check_values(SERVER_SETTINGS, values)
        return cls(
            bind=values["RANKER_BIND"],
            workers=values["RANKER_WORKERS"],
            timeout=values["RANKER_TIMEOUT_S"],
            graceful_timeout=values["RANKER_GRACEFUL_TIMEOUT_S"],
            keepalive=values["RANKER_KEEPALIVE_S"],
            max_requests=values["RANKER_MAX_REQUESTS"],
            max_requests_jitter=values["RANKER_MAX_REQUESTS_JITTER"],
            accesslog=values["RANKER_ACCESS_LOG"] or None,
            loglevel=values["RANKER_LOG_LEVEL"],
        )
