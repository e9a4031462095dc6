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
from urllib.parse import urlparse

from ranker.errors import RankerError

ONLINE_STORES = ("sqlite", "redis")
# Scale-out engines (docs/guides/scale-out.md): the default of each runs in this process.
FEATURE_ENGINES = ("duckdb", "spark")
TRAIN_ENGINES = ("local", "dask")


class ConfigError(RankerError, ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


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

    def __post_init__(self) -> None:
        if self.feature_engine not in FEATURE_ENGINES:
            raise ConfigError(
                f"RANKER_FEATURE_ENGINE={self.feature_engine!r} is not supported; use one of {', '.join(FEATURE_ENGINES)}"
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
        home = Path(env.get("RANKER_HOME") or Path.cwd()).resolve()
        return cls(
            home=home,
            online_store=env.get("RANKER_ONLINE_STORE", "sqlite").strip().lower() or "sqlite",
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_cluster=env.get("RANKER_REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes")
            or env.get("REDIS_URL", "").startswith("redis+cluster://"),
            registry_uri=env.get("RANKER_REGISTRY_URI", ""),
            feast_registry=env.get("RANKER_FEAST_REGISTRY", "").strip(),
            feature_engine=env.get("RANKER_FEATURE_ENGINE", "duckdb").strip().lower() or "duckdb",
            spark_master=env.get("RANKER_SPARK_MASTER", "").strip() or "local[2]",
            train_engine=env.get("RANKER_TRAIN_ENGINE", "local").strip().lower() or "local",
            dask_scheduler=env.get("RANKER_DASK_SCHEDULER", "").strip(),
            dask_workers=_int_setting(env, "RANKER_DASK_WORKERS", 2),
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


def _int_setting(env: dict, name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
