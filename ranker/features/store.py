"""Access to the Feast feature store, configured from :class:`ranker.config.Settings`.

Everything in the platform reaches features through Feast by feature-service name; this module is
the one place that turns settings into a ``FeatureStore`` (embedded sqlite, or Redis when
``RANKER_ONLINE_STORE=redis``) and answers questions about services (ordered feature names,
defaults for missing values).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from ranker.config import Settings
from ranker.errors import RankerError


class FeatureRepoError(RankerError):
    """The feature repository or its registry is missing or does not hold what was asked for."""


def _forget_definition_modules(repo: Path) -> None:
    """Drop the definition modules (``data_sources``, ``features.listing``, ...) a previous import
    left in ``sys.modules``: Feast imports them by top-level name, so in a process that applies
    several homes the second would silently reuse the first home's objects, sources and their
    absolute table paths included."""
    names = {p.stem for p in repo.glob("*.py")} | {p.name for p in repo.iterdir() if p.is_dir()}
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if name.split(".", 1)[0] in names and not origin.startswith(sys.prefix):
            del sys.modules[name]  # an installed package of the same name stays


@contextlib.contextmanager
def in_feature_repo(repo: Path):
    """Feast imports definition files as top-level modules from the repo folder and resolves
    relative paths from the working directory: enter it for the duration (with the modules of
    any earlier repository forgotten, so this repository's files are the ones imported), then restore."""
    old_cwd = os.getcwd()
    _forget_definition_modules(repo)
    sys.path.insert(0, str(repo))
    try:
        os.chdir(repo)
        yield
    finally:
        os.chdir(old_cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))


def repo_config(settings: Settings):
    """Load ``feature_store.yaml`` (with ``${ENV}`` expansion, as Feast does) and apply the
    online-store choice from the settings."""
    import yaml
    from feast.repo_config import RepoConfig
    from pydantic import ValidationError

    repo = settings.feature_repo
    yaml_path = repo / "feature_store.yaml"
    if not yaml_path.exists():
        raise FeatureRepoError(f"{yaml_path} not found: RANKER_HOME must be the folder that holds feature_repo/")
    raw = yaml.safe_load(os.path.expandvars(yaml_path.read_text()))
    if settings.online_store == "redis":
        raw["online_store"] = {"type": "redis", "connection_string": settings.redis_connection_string}
        if settings.redis_cluster:
            raw["online_store"]["redis_type"] = "redis_cluster"
    offline = raw.get("offline_store") or {}
    if isinstance(offline, dict) and offline.get("type", "dask") == "duckdb":
        from ranker.features.offline import TYPE

        raw["offline_store"] = {**offline, "type": TYPE}  # the same store, joins bounded in time
    if settings.feast_registry:
        raw["registry"] = sql_registry_config(settings.feast_registry, raw.get("registry") or {})
    try:
        config = RepoConfig(**raw)
    except ValidationError as exc:
        raise FeatureRepoError(f"{yaml_path} is invalid: {exc}") from None
    config.repo_path = repo
    return config


SQL_REGISTRY_SCHEMES = ("postgresql", "postgresql+psycopg")


def sql_registry_config(url: str, file_registry: dict) -> dict:
    """Feast's SQL registry on PostgreSQL (``RANKER_FEAST_REGISTRY``), shared by every scorer and job.

    Keeps the file registry's ``cache_ttl_seconds`` (how long a process trusts its in-memory copy of
    the registry) and uses ``cache_mode: sync``; the scorer never reads the registry per request (it
    reads the feature layout once per model load), so a refresh never lands on a ranking request.
    ``pool_pre_ping`` replaces connections PostgreSQL closed while idle instead of failing on them.
    """
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in SQL_REGISTRY_SCHEMES or not parsed.hostname or not parsed.path.strip("/"):
        raise FeatureRepoError(
            f"RANKER_FEAST_REGISTRY={_redact(url)!r} is not a PostgreSQL URL; expected "
            "postgresql://USER@HOST:5432/DATABASE (empty = the file registry in data/feast/)"
        )
    path = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3, which feast 0.67 standardises on
    return {
        "registry_type": "sql",
        "path": path,
        "cache_ttl_seconds": int(file_registry.get("cache_ttl_seconds", 60)),
        "cache_mode": "sync",
        "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
    }


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@", 1)
    return url


