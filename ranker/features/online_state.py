"""What each online store holds: a materialization marker written into the store with the data.

Feast records materialization intervals in its registry, which every online store of the project
shares: after loading sqlite, a fresh Redis looks up to date to an incremental run and would receive
nothing. The marker lives in the store itself, so a store that never received data (a new Redis, a
flushed one, a deleted ``online.db``) has no marker and gets a full load from a plain
``ranker features materialize``, and readiness can tell an empty store from a loaded one.

* Redis: one hash ``ranker:materialized:{project}``, a field per feature view, a JSON value.
* sqlite: a table ``ranker_materialized`` in the online database, a row per (project, view).

A marker says: rows with ``event_timestamp <= end`` are loaded (the latest per entity), when the
last run wrote (``written_at``), how many rows it wrote, and how many entity rows the store holds for
the view (``rows_total``: exact after a full load, which offers the latest row of every entity; an
upper bound after incremental runs, which add the entities they saw).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ranker.config import Settings
from ranker.errors import RankerError

SQLITE_TABLE = "ranker_materialized"


class OnlineStateError(RankerError):
    """The online store's materialization markers could not be read or written."""


@dataclass(frozen=True)
class Marker:
    """What one feature view's materialization left in one online store."""

    view: str
    end: str  # ISO time: rows up to here are loaded
    written_at: str  # ISO time of the run that wrote this marker
    rows_last_run: int
    rows_total: int  # entity rows held: the full load's count plus what later runs saw (an upper bound)
    full_load_at: str  # ISO time of the last full load
    newest_event: str | None = None  # ISO event_timestamp of the newest row loaded (the data's age)

    @property
    def end_time(self) -> datetime:
        return datetime.fromisoformat(self.end)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, view: str, raw: str | bytes) -> "Marker":
        data = json.loads(raw)
        return cls(
            view=view,
            end=str(data["end"]),
            written_at=str(data["written_at"]),
            rows_last_run=int(data.get("rows_last_run", 0)),
            rows_total=int(data.get("rows_total", 0)),
            full_load_at=str(data.get("full_load_at", data["written_at"])),
            newest_event=data.get("newest_event"),
        )


def redis_key(project: str) -> str:
    """The hash holding the markers of ``project`` (outside Feast's binary entity-key space)."""
    return f"ranker:materialized:{project}"


def sqlite_path(settings: Settings) -> Path:
    """The embedded online store's database file, as Feast resolves it from feature_store.yaml."""
    from ranker.features import feast_compat
    from ranker.features.store import repo_config

    return feast_compat.sqlite_path(repo_config(settings)).resolve()


def store_name(settings: Settings) -> str:
    """A human name of the online store the settings select (for status lines and readiness reasons)."""
    if settings.online_store == "redis":
        return f"redis {settings.redis_url.rsplit('@', 1)[-1]}"
    return f"sqlite {sqlite_path(settings)}"


def _redis(settings: Settings, *, timeout_s: float, connect_timeout_s: float) -> Any:
    """A client of the Redis online store: one server, or a Redis Cluster (the marker is one key, so
    redis-py's cluster client routes it to the master of its slot)."""
    import redis

    if settings.redis_cluster:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in settings.redis_seeds],
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
        )
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s)


def read_markers(settings: Settings, project: str, *, timeout_s: float = 5.0) -> dict[str, Marker]:
    """Every view's marker in the selected online store (empty for a store that was never loaded).

    OnlineStateError when the store cannot be reached or read."""
    if settings.online_store == "redis":
        import redis

        client = _redis(settings, timeout_s=timeout_s, connect_timeout_s=timeout_s)
        try:
            raw: dict[bytes, bytes] = client.hgetall(redis_key(project))  # type: ignore[assignment,unused-ignore]  # sync client; the cluster client's stub differs
        except redis.RedisError as exc:
            raise OnlineStateError(
                f"cannot read the materialization markers from Redis at {settings.redis_url}: {exc}"
            ) from None
        finally:
            client.close()
        return {k.decode(): Marker.from_json(k.decode(), v) for k, v in raw.items()}
    path = sqlite_path(settings)
    if not path.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        raise OnlineStateError(f"cannot open {path}: {exc}") from None
    try:
        rows = con.execute(f"SELECT view, payload FROM {SQLITE_TABLE} WHERE project = ?", (project,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise OnlineStateError(f"cannot read the materialization markers from {path}: {exc}") from None
    finally:
        con.close()
    return {view: Marker.from_json(view, payload) for view, payload in rows}


def write_markers(settings: Settings, project: str, markers: Iterable[Marker]) -> None:
    """Record the markers in the selected online store (after the data they describe was written)."""
    markers = list(markers)
    if not markers:
        return
    if settings.online_store == "redis":
        import redis

        client = _redis(settings, timeout_s=30, connect_timeout_s=5)
        try:
            client.hset(redis_key(project), mapping={m.view: m.to_json() for m in markers})
        except redis.RedisError as exc:
            raise OnlineStateError(
                f"cannot write the materialization markers to Redis at {settings.redis_url}: {exc}"
            ) from None
        finally:
            client.close()
        return
    path = sqlite_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=30) as con:
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {SQLITE_TABLE} "
            "(project TEXT, view TEXT, payload TEXT, PRIMARY KEY (project, view))"
        )
        con.executemany(
            f"INSERT OR REPLACE INTO {SQLITE_TABLE} VALUES (?, ?, ?)", [(project, m.view, m.to_json()) for m in markers]
        )
    con.close()


