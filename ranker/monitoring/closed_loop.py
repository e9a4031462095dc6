"""The closed loop: served rankings answered by the simulated marketplace, run forward past the log.

:class:`ranker.monitoring.live.LiveEnvironment` replays logged requests with the utility drawn at the
logged time; here the world itself goes on. After a history simulated with the within-day dynamics
(``SimConfig(within_day=True)``: session intent, listing hype, sales within hours) and models trained
on it, :func:`run_arm` runs the next ``hours`` of the marketplace: every request's candidates are
ranked by the model being measured through the scorer's own feature path
(:class:`ranker.serving.features.OnlineFeatures` on the home's online store, sold listings dropped
as the scorer drops them, then ``Booster.predict``), the user answers with the simulator's behaviour
model (:func:`ranker.data.simulate.draw_engagement`), and a purchase sells the listing. With
``stream=True`` the events are applied to the real-time state in-process, in event-time order before
each later request: :meth:`ranker.streaming.windows.WindowState.apply` and
:class:`ranker.streaming.writer.OnlineWriter` into the online store (the processor's core without the
broker; the broker's sub-second delay is below the simulation's resolution). With ``stream=False``
the store keeps the batch snapshot of the log's end (what a daily ``materialize`` leaves).

Both arms face the same requests and candidates: they are drawn once (:func:`plan`) from the world as
it stood at the log's end (the candidate index is a batch snapshot too, so listings sold during the
loop stay candidates until the scorer drops them), with the same expected utility per candidate and
the same seeds per request. What differs is what each arm shows and therefore what sells.

Per arm (:func:`summarise`): true-utility NDCG@10 over each request's candidates (the expected
utility, min-max scaled per request; a listing already sold at the request gains nothing), CTR,
purchases, and the share of impressions that went to listings already sold at the request time.

This module lives in ``ranker.monitoring`` (beside the live environment), not ``ranker.data``: it
uses serving, streaming and training, which all import ``ranker.data`` (tests/test_import_graph.py
forbids the two-way tie).
"""

from __future__ import annotations

import copy
import heapq
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.data.simulate import DAY_MS, HOUR_MS, NEVER, SimConfig, draw_engagement, simulate_history
from ranker.errors import RankerError

SURFACE_OF_SEARCH = {True: "search", False: "recs"}
YOUNG_HOURS = 48  # the young-listing slice of the NDCG (as the evaluation's listing_age<48h)
EXPOSURE_HOURS = 72  # a listing's first days, over which its impressions are counted
_TYPES = ("impression", "click", "save", "add_to_bag", "purchase")


class ClosedLoopError(RankerError):
    """The closed loop cannot run as asked (the message says why and what to do)."""