def feature_store(settings: Settings):
    """A ``FeatureStore`` for the repository under ``settings.home``."""
    from feast import FeatureStore

    config = repo_config(settings)
    if not settings.feast_registry:
        return FeatureStore(repo_path=str(settings.feature_repo), config=config)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store = FeatureStore(repo_path=str(settings.feature_repo), config=config)
        store.registry  # noqa: B018 - connect now (Feast connects lazily), so an outage fails here, in one line
        return store
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise FeatureRepoError(
            f"the Feast SQL registry {_redact(settings.feast_registry)} is unreachable: {reason}"
        ) from None


def apply(settings: Settings) -> dict:
    """Register every definition in ``feature_repo/`` (the programmatic ``feast apply``) and create
    the online tables. Returns counts of what the registry now holds."""
    from ranker.features.feast_compat import apply_repo, repo_contents

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    store = feature_store(settings)
    log = io.StringIO()
    with in_feature_repo(settings.feature_repo), contextlib.redirect_stdout(log):
        try:
            repo = repo_contents(settings.feature_repo, store.config.project, store.config)
            apply_repo(store, repo)
        except SystemExit as exc:  # Feast exits on some invalid definitions
            raise FeatureRepoError(f"feast apply failed: {log.getvalue().strip() or exc}") from None
    store.refresh_registry()
    return {
        "entities": sorted(e.name for e in store.list_entities()),
        "feature_views": sorted(v.name for v in store.list_feature_views()),
        "on_demand_feature_views": sorted(v.name for v in store.list_on_demand_feature_views()),
        "feature_services": sorted(s.name for s in store.list_feature_services()),
    }


# The field tag "monotone" and the LightGBM monotone constraint it becomes.
MONOTONE = {"increasing": 1, "decreasing": -1}


@dataclass(frozen=True)
class ServiceSpec:
    """What a feature service asks for, in the order models see it."""

    name: str
    features: tuple[str, ...]  # short feature names, model column order
    refs: tuple[str, ...]  # "view:feature" references, same order
    defaults: dict  # feature -> value used when the store has nothing (NaN = leave missing)
    entity_keys: tuple[str, ...]  # join keys the service needs
    request_fields: tuple[str, ...]  # request-time inputs of on-demand views
    # feature -> +1 / -1: the model's score may only rise / fall with it (the field tag "monotone":
    # "increasing" / "decreasing"); features without the tag are unconstrained
    monotone: dict = dataclass_field(default_factory=dict)


def service_spec(store, name: str) -> ServiceSpec:
    """Describe the feature service ``name``; a clear error when it is not registered."""
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(name)
    except FeatureServiceNotFoundException:
        known = ", ".join(sorted(s.name for s in store.list_feature_services())) or "none"
        raise FeatureRepoError(
            f"feature service {name!r} is not registered (known: {known}); run `ranker features apply`"
        ) from None
    features: list[str] = []
    refs: list[str] = []
    defaults: dict = {}
    monotone: dict = {}
    entity_keys: set[str] = set()
    request_fields: set[str] = set()
    views = {v.name: v for v in store.list_feature_views()}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    for projection in service.feature_view_projections:
        view_name = projection.name_to_use()
        for field in projection.features:
            if field.name in defaults:
                raise FeatureRepoError(f"feature name {field.name!r} appears twice in service {name!r}")
            features.append(field.name)
            refs.append(f"{view_name}:{field.name}")
            default = (field.tags or {}).get("default")
            defaults[field.name] = float(default) if default is not None else math.nan
            direction = (field.tags or {}).get("monotone")
            if direction is not None:
                if direction not in MONOTONE:
                    raise FeatureRepoError(
                        f"{view_name}:{field.name}: tag monotone={direction!r}; use one of {', '.join(MONOTONE)}"
                    )
                monotone[field.name] = MONOTONE[direction]
        if projection.name in views:
            entity_keys.update(c.name for c in views[projection.name].entity_columns)
        elif projection.name in odfvs:
            odfv = odfvs[projection.name]
            for src in odfv.source_request_sources.values():
                request_fields.update(f.name for f in src.schema)
            for src_proj in odfv.source_feature_view_projections.values():
                if src_proj.name in views:
                    entity_keys.update(c.name for c in views[src_proj.name].entity_columns)
    return ServiceSpec(
        name=name,
        features=tuple(features),
        refs=tuple(refs),
        defaults=defaults,
        entity_keys=tuple(sorted(entity_keys)),
        request_fields=tuple(sorted(request_fields)),
        monotone=monotone,
    )