def next_marker(
    previous: Marker | None,
    *,
    view: str,
    end: datetime,
    rows_written: int,
    rows_seen: int,
    newest_event: datetime | None,
    full: bool,
    now: datetime | None = None,
) -> Marker:
    """The marker after a run that offered ``rows_seen`` latest-per-entity rows up to ``end`` (the
    newest at ``newest_event``) and wrote ``rows_written`` of them (the others: a newer row was stored)."""
    now = now or datetime.now(timezone.utc)
    newest = newest_event.isoformat() if newest_event is not None else None
    if full or previous is None:
        return Marker(
            view=view,
            end=end.isoformat(),
            written_at=now.isoformat(),
            rows_last_run=int(rows_written),
            rows_total=int(rows_seen),
            full_load_at=now.isoformat(),
            newest_event=newest,
        )
    if previous.newest_event and (newest_event is None or datetime.fromisoformat(previous.newest_event) > newest_event):
        newest = previous.newest_event
    return Marker(
        view=view,
        end=end.isoformat(),
        written_at=now.isoformat(),
        rows_last_run=int(rows_written),
        rows_total=previous.rows_total + int(rows_seen),
        full_load_at=previous.full_load_at,
        newest_event=newest,
    )


def status(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """Per online feature view: what the selected online store holds and how old it is.

    ``loaded`` is false for a view with no marker (never materialized into this store) or whose
    loads found no row; ``newest_event`` is the newest row loaded and ``age_s`` now minus it (how
    old the freshest data is), ``end`` how far the loads reached and ``since_run_s`` the time since
    the last run."""
    from ranker.features.store import feature_store

    now = now or datetime.now(timezone.utc)
    store = feature_store(settings)
    markers = read_markers(settings, store.project)
    views: dict[str, Any] = {}
    for view in sorted(v.name for v in store.list_feature_views() if v.online):
        marker = markers.get(view)
        if marker is None:
            views[view] = {"loaded": False, "reason": "never materialized into this store"}
            continue
        views[view] = {
            "loaded": marker.rows_total > 0,
            "newest_event": marker.newest_event,
            "age_s": (
                round((now - datetime.fromisoformat(marker.newest_event)).total_seconds())
                if marker.newest_event
                else None
            ),
            "end": marker.end,
            "written_at": marker.written_at,
            "since_run_s": round((now - datetime.fromisoformat(marker.written_at)).total_seconds()),
            "rows_last_run": marker.rows_last_run,
            "rows_total": marker.rows_total,
            **({} if marker.rows_total > 0 else {"reason": "materialized, but no rows up to its end"}),
        }
    return {
        "online_store": settings.online_store,
        "store": store_name(settings),
        "project": store.project,
        "views": views,
    }


def missing_views(markers: dict[str, Marker], views: Iterable[str]) -> list[str]:
    """The views among ``views`` the store holds no rows for (no marker, or loads that wrote none)."""
    return [v for v in views if v not in markers or markers[v].rows_total <= 0]


def service_views(settings: Settings, service: str) -> tuple[str, tuple[str, ...]]:
    """(project, the batch feature views a feature service reads from the online store, sorted);
    on-demand views contribute the views they take inputs from."""
    from ranker.features.store import feature_store

    store = feature_store(settings)
    batch = {v.name for v in store.list_feature_views()}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    views: set[str] = set()
    for projection in store.get_feature_service(service).feature_view_projections:
        if projection.name in batch:
            views.add(projection.name)
        elif projection.name in odfvs:
            views.update(
                p.name for p in odfvs[projection.name].source_feature_view_projections.values() if p.name in batch
            )
    return store.project, tuple(sorted(views))