# --- The world and the models ----------------------------------------------------------------------
def prepare(settings: Settings, config: SimConfig, *, hours: int, progress: Callable[[str], None] | None = None):
    """Simulate the history into the home, build its feature tables (batch and real-time backfill),
    apply the Feast registry and materialize up to the log's end. Returns the world at the log's end
    (with the listings of the loop's hours drawn, not yet live)."""
    from ranker.features.materialize import materialize
    from ranker.features.store import apply
    from ranker.jobs.feature_tables import build_feature_tables

    say = progress or (lambda _m: None)
    extra_days = -(-hours // 24)
    summary, world = simulate_history(
        config, raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir, extra_days=extra_days
    )
    say(f"simulated {config.days} days: {summary['impressions']:,} impressions in {summary['seconds']} s")
    started = time.perf_counter()
    build_feature_tables(settings)
    apply(settings)
    end = datetime.fromtimestamp(log_end_ms(world) / 1000, tz=timezone.utc)
    materialize(settings, end=end, full=True)
    say(f"features built, applied and materialized up to {end.isoformat()} in {time.perf_counter() - started:.1f} s")
    return world


def log_end_ms(world) -> int:
    return int(world.start_ms + world.config.days * DAY_MS)


def train(settings: Settings, version: str, *, surfaces=("search", "recs"), seed: int = 42) -> dict[str, Path]:
    """``ranker dataset build --feature-service {surface}_ranker_{version}`` then ``ranker train``,
    per surface; returns the model folder per surface (a copy: the next build reuses the paths)."""
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model

    out = {}
    for surface in surfaces:
        build_dataset(settings, DatasetOptions(surface=surface, feature_service=f"{surface}_ranker_{version}"))
        out[surface] = train_model(settings, TrainOptions(surface=surface, seed=seed))
    return out


# --- The requests both arms face ---------------------------------------------------------------
@dataclass
class Plan:
    """Requests of the loop's hours with their candidates (flat, grouped by request in time order)."""

    start_ms: int
    hours: int
    request: np.ndarray  # global request number
    user: np.ndarray
    t: np.ndarray  # ms
    search: np.ndarray
    query: list  # the search text, None on recs
    offsets: np.ndarray  # candidates of request r: [offsets[r], offsets[r + 1])
    item: np.ndarray  # listing index per candidate
    expected: np.ndarray  # expected utility per candidate (session and hype terms included)
    utility: np.ndarray  # expected + the impression's noise

    @property
    def n_requests(self) -> int:
        return len(self.request)


def plan(world, *, hours: int, seed: int = 0, surfaces=("search", "recs")) -> Plan:
    """Draw the loop's requests and candidates from the world at the log's end (left unchanged)."""
    world = copy.deepcopy(world)  # requests_of_day numbers requests on: keep the caller's world as it was
    config = world.config
    if hours < 1:
        raise ClosedLoopError(f"hours must be >= 1, got {hours}")
    start = log_end_ms(world)
    if world.catalogue_days * DAY_MS < start - world.start_ms + hours * HOUR_MS:
        raise ClosedLoopError(f"the world was drawn without listings for {hours} more hours: prepare it with them")
    root = np.random.SeedSequence([config.seed, 16, seed])
    parts: list[dict] = []
    for d in range(-(-hours // 24)):
        day = config.days + d
        day_rng = np.random.Generator(np.random.PCG64(root.spawn(1)[0]))
        requests = world.requests_of_day(day=day, rng=day_rng)
        day_start = world.start_ms + day * DAY_MS
        for hour in range(24):
            step_start = day_start + hour * HOUR_MS
            if step_start >= start + hours * HOUR_MS:
                break
            lo, hi = np.searchsorted(requests["t"], [step_start, step_start + HOUR_MS])
            step = {k: v[lo:hi] for k, v in requests.items()}
            keep = np.isin(np.where(step["search"], "search", "recs"), list(surfaces))
            step = {k: v[keep] for k, v in step.items()}
            if len(step["request"]) == 0:
                continue
            req_local, item = world._retrieve(
                rng=day_rng, requests=step, step_start=step_start, step_end=step_start + HOUR_MS
            )
            t = step["t"][req_local]
            age_days = (t - world.created_ms[item]) / DAY_MS
            match = world._query_match(requests=step, req_local=req_local, item=item)
            utility, expected = world._utility(
                rng=day_rng,
                user=step["user"][req_local],
                item=item,
                age_days=age_days,
                search=step["search"][req_local],
                match=match,
                intent_cat=step["intent_cat"][req_local],
                intent_brand=step["intent_brand"][req_local],
            )
            parts.append({"step": step, "req_local": req_local, "item": item, "u": utility, "e": expected})
    if not parts:
        raise ClosedLoopError("no request in the loop's hours: simulate more users or hours")
    request, user, t, search, query, counts = [], [], [], [], [], []
    items, expected, utility = [], [], []
    from ranker.data.simulate import _query_code

    for p in parts:
        step = p["step"]
        n = len(step["request"])
        per = np.bincount(p["req_local"], minlength=n)
        has = per > 0
        request.append(step["request"][has])
        user.append(step["user"][has])
        t.append(step["t"][has])
        search.append(step["search"][has])
        codes = _query_code(step["cat"], step["colour"], step["brand"])[has]
        query += [None if c < 0 else world.query_vocabulary[int(c)].as_py() for c in codes]
        counts.append(per[has])
        items.append(p["item"])
        expected.append(p["e"])
        utility.append(p["u"])
    counts_all = np.concatenate(counts)
    return Plan(
        start_ms=start,
        hours=hours,
        request=np.concatenate(request),
        user=np.concatenate(user),
        t=np.concatenate(t),
        search=np.concatenate(search),
        query=query,
        offsets=np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64),
        item=np.concatenate(items),
        expected=np.concatenate(expected),
        utility=np.concatenate(utility),
    )


# --- One arm -------------------------------------------------------------------------------------
@dataclass
class ArmResult:
    name: str
    stream: bool | str
    requests: pd.DataFrame  # one row per request: surface, ndcg@10, impressions, clicks, ...
    seconds: float
    stream_counts: dict = field(default_factory=dict)
    # Per listing (the world's index): created, first impression, first click and sale in the arm's
    # world (ms; NEVER when it did not happen) and impressions in its first EXPOSURE_HOURS, for
    # exposure of new listings.
    listings: pd.DataFrame | None = None


@contextmanager
def online_snapshot(settings: Settings) -> Iterator[None]:
    """Restore the sqlite online store afterwards, so every arm starts from the same batch snapshot."""
    from ranker.features.feast_compat import sqlite_path
    from ranker.features.store import feature_store

    if settings.online_store != "sqlite":
        raise ClosedLoopError("the closed loop restores the online store between arms: use RANKER_ONLINE_STORE=sqlite")
    path = sqlite_path(feature_store(settings).config)
    with tempfile.TemporaryDirectory() as tmp:
        backup = Path(tmp) / path.name
        shutil.copy2(path, backup)
        try:
            yield
        finally:
            shutil.copy2(backup, path)


def _load_model(model_dir: Path):
    import lightgbm as lgb

    card = json.loads((Path(model_dir) / "card.json").read_text())
    booster = lgb.Booster(model_file=str(Path(model_dir) / "model.txt"))
    return card, booster


def _history_records(settings: Settings, since_ms: int) -> list:
    """The log's events from ``since_ms`` on, as the stream would have carried them (both routes)."""
    import pyarrow.dataset as ds

    from ranker.streaming.records import StreamRecord

    events = ds.dataset(settings.raw_dir / "events.parquet")
    since = pd.Timestamp(since_ms, unit="ms", tz="UTC")
    table = events.to_table(
        columns=["event_id", "event_type", "timestamp", "user_id", "item_id"],
        filter=ds.field("timestamp") >= since,
    )
    df = table.to_pandas()
    ts = df.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy()
    out = []
    for eid, et, t, u, i in zip(df.event_id, df.event_type, ts, df.user_id, df.item_id, strict=True):
        for route in (i, u):
            out.append(StreamRecord(str(eid), "event", int(t), str(i), str(u), str(et), route=str(route)))
    order = np.argsort(ts, kind="stable")
    return [r for k in order for r in (out[2 * k], out[2 * k + 1])]


def run_arm(
    settings: Settings,
    world0,
    the_plan: Plan,
    models: dict[str, Path],
    *,
    name: str,
    stream: bool | str,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    exploration=None,
    publish_listings: bool = False,
) -> ArmResult:
    """Run the loop's hours with ``models`` (surface -> model folder) ranking; see the module docstring.

    ``exploration``: a :class:`ranker.serving.exploration.ExplorationPolicy` applied to every request
    as the scorer applies it (ages from the served ``listing_age_hours``, the request number as the
    request id); None or inactive: the model's order.

    ``publish_listings``: write each listing that goes live during the loop into ``listing_fv`` when it
    goes live (what a listing service's push does), so the ranker sees its attributes and its age;
    without it a listing created in the loop is unknown to the online store (its features take their
    defaults) until the next batch.

    ``stream``: True applies the events to the real-time state and writes every update; ``"sold"``
    writes only the sold flags (``listing_fv.is_sold``: separates dropping sold listings from the
    real-time features); False writes nothing (the batch snapshot)."""
    if stream not in (True, False, "sold"):
        raise ClosedLoopError(f"stream must be True, False or 'sold', got {stream!r}")
    from ranker.serving.features import OnlineFeatures
    from ranker.streaming.records import StreamRecord
    from ranker.streaming.windows import LISTING_VIEW, LONGEST_US, WindowState

    say = progress or (lambda _m: None)
    started = time.perf_counter()
    world = copy.deepcopy(world0)  # sales diverge between arms
    slate = world.config.slate_size
    ids_item = world._ids("item", np.arange(1, len(world.created_ms) + 1)).to_pylist()
    ids_user = world._ids("user", np.arange(1, world.config.n_users + 1)).to_pylist()
    rows_out = []
    counts = {"records": 0, "written": 0, "stale_skipped": 0, "rejected": 0}
    first_impression = np.full(len(world.created_ms), NEVER, dtype=np.int64)
    first_click = np.full(len(world.created_ms), NEVER, dtype=np.int64)
    early_impressions = np.zeros(len(world.created_ms), dtype=np.int64)
    explore = exploration if exploration is not None and exploration.active else None
    lister = None  # the writer of listings going live (publish_listings)
    with online_snapshot(settings):
        features, boosters = {}, {}
        try:
            for surface, model_dir in models.items():
                card, booster = _load_model(model_dir)
                features[surface] = OnlineFeatures(settings, service=card["feature_service"], timeout_s=5.0)
                if list(features[surface].feature_names) != list(card["features"]):
                    raise ClosedLoopError(f"{model_dir}: the card's features differ from {card['feature_service']}")
                boosters[surface] = booster
            state = writer = None
            if stream:
                from ranker.streaming.writer import OnlineWriter

                state = WindowState(settings.stream_lateness_s)
                state.seed_listings(world.listings_frame())  # the processor knows every listing it is told of
                # Catch up on the log's last day (the windows' horizon), as a processor started before the loop.
                state.apply(_history_records(settings, the_plan.start_ms - LONGEST_US // 1000 - HOUR_MS))
                writer = OnlineWriter(settings)
            new_rows, new_at = (None, np.zeros(0, np.int64))
            if publish_listings:
                from ranker.streaming.writer import OnlineWriter

                new_rows, new_at = _new_listing_rows(world, the_plan)
                lister = writer if writer is not None else OnlineWriter(settings)
            published = 0
            pending: list = []
            seq = 0
            bought: dict[int, int] = {}  # request -> listings its user bought (the first buyer wins)

            def drain(until_ms: int) -> None:
                records = []
                while pending and pending[0][0] <= until_ms:
                    ts, _, kind, user, item, request = heapq.heappop(pending)
                    if kind == "click":
                        first_click[item] = min(first_click[item], ts)
                    if kind == "purchase":
                        if world.sold_ms[item] != NEVER:
                            continue  # somebody bought it first
                        world.sold_ms[item] = ts
                        bought[request] = bought.get(request, 0) + 1
                    if state is not None:
                        rid, i, u = f"L{request}:{item}:{kind}", ids_item[item], ids_user[user]
                        for route in (i, u):  # both copies, as the producer publishes an event
                            records.append(StreamRecord(rid, "event", ts * 1000, i, u, kind, route=route))
                if state is None or writer is None or not records:
                    return
                both = records
                applied = state.apply(both)
                counts["records"] += len(both)
                counts["rejected"] += sum(applied.rejected.values())
                updates = {
                    v: tb
                    for v, tb in applied.updates.items()
                    if tb is not None and tb.num_rows and (stream is True or v == LISTING_VIEW)
                }
                if updates:
                    stats = writer.write(updates)
                    counts["written"] += stats.written
                    counts["stale_skipped"] += stats.skipped_not_newer

            p = the_plan
            for r in range(p.n_requests):
                t = int(p.t[r])
                drain(t)
                if lister is not None and new_rows is not None and published < len(new_at) and new_at[published] <= t:
                    upto = int(np.searchsorted(new_at, t, side="right"))
                    lister.write({"listing_fv": new_rows.slice(published, upto - published)})
                    published = upto
                lo, hi = int(p.offsets[r]), int(p.offsets[r + 1])
                item = p.item[lo:hi]
                surface = SURFACE_OF_SEARCH[bool(p.search[r])]
                rows = features[surface].fetch(
                    user_id=ids_user[p.user[r]],
                    item_ids=[ids_item[i] for i in item],
                    query=p.query[r],
                    request_ts=t // 1000,
                )
                kept = np.flatnonzero(~np.asarray(rows.sold, dtype=bool))
                matrix = np.asarray(rows.matrix, dtype=np.float32)[kept]
                scores = boosters[surface].predict(matrix, num_threads=1)
                if explore is not None:
                    age = matrix[:, features[surface].feature_names.index("listing_age_hours")]
                    chosen = explore.rank(scores, age, request_id=str(int(p.request[r])))
                    order = kept[chosen.order]
                    explored_shown = int(chosen.explored[:slate].sum())
                else:
                    order = kept[np.argsort(-scores, kind="stable")]  # candidate indices, best first
                    explored_shown = 0
                shown = order[:slate]
                np.minimum.at(first_impression, item[shown], t)
                early = item[shown][(t - world.created_ms[item[shown]]) < EXPOSURE_HOURS * HOUR_MS]
                np.add.at(early_impressions, early, 1)
                position = np.arange(1, len(shown) + 1)
                gone = world.sold_ms[item[shown]] <= t  # already sold when the list was served
                rng = np.random.default_rng([seed, int(p.request[r])])
                drawn = draw_engagement(rng, p.utility[lo:hi][shown], position, t)
                flags = [np.ones(len(shown), bool), drawn.click, drawn.save, drawn.add_to_bag, drawn.purchase]
                times = [np.full(len(shown), t), drawn.t_click, drawn.t_save, drawn.t_add_to_bag, drawn.t_purchase]
                for kind, flag, when in zip(_TYPES, flags, times, strict=True):
                    if kind != "impression":
                        flag = flag & ~gone  # a sold listing cannot be clicked or bought
                    for j in np.flatnonzero(flag):
                        heapq.heappush(
                            pending, (int(when[j]), seq, kind, int(p.user[r]), int(item[shown[j]]), int(p.request[r]))
                        )
                        seq += 1
                # True-utility NDCG@10 over the request's candidates: a listing sold by now gains nothing.
                sold_now = world.sold_ms[item] <= t
                gain = p.expected[lo:hi].copy()
                if sold_now.any():
                    floor = gain[~sold_now].min() if (~sold_now).any() else 0.0
                    gain[sold_now] = np.minimum(gain[sold_now], floor)
                score = np.full(hi - lo, -1e9)
                score[order] = -np.arange(len(order), dtype=np.float64)
                young = (t - world.created_ms[item]) < YOUNG_HOURS * HOUR_MS
                rows_out.append(
                    {
                        "request": int(p.request[r]),
                        "surface": surface,
                        "t_ms": t,
                        "gain": gain,
                        "score": score,
                        "young": young,
                        "explored": explored_shown,
                        "impressions": len(shown),
                        "clicks": int((drawn.click & ~gone).sum()),
                        "sold_impressions": int(gone.sum()),
                        "removed_sold": int(hi - lo - len(kept)),
                        "purchase_intents": int((drawn.purchase & ~gone).sum()),
                    }
                )
                if (r + 1) % 500 == 0:
                    say(f"{name}: {r + 1:,}/{p.n_requests:,} requests")
            drain(p.start_ms + p.hours * HOUR_MS)  # purchases of the last hour's lists still sell
        finally:
            for f in features.values():
                f.close()
            if stream and writer is not None:
                writer.close()
            if lister is not None and lister is not writer:
                lister.close()
    frame = pd.DataFrame(rows_out)
    frame["ndcg@10"] = _ndcg(frame)
    frame[YOUNG_NDCG] = _ndcg(frame, only="young")
    frame = frame.drop(columns=["gain", "score", "young"])
    frame["purchases"] = frame.request.map(bought).fillna(0).astype(np.int64)
    listings = pd.DataFrame(
        {
            "created_ms": world.created_ms,
            "first_impression_ms": first_impression,
            "first_click_ms": first_click,
            f"impressions_{EXPOSURE_HOURS}h": early_impressions,
            "sold_ms": world.sold_ms,
        }
    )
    return ArmResult(
        name=name,
        stream=stream,
        requests=frame,
        seconds=round(time.perf_counter() - started, 1),
        stream_counts=counts,
        listings=listings,
    )


def _new_listing_rows(world, the_plan: Plan):
    """``listing_fv`` rows (as ``ranker features build`` makes them) of the listings going live during
    the loop, in creation order, and their creation times (ms)."""
    import duckdb
    import pyarrow as pa

    from ranker.features.build import _LISTING_ATTRS, table_query

    start, end = the_plan.start_ms, the_plan.start_ms + the_plan.hours * HOUR_MS
    lst = world.listings_frame(before_ms=end)
    lo = int(np.searchsorted(world.created_ms, start))
    lst = lst.iloc[lo:].assign(sold_at=pd.NaT)  # the arm decides the sales
    con = duckdb.connect()
    con.register("listings", lst)
    con.execute("CREATE TEMP VIEW lst AS SELECT item_id, created_at, sold_at, " + _LISTING_ATTRS + " FROM listings")
    table = con.sql(f"SELECT * FROM ({table_query('listings')}) ORDER BY event_timestamp").to_arrow_table()
    created = table.column("event_timestamp").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    return table, created.astype(np.int64)


def _ndcg(frame: pd.DataFrame, only: str | None = None) -> np.ndarray:
    """True-utility NDCG@10 per request; ``only``: a boolean column selecting candidates (the arm's
    order restricted to them, as the evaluation's slices do; NaN where fewer than two differ)."""
    from ranker.training.metrics import graded_ndcg_against_utility

    gain, score = frame.gain.to_list(), frame.score.to_list()
    if only is not None:
        keep = frame[only].to_list()
        gain = [g[k] for g, k in zip(gain, keep, strict=True)]
        score = [s[k] for s, k in zip(score, keep, strict=True)]
    sizes = np.array([len(g) for g in gain])
    group = np.repeat(np.arange(len(frame)), sizes)
    values = graded_ndcg_against_utility(group, np.concatenate(gain), np.concatenate(score))
    return values.reindex(np.arange(len(frame))).to_numpy()


# --- Summaries ----------------------------------------------------------------------------------
YOUNG_NDCG = f"ndcg@10_young<{YOUNG_HOURS}h"
METRICS = ("ndcg@10", YOUNG_NDCG, "ctr", "purchases_per_1k_requests", "sold_share")


def _metric(frame: pd.DataFrame, name: str) -> float:
    if name in ("ndcg@10", YOUNG_NDCG):
        values = frame[name].to_numpy()
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    if name == "ctr":
        return float(frame.clicks.sum() / max(frame.impressions.sum(), 1))
    if name == "purchases_per_1k_requests":
        return float(1000 * frame.purchases.sum() / max(len(frame), 1))
    if name == "sold_share":
        return float(frame.sold_impressions.sum() / max(frame.impressions.sum(), 1))
    raise KeyError(name)


def summarise(result: ArmResult) -> dict:
    f = result.requests
    out = {m: _metric(f, m) for m in METRICS}
    out.update(
        requests=len(f),
        impressions=int(f.impressions.sum()),
        clicks=int(f.clicks.sum()),
        purchases=int(f.purchases.sum()),
        sold_impressions=int(f.sold_impressions.sum()),
        removed_sold=int(f.removed_sold.sum()),
        seconds=result.seconds,
    )
    return out


def compare(a: ArmResult, b: ArmResult, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """``b - a`` per metric with a paired bootstrap 95% interval (requests resampled; both arms faced
    the same requests)."""
    fa, fb = a.requests.set_index("request"), b.requests.set_index("request")
    common = fa.index.intersection(fb.index)
    fa, fb = fa.loc[common].reset_index(), fb.loc[common].reset_index()
    rng = np.random.default_rng(seed)
    out = {}
    draws = [rng.integers(0, len(common), len(common)) for _ in range(n_boot)]
    for m in METRICS:
        diff = _metric(fb, m) - _metric(fa, m)
        boot = np.array([_metric(fb.iloc[i], m) - _metric(fa.iloc[i], m) for i in draws])
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        out[m] = {"diff": diff, "lo": float(lo), "hi": float(hi)}
    return out
