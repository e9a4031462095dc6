"""One settings object for the whole platform, built from the environment at the top of a command
and passed down. Nothing here does I/O at import time.

Layout (everything derives from ``home``, the folder holding ``feature_repo/`` and ``data/``)::

    {home}/feature_repo/         Feast declarations (feature_store.yaml points at ../data/feast/)
    {home}/data/raw/             events, listings, users, sellers (simulated or imported)
    {home}/data/ground_truth/    the simulator's hidden utility (evaluation only, never a feature)
    {home}/data/features/        batch feature tables, one parquet per feature view source
    {home}/data/feast/           Feast registry and the embedded sqlite online store
    {home}/artifacts/            training sets, models, reports, the local model registry
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from ranker.errors import RankerError

ONLINE_STORES = ("sqlite", "redis")
# Scale-out engines (docs/guides/scale-out.md): the default of each runs in this process.
FEATURE_ENGINES = ("duckdb", "spark")
TRAIN_ENGINES = ("local", "dask")


class ConfigError(RankerError, ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Setting:
    """One environment setting, declared once: what parses it, its default, its rule and help text.

    The platform's are :data:`PLATFORM_SETTINGS` below; the scorer's and its server's are in
    ``api/settings.py``. Defaults, parsing, validation, ``--help`` texts and the documentation's
    settings tables are all produced from these declarations."""

    env: str  # the environment variable
    kind: type  # str, int, float or bool
    default: Any
    help: str
    group: str = "platform"
    key: str = ""  # where the parsed value goes (app.config key); default: the variable name
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # what check demands, for messages and docs (e.g. ">= 1")
    doc_default: str = ""  # how the docs show the default, when not the value itself
    internal: bool = False  # set by the platform itself, not by users
    secret: bool = False

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.env)

    @property
    def shown_default(self) -> str:
        """The default as the docs and ``--help`` show it."""
        if self.doc_default:
            return self.doc_default
        if self.kind is bool:
            return "1" if self.default else "0"
        if self.default == "":
            return "empty"
        if self.kind is float:
            return f"{self.default:g}"
        return f"`{self.default}`" if self.kind is str else str(self.default)


def parse_bool(raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off (any case); ValueError otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def parse_setting(setting: Setting, raw: str) -> Any:
    """The value of ``raw`` for ``setting``; ConfigError names the variable when it does not parse."""
    try:
        if setting.kind is bool:
            return parse_bool(raw)
        if setting.kind is str:
            return raw.strip()
        return setting.kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{setting.env}={raw!r} is not a valid {setting.kind.__name__}") from None


PLATFORM_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "RANKER_HOME",
        str,
        "",
        "the folder holding `feature_repo/`, `data/`, `artifacts/`",
        doc_default="current folder",
    ),
    Setting(
        "RANKER_ONLINE_STORE",
        str,
        "sqlite",
        "`sqlite` (embedded) or `redis`",
        check=lambda v: v in ONLINE_STORES,
        rule="one of " + ", ".join(ONLINE_STORES),
    ),
    Setting(
        "REDIS_URL",
        str,
        "redis://127.0.0.1:6379/0",
        "the Redis online store when `RANKER_ONLINE_STORE=redis` "
        "(a Redis Cluster: seed nodes `redis://h1:p1,h2:p2` or `redis+cluster://...`)",
    ),
    Setting(
        "RANKER_REDIS_CLUSTER",
        bool,
        False,
        "the Redis online store is a Redis Cluster (`REDIS_URL` lists seed "
        "nodes); also implied by a `redis+cluster://` URL",
    ),
    Setting(
        "RANKER_REGISTRY_URI",
        str,
        "",
        "model registry: `file:///abs/path` or `s3://bucket/prefix`",
        doc_default="empty = `artifacts/registry`",
    ),
    Setting(
        "RANKER_FEAST_REGISTRY",
        str,
        "",
        "Feast registry: a `postgresql://` URL selects Feast's SQL registry, shared by scorers and jobs",
        doc_default="empty = `data/feast/registry.db`",
    ),
    Setting(
        "RANKER_FEATURE_ENGINE",
        str,
        "duckdb",
        "engine of `ranker features build` and of the point-in-time "
        "join of `ranker dataset build`: `duckdb` (this process) or `spark`",
        check=lambda v: v.lower() in FEATURE_ENGINES,
        rule="one of " + ", ".join(FEATURE_ENGINES),
    ),
    Setting(
        "RANKER_SPARK_MASTER",
        str,
        "local[2]",
        "Spark master of the spark engine (`local[N]`, `spark://host:7077`, `yarn`, `k8s://...`)",
    ),
    Setting(
        "RANKER_TRAIN_ENGINE",
        str,
        "local",
        "engine of `ranker train`: `local` (one LightGBM process) or `dask` (lightgbm.dask)",
        check=lambda v: v.lower() in TRAIN_ENGINES,
        rule="one of " + ", ".join(TRAIN_ENGINES),
    ),
    Setting(
        "RANKER_DASK_SCHEDULER",
        str,
        "",
        "Dask scheduler address of the dask engine (`tcp://host:8786`)",
        doc_default="empty = a LocalCluster of `RANKER_DASK_WORKERS` processes",
    ),
    Setting(
        "RANKER_DASK_WORKERS",
        int,
        2,
        "worker processes of the LocalCluster when no scheduler is set",
        check=lambda v: v >= 1,
        rule="at least 1",
    ),
    Setting(
        "RANKER_STREAM_URL",
        str,
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        "the event stream's RabbitMQ (AMQP URL; stream queues, docs/guides/streaming.md)",
        group="stream",
        doc_default="`amqp://guest:guest@127.0.0.1:5672/%2F`",
        secret=True,
    ),
    Setting(
        "RANKER_STREAM_NAME",
        str,
        "ranker-events",
        "name of the event stream; partition k is the stream queue `<name>-p<k>`",
        group="stream",
    ),
    Setting(
        "RANKER_STREAM_PARTITIONS",
        int,
        4,
        "partitions of the event stream (entities hashed by id; one active consumer each)",
        group="stream",
        check=lambda v: v >= 1,
        rule="at least 1",
    ),
    Setting(
        "RANKER_STREAM_LATENESS_S",
        float,
        300.0,
        "allowed lateness of an event behind the partition's watermark, seconds (later ones are counted, not applied)",
        group="stream",
        check=lambda v: v >= 0,
        rule="at least 0",
    ),
    Setting(
        "RANKER_STREAM_CHECKPOINT_S",
        float,
        1.0,
        "seconds between the processor's checkpoints (offset + window state, atomically)",
        group="stream",
        check=lambda v: v > 0,
        rule="more than 0",
    ),
)
_PLATFORM = {s.env: s for s in PLATFORM_SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Platform settings. Build with :meth:`from_env`; override in tests with :meth:`with_`."""

    home: Path
    online_store: str = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Cluster (RANKER_REDIS_CLUSTER=1 or a redis+cluster:// URL): REDIS_URL lists seed nodes,
    # redis://h1:p1,h2:p2 (docs/guides/scale-out.md, "Redis Cluster").
    redis_cluster: bool = False
    registry_uri: str = ""
    feast_project: str = "fashion_ranking"
    # Feast registry: empty = the file in data/feast/; a postgresql:// URL = Feast's shared SQL registry.
    feast_registry: str = ""
    extra: dict = field(default_factory=dict)
    # Engine of `ranker features build` and of the point-in-time join of `ranker dataset build`.
    feature_engine: str = "duckdb"
    # Spark master for the spark engine: local[N] on one machine, spark://host:7077 (or yarn, k8s://...) on a cluster.
    spark_master: str = "local[2]"
    # Engine of `ranker train`: one LightGBM process, or lightgbm.dask on a Dask cluster.
    train_engine: str = "local"
    # Dask scheduler address (tcp://host:8786); empty = a LocalCluster of dask_workers processes.
    dask_scheduler: str = ""
    dask_workers: int = 2
    # The event stream (docs/guides/streaming.md): RabbitMQ stream queues <stream_name>-p<k>.
    stream_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    stream_name: str = "ranker-events"
    stream_partitions: int = 4
    stream_lateness_s: float = 300.0
    stream_checkpoint_s: float = 1.0

    def __post_init__(self) -> None:
        for env, value in (
            ("RANKER_STREAM_PARTITIONS", self.stream_partitions),
            ("RANKER_STREAM_LATENESS_S", self.stream_lateness_s),
            ("RANKER_STREAM_CHECKPOINT_S", self.stream_checkpoint_s),
        ):
            setting = _PLATFORM[env]
            if setting.check is not None and not setting.check(value):
                raise ConfigError(f"{env}={value} must be {setting.rule}")
        if urlparse(self.stream_url).scheme not in ("amqp", "amqps"):
            raise ConfigError(
                "RANKER_STREAM_URL is not an amqp:// URL; expected e.g. amqp://guest:guest@127.0.0.1:5672/%2F"
            )
        if self.feature_engine not in FEATURE_ENGINES:
            raise ConfigError(
                f"RANKER_FEATURE_ENGINE={self.feature_engine!r} is not supported; use one of "
                f"{', '.join(FEATURE_ENGINES)}"
            )
        if self.train_engine not in TRAIN_ENGINES:
            raise ConfigError(
                f"RANKER_TRAIN_ENGINE={self.train_engine!r} is not supported; use one of {', '.join(TRAIN_ENGINES)}"
            )
        if self.dask_workers < 1:
            raise ConfigError(f"RANKER_DASK_WORKERS={self.dask_workers} must be at least 1")
        if self.online_store not in ONLINE_STORES:
            raise ConfigError(
                f"RANKER_ONLINE_STORE={self.online_store!r} is not supported; use one of {', '.join(ONLINE_STORES)}"
            )
        if self.online_store == "redis" and self.redis_cluster:
            self.redis_seeds  # noqa: B018 -- validates the seed list
        elif self.online_store == "redis":
            parsed = urlparse(self.redis_url)
            if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
                raise ConfigError(
                    f"REDIS_URL={self.redis_url!r} is not a redis URL; expected e.g. redis://127.0.0.1:6379/0"
                )

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)

        def value(name: str) -> str:
            return str(env.get(name) or "").strip() or _PLATFORM[name].default

        return cls(
            home=Path(value("RANKER_HOME") or Path.cwd()).resolve(),
            online_store=value("RANKER_ONLINE_STORE").lower(),
            redis_url=value("REDIS_URL"),
            redis_cluster=parse_setting(_PLATFORM["RANKER_REDIS_CLUSTER"], str(value("RANKER_REDIS_CLUSTER")))
            or value("REDIS_URL").startswith("redis+cluster://"),
            registry_uri=value("RANKER_REGISTRY_URI"),
            feast_registry=value("RANKER_FEAST_REGISTRY"),
            feature_engine=value("RANKER_FEATURE_ENGINE").lower(),
            spark_master=value("RANKER_SPARK_MASTER"),
            train_engine=value("RANKER_TRAIN_ENGINE").lower(),
            dask_scheduler=value("RANKER_DASK_SCHEDULER"),
            dask_workers=parse_setting(_PLATFORM["RANKER_DASK_WORKERS"], str(value("RANKER_DASK_WORKERS"))),
            stream_url=value("RANKER_STREAM_URL"),
            stream_name=value("RANKER_STREAM_NAME"),
            stream_partitions=parse_setting(
                _PLATFORM["RANKER_STREAM_PARTITIONS"], str(value("RANKER_STREAM_PARTITIONS"))
            ),
            stream_lateness_s=parse_setting(
                _PLATFORM["RANKER_STREAM_LATENESS_S"], str(value("RANKER_STREAM_LATENESS_S"))
            ),
            stream_checkpoint_s=parse_setting(
                _PLATFORM["RANKER_STREAM_CHECKPOINT_S"], str(value("RANKER_STREAM_CHECKPOINT_S"))
            ),
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    # Paths -----------------------------------------------------------------------------------
    @property
    def feature_repo(self) -> Path:
        return self.home / "feature_repo"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def ground_truth_dir(self) -> Path:
        return self.data_dir / "ground_truth"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def feast_dir(self) -> Path:
        return self.data_dir / "feast"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def stream_dir(self) -> Path:
        """The stream processor's checkpoints and partition locks."""
        return self.data_dir / "stream"

    @property
    def realtime_dir(self) -> Path:
        """What the stream processor wrote online, per real-time view (the offline store's copy)."""
        return self.features_dir / "realtime"

    @property
    def redis_seeds(self) -> list[tuple[str, int]]:
        """The cluster's seed nodes from REDIS_URL (``redis://h1:p1,h2:p2``; ``redis+cluster://`` alike)."""
        scheme, sep, rest = self.redis_url.partition("://")
        netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        seeds: list[tuple[str, int]] = []
        for part in netloc.split(","):
            host, _, port = part.strip().rpartition(":")
            if not sep or scheme not in ("redis", "rediss", "redis+cluster") or not host or not port.isdigit():
                raise ConfigError(
                    f"REDIS_URL={self.redis_url!r} is not a cluster seed list; expected e.g. "
                    "redis://127.0.0.1:7000,127.0.0.1:7001 with RANKER_REDIS_CLUSTER=1"
                )
            seeds.append((host, int(port)))
        return seeds

    @property
    def redis_connection_string(self) -> str:
        """REDIS_URL in the ``host:port,db=N,password=...,ssl=true`` form Feast's Redis store expects
        (in cluster mode: the seed nodes, no db)."""
        if self.redis_cluster:
            return ",".join(f"{h}:{p}" for h, p in self.redis_seeds)
        parsed = urlparse(self.redis_url)
        parts = [f"{parsed.hostname}:{parsed.port or 6379}"]
        db = (parsed.path or "/0").lstrip("/") or "0"
        parts.append(f"db={int(db)}")
        if parsed.password:
            parts.append(f"password={parsed.password}")
        if parsed.username and parsed.username != "default":
            parts.append(f"username={parsed.username}")
        if parsed.scheme == "rediss":
            parts.append("ssl=true")
        return ",".join(parts)
