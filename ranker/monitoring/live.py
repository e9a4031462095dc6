"""The simulator as a live environment: engagement for rankings the real scorer served.

The simulator wrote, for every logged impression, the hidden utility the user felt
(``data/ground_truth/utility.parquet``). :class:`LiveEnvironment` takes logged requests (their
user, surface, query and candidate listings, by default from the last day of the log), sends the
candidates to the scorer in a shuffled order, and draws what the user does with the list it gets
back, with the simulator's own behaviour model (:func:`ranker.data.simulate.draw_engagement`):
``P(click) = examine(rank) x sigmoid(utility - CLICK_THRESHOLD)``, ``examine(p) = p^-0.3``; saves,
add-to-bags and purchases need a click first. The events (impressions of the returned list and
the engagement, under the scorer's ``request_id``) are appended as parquet files to the live event
log (``data/live/events/``) in the raw events schema, where ``ranker monitor online`` joins them.

Caveat: the utility was drawn at the logged time (its freshness term and noise included), while
the replayed request runs now; listings sold since are removed by the scorer and simply not shown.
Both variants of an A/B face the same requests, so the comparison is fair.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ranker.config import Settings
from ranker.data import schema
from ranker.data.simulate import draw_engagement
from ranker.errors import RankerError

Sender = Callable[[dict], dict]


def live_events_dir(settings: Settings) -> Path:
    return settings.data_dir / "live" / "events"


def live_utility_dir(settings: Settings) -> Path:
    """Where the replay writes the hidden utility of every served (request, item): evaluation only."""
    return settings.data_dir / "live" / "utility"


@dataclass(frozen=True, eq=False)
class LoggedRequest:
    request_id: str
    surface: str
    user_id: str
    query: str | None
    items: tuple[str, ...]
    utility: dict  # item_id -> hidden utility


class LiveEnvironment:
    """Logged requests with their hidden utilities, replayable through a scorer.

    Args:
        settings: the platform home (raw events and ground truth).
        surfaces: surfaces to replay (default both).
        last_days: take requests from this many days before the last impression.
        seed: seeds the choice of requests, the candidate shuffle and the engagement draws.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        surfaces: tuple[str, ...] = ("search", "recs"),
        last_days: float = 1.0,
        seed: int = 0,
    ) -> None:
        truth_path = settings.ground_truth_dir / "utility.parquet"
        events_path = settings.raw_dir / "events.parquet"
        for path in (truth_path, events_path):
            if not path.exists():
                raise RankerError(
                    f"{path} not found: the live environment needs simulated data (`ranker data simulate`)"
                )
        if last_days <= 0:
            raise RankerError("--last-days must be > 0")
        import pyarrow.compute as pc

        events = pq.read_table(
            events_path,
            columns=["event_type", "timestamp", "request_id", "user_id", "item_id", "surface", "query", "position"],
        )
        events = events.filter(pc.equal(events.column("event_type"), "impression"))
        events = events.filter(pc.is_in(events.column("surface"), pa.array(list(surfaces))))
        if not events.num_rows:
            raise RankerError(f"no impressions on {', '.join(surfaces)} in {events_path}")
        last = pc.max(events.column("timestamp")).as_py()
        cutoff = pa.scalar(pd.Timestamp(last) - pd.Timedelta(days=last_days), events.column("timestamp").type)
        frame = events.filter(pc.greater(events.column("timestamp"), cutoff)).to_pandas()
        truth = pd.read_parquet(truth_path, columns=["request_id", "item_id", "true_utility"])
        frame = frame.merge(truth, on=["request_id", "item_id"], how="inner").sort_values(["request_id", "position"])
        self.requests: list[LoggedRequest] = []
        for rid, part in frame.groupby("request_id", sort=True):
            q = part["query"].iloc[0]
            self.requests.append(
                LoggedRequest(
                    request_id=str(rid),
                    surface=str(part.surface.iloc[0]),
                    user_id=str(part.user_id.iloc[0]),
                    query=None if q is None or (isinstance(q, float) and np.isnan(q)) else str(q),
                    items=tuple(part.item_id.astype(str)),
                    utility=dict(zip(part.item_id.astype(str), part.true_utility, strict=False)),
                )
            )
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> list[LoggedRequest]:
        """``n`` requests, without replacement while there are enough, then with."""
        if n < 1:
            raise RankerError("--requests must be >= 1")
        k = len(self.requests)
        idx = self.rng.permutation(k)[:n] if n <= k else self.rng.integers(0, k, size=n)
        return [self.requests[i] for i in idx]

    def engage(
        self, request: LoggedRequest, ranked: list[str], *, served_request_id: str, at: pd.Timestamp
    ) -> list[dict]:
        """Impressions of ``ranked`` and the engagement the user draws with them."""
        n = len(ranked)
        if not n:
            return []
        rng = self.rng
        position = np.arange(1, n + 1)
        utility = np.array([request.utility.get(i, -np.inf) for i in ranked], dtype=np.float64)
        t0 = at.value // 10**6  # ms
        drawn = draw_engagement(rng, utility, position, t0)
        times = {
            "impression": np.full(n, t0),
            "click": drawn.t_click,
            "save": drawn.t_save,
            "add_to_bag": drawn.t_add_to_bag,
            "purchase": drawn.t_purchase,
        }
        flags = {
            "impression": np.ones(n, dtype=bool),
            "click": drawn.click,
            "save": drawn.save,
            "add_to_bag": drawn.add_to_bag,
            "purchase": drawn.purchase,
        }
        out = []
        for kind, flag in flags.items():
            for i in np.flatnonzero(flag):
                out.append(
                    {
                        "event_id": f"live-{uuid.uuid4().hex}",
                        "event_type": kind,
                        "timestamp": pd.Timestamp(int(times[kind][i]), unit="ms", tz="UTC"),
                        "user_id": request.user_id,
                        "item_id": ranked[i],
                        "surface": request.surface,
                        "request_id": served_request_id,
                        "position": int(position[i]),
                        "query": request.query,
                    }
                )
        return out

    def run(
        self, send: Sender, n_requests: int, *, request_ts: float | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Replay ``n_requests`` through ``send`` (a JSON body -> the decoded response) and draw the
        engagement; returns ``{"events": DataFrame, "utility": DataFrame, "requests", "by_variant",
        "failed"}``; ``utility`` holds the hidden utility of each returned item under the scorer's
        ``request_id`` (``request_id, item_id, rank, true_utility``), for the true-utility metric."""
        events: list[dict] = []
        utility: list[tuple[str, str, int, float]] = []
        by_variant: dict[str, int] = {}
        failed = 0
        for request in self.sample(n_requests):
            items = list(request.items)
            self.rng.shuffle(items)  # the scorer must not see the logged order
            body: dict[str, Any] = {"surface": request.surface, "user_id": request.user_id, "items": items}
            if request.query:
                body["query"] = request.query
            if limit:
                body["limit"] = limit
            if request_ts is not None:
                body["context"] = {"timestamp": request_ts}
            at = pd.Timestamp(request_ts if request_ts is not None else time.time(), unit="s", tz="UTC")
            answer = send(body)
            if not answer or "items" not in answer:
                failed += 1
                continue
            variant = answer.get("variant")
            by_variant[f"{request.surface}/{variant}"] = by_variant.get(f"{request.surface}/{variant}", 0) + 1
            ranked = [i["item_id"] for i in sorted(answer["items"], key=lambda i: i["rank"])]
            events += self.engage(request, ranked, served_request_id=answer["request_id"], at=at)
            utility += [
                (str(answer["request_id"]), item, rank, float(request.utility[item]))
                for rank, item in enumerate(ranked, start=1)
                if item in request.utility
            ]
        frame = pd.DataFrame(events, columns=schema.EVENTS.names)
        truth = pd.DataFrame(utility, columns=["request_id", "item_id", "rank", "true_utility"])
        return {
            "events": frame,
            "utility": truth,
            "requests": n_requests - failed,
            "failed": failed,
            "by_variant": by_variant,
        }


def append_events(settings: Settings, events: pd.DataFrame, *, folder: Path | None = None) -> Path | None:
    """Append ``events`` (raw events schema) to the live event log as one new parquet file."""
    if events.empty:
        return None
    folder = folder or live_events_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    frame = schema.normalise(schema.EVENTS, events)
    path = folder / f"part-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_name("." + path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def append_utility(settings: Settings, utility: pd.DataFrame, *, folder: Path | None = None) -> Path | None:
    """Append the served items' hidden utilities (:meth:`LiveEnvironment.run`) as one parquet file."""
    if utility.empty:
        return None
    folder = folder or live_utility_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_name("." + path.name + ".tmp")
    utility.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_utility(folder: Path) -> pd.DataFrame | None:
    """The served items' hidden utilities written by :func:`append_utility`, or None when there are none."""
    files = sorted(Path(folder).glob("*.parquet")) if Path(folder).is_dir() else []
    if not files:
        return None
    return pd.concat(
        [pd.read_parquet(f, columns=["request_id", "item_id", "true_utility"]) for f in files], ignore_index=True
    )


def read_events(paths: list[Path]) -> pd.DataFrame:
    """Events from parquet files and folders of them (raw events schema)."""
    frames = []
    for path in paths:
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        for f in files:
            if f.exists():
                frames.append(pd.read_parquet(f, columns=["event_type", "timestamp", "request_id", "item_id"]))
    if not frames:
        return pd.DataFrame({"event_type": [], "timestamp": [], "request_id": [], "item_id": []})
    return pd.concat(frames, ignore_index=True)


def http_sender(base_url: str, *, token: str | None = None, timeout: float = 10.0) -> Sender:
    """POST /v1/rank over HTTP (urllib); a non-200 answer counts as a failed request."""
    url = base_url.rstrip("/") + "/v1/rank"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def send(body: dict) -> dict:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return {}

    return send


def client_sender(client: Any, *, headers: dict | None = None) -> Sender:
    """POST /v1/rank through a Flask test client (in-process)."""

    def send(body: dict) -> dict:
        response = client.post("/v1/rank", json=body, headers=headers or {})
        return response.get_json() if response.status_code == 200 else {}

    return send


def train_no_skill_model(settings: Settings, surface: str, *, seed: int = 0) -> Path:
    """A deliberately worse model for A/B demonstrations: the surface's training set with the labels
    shuffled within each request (same grades per list, no signal left), trained by the normal
    training code into ``artifacts/models``. Returns the model folder (publish it like any other)."""
    import json as _json

    from ranker.training.dataset import dataset_dir, load_dataset
    from ranker.training.train import TrainOptions, train_model

    df, manifest = load_dataset(settings, surface)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(df)), df.request_id.to_numpy()))
    shuffled = df.label.to_numpy()[order]  # labels of each request in random order, requests in id order
    by_request = np.argsort(df.request_id.to_numpy(), kind="stable")
    labels = np.empty_like(shuffled)
    labels[by_request] = shuffled
    df = df.assign(label=labels)
    home = settings.artifacts_dir / "monitoring" / f"no_skill_{surface}"
    target = dataset_dir(Settings(home=home), surface)
    target.mkdir(parents=True, exist_ok=True)
    df.to_parquet(target / "dataset.parquet", index=False)
    (target / "manifest.json").write_text(
        _json.dumps(
            {
                **manifest,
                "path": str(target / "dataset.parquet"),
                "fingerprint": manifest["fingerprint"] + "-labels-shuffled",
            }
        )
    )
    return train_model(
        Settings(home=home), TrainOptions(surface=surface, seed=seed), out_root=settings.artifacts_dir / "models"
    )
