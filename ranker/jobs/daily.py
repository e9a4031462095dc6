"""The daily pipeline: ingest -> feature tables -> feast apply -> materialize.

Each step calls the library function behind the matching `ranker` command (``ranker data simulate``,
``ranker features build|apply|materialize``); the runner (:mod:`ranker.jobs.runs`) adds the run
record, resume and the skip-when-unchanged rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from ranker.config import Settings
from ranker.jobs.runs import PipelineError, Step, StepContext, content_signature, files_signature

PIPELINE = "daily"
RAW_FILES = ("events.parquet", "listings.parquet", "users.parquet", "sellers.parquet")


@dataclass(frozen=True)
class DailyOptions:
    """``simulate``: produce the raw tables with the simulator (demo, CI sample); otherwise they must
    already be under data/raw/ (landed by an importer). ``sim`` holds the simulator's options.
    ``materialize_end``: load rows up to this time (default: now); ``full``: reload everything."""

    simulate: bool = False
    sim: dict | None = None
    materialize_end: datetime | None = None
    full: bool = False

    def params(self) -> dict:
        return {
            "simulate": self.simulate,
            "sim": self.sim,
            "materialize_end": self.materialize_end.isoformat() if self.materialize_end else None,
            "full": self.full,
        }


def default_sim(*, days: int = 21, scale: float = 1.0, seed: int = 7, today: date | None = None) -> dict:
    """Simulator options for the ``days`` that ended last midnight (UTC), as ``make demo`` uses."""
    today = today or datetime.now(timezone.utc).date()
    return {"seed": seed, "days": days, "scale": scale, "start": (today - timedelta(days=days + 1)).isoformat()}


def _raw_paths(settings: Settings) -> list[Path]:
    return [settings.raw_dir / name for name in RAW_FILES]


# ------------------------------------------------------------------------------------------ steps


def _ingest_fingerprint(ctx: StepContext) -> dict:
    if ctx.params["simulate"]:
        return {"simulate": ctx.params["sim"]}
    return {"raw": files_signature(_raw_paths(ctx.settings), root=ctx.settings.home)}


def _ingest(ctx: StepContext) -> dict:
    import pyarrow.parquet as pq

    settings = ctx.settings
    if ctx.params["simulate"]:
        from ranker.data.simulate import SimConfig, simulate

        sim = dict(ctx.params["sim"] or {})
        if "start" in sim:
            sim["start"] = date.fromisoformat(sim["start"])
        summary = simulate(SimConfig(**sim), raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
        ctx.log(f"simulated {summary['impressions']:,} impressions, {summary['purchases']:,} purchases")
    missing = [p.name for p in _raw_paths(settings) if not p.exists()]
    if missing:
        raise PipelineError(
            f"raw tables missing under {settings.raw_dir}: {', '.join(missing)}; land them with an importer "
            "(`ranker data ...`) or run with --simulate"
        )
    rows = {p.stem: pq.ParquetFile(p).metadata.num_rows for p in _raw_paths(settings)}
    ctx.log("raw rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return {
        "raw_dir": str(settings.raw_dir),
        "rows": rows,
        "files": files_signature(_raw_paths(settings), root=settings.home),
    }


def _ingest_valid(outputs: dict) -> bool:
    raw = Path(outputs.get("raw_dir", "/nonexistent"))
    return all((raw / name).exists() for name in RAW_FILES)


def _features_fingerprint(ctx: StepContext) -> dict:
    return {
        "raw": files_signature(_raw_paths(ctx.settings), root=ctx.settings.home),
        "code": _module_signature("ranker.features.build"),
        "realtime_code": _module_signature("ranker.streaming.backfill") + _module_signature("ranker.streaming.windows"),
    }


def _features(ctx: StepContext) -> dict:
    from ranker.jobs.feature_tables import build_feature_tables

    summary = build_feature_tables(ctx.settings)  # the batch tables and the real-time backfill
    ctx.log(f"snapshots {summary['snapshots']['first']} .. {summary['snapshots']['last']} in {summary['seconds']} s")
    return {
        "tables": {name: {"rows": info["rows"], "path": info["path"]} for name, info in summary["tables"].items()},
        "snapshots": summary["snapshots"],
    }


def _features_valid(outputs: dict) -> bool:
    tables = outputs.get("tables") or {}
    return bool(tables) and all(Path(info["path"]).exists() for info in tables.values())


def _apply_fingerprint(ctx: StepContext) -> dict:
    s = ctx.settings
    return {
        "feature_repo": content_signature(s.feature_repo, ("*.py", "*.yaml", ".feastignore")),
        "tables": files_signature(s.features_dir.glob("*.parquet"), root=s.home),
        "registry": s.feast_registry or str(s.feast_dir / "registry.db"),
        "online_store": s.online_store,  # Redis needs no tables: a new Redis server is not a reason to apply
    }


def _apply(ctx: StepContext) -> dict:
    from ranker.features.store import apply

    summary = apply(ctx.settings)
    ctx.log(f"{len(summary['feature_views'])} feature views, services {', '.join(summary['feature_services'])}")
    return summary


def _apply_valid(outputs: dict) -> bool:
    return bool(outputs.get("feature_services"))


def _materialize(ctx: StepContext) -> dict:
    from ranker.features.materialize import materialize

    end = ctx.params.get("materialize_end")
    summary = materialize(
        ctx.settings, end=datetime.fromisoformat(end) if end else None, full=bool(ctx.params.get("full"))
    )
    ctx.log(f"{summary['rows']:,} rows into {summary['online_store']} in {summary['seconds']} s")
    return {
        "rows": summary["rows"],
        "online_store": summary["online_store"],
        "views": {name: info.get("rows", 0) for name, info in summary["views"].items()},
    }


def _module_signature(module: str) -> str:
    """The source of a module: a change to the feature SQL must rebuild the tables."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec(module)
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest() if spec and spec.origin else ""


def daily_steps() -> list[Step]:
    """ingest -> features -> apply -> materialize (materialize is incremental, so it always runs)."""
    return [
        Step(
            "ingest",
            _ingest,
            fingerprint=_ingest_fingerprint,
            still_valid=_ingest_valid,
            description="simulate (--simulate) or check the raw tables an importer landed in data/raw/",
        ),
        Step(
            "features",
            _features,
            fingerprint=_features_fingerprint,
            still_valid=_features_valid,
            description="daily feature snapshots (ranker features build)",
        ),
        Step(
            "apply",
            _apply,
            fingerprint=_apply_fingerprint,
            still_valid=_apply_valid,
            description="register the feature repository with Feast (ranker features apply)",
        ),
        Step(
            "materialize",
            _materialize,
            description="load new feature rows into the online store (ranker features materialize)",
        ),
    ]
