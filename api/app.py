"""The Flask scorer: ``create_app`` builds the app, its long-lived resources and its routes.

Configuration comes in layers: :data:`DEFAULTS`, then the environment (:func:`config_from_env`),
then ``test_config``. Platform settings (home, online store, Redis, registry) come from
``Settings.from_env()`` unless passed in. The models, their feature paths, the thread pool of store
calls and the metrics are created once here and kept on ``app.extensions["ranker"]`` (a :class:`Scorer`).

Routes (one blueprint per concern):

=====================  =====================================================================
``POST /v1/rank``      rank candidate listings for a user (token required when RANKER_API_TOKEN is set)
``GET /healthz``       the process is up
``GET /readyz``        200 when every surface has a model and its online store answers, else 503
``GET /metrics``       Prometheus text
``GET /openapi.json``  the OpenAPI 3 document of these routes
``POST /admin/reload`` reload production models from the registry now (always needs the token)
=====================  =====================================================================

A/B: ``RANKER_VARIANTS`` / ``RANKER_VARIANTS_FILE`` give each surface its variants (a stage or a
version each, with a traffic weight; :mod:`ranker.monitoring.abtest`); a user is assigned by a salted
hash of ``user_id`` (``RANKER_AB_SALT``) and stays in one variant. The response carries ``"variant"``.

Served-feature log: a ``RANKER_SERVED_LOG_SAMPLE`` share of requests is handed, after the answer is
computed, to a bounded queue (``put_nowait``: never waits, a full queue drops and counts in
``ranker_served_log_dropped_total``); a background thread writes rotated parquet files under
``RANKER_SERVED_LOG_URI`` (:mod:`ranker.monitoring.servedlog`). Logging never fails a request.

Degraded mode: when the feature fetch fails (``OnlineStoreUnavailable``, any error) or misses its
budget, the request is still answered within the budget, ``"degraded": true``: listings remembered as
sold are removed, the rest are ordered by their last-known popularity (``item_clicks_7d`` from earlier
successful fetches, 0 when never seen), ties in the caller's order; ``score`` is that popularity.
"""

from __future__ import annotations

import gc
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from api.metrics import Metrics
from api.models import ItemMemory, ModelHolder, ServingModel
from api.schemas import ApiError, RankRequest, error_body, finite_or_none, parse_json_body, parse_rank_request
from api.settings import SCORER_SETTINGS, check_values, parse_env
from ranker.config import ConfigError, Settings
from ranker.errors import RankerError
from ranker.monitoring.abtest import load_variants
from ranker.surfaces import MODEL_NAMES

log = logging.getLogger("api")

# The scorer's settings are declared once, in api/settings.py; these are derived from them.
DEFAULTS: dict[str, Any] = {setting.key: setting.default for setting in SCORER_SETTINGS}
TOP_CONTRIBUTIONS = 5
AGE_FEATURE = "listing_age_hours"  # what makes a candidate young for the exploration policy


def config_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The scorer settings present in ``env`` (default ``os.environ``), parsed; ConfigError names a bad one."""
    return parse_env(SCORER_SETTINGS, env)


@dataclass(frozen=True)
class ScorerConfig:
    """The validated scorer settings (``app.config`` keys, typed)."""

    token: str
    max_candidates: int
    feature_timeout_s: float
    reload_interval_s: float
    item_cache_ttl_s: float
    surfaces: tuple[str, ...]
    fetch_threads: int
    compiled_trees: bool = True
    max_body_bytes: int = 1 << 20
    metrics_multiprocess: bool = False
    experiments: Any = None  # dict: surface -> ranker.monitoring.abtest.Experiment
    served_log: Any = None  # ranker.monitoring.servedlog.ServedLogConfig
    exploration: Any = None  # ranker.serving.exploration.ExplorationPolicy (off: no slots)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ScorerConfig":
        """Validate ``config`` (app.config: :data:`DEFAULTS`, environment, overrides) against the
        declared settings' rules; ConfigError names the first setting that breaks its rule."""
        check_values(SCORER_SETTINGS, config)
        surfaces = config["RANKER_SURFACES"]
        if isinstance(surfaces, str):
            surfaces = tuple(s.strip() for s in surfaces.split(",") if s.strip())
        surfaces = tuple(dict.fromkeys(surfaces))
        unknown = [s for s in surfaces if s not in MODEL_NAMES]
        if not surfaces or unknown:
            raise ConfigError(
                f"RANKER_SURFACES={','.join(surfaces)!r} must list one or more of {', '.join(MODEL_NAMES)}"
            )
        out = cls(
            token=str(config.get("RANKER_API_TOKEN") or ""),
            max_candidates=int(config["RANKER_MAX_CANDIDATES"]),
            feature_timeout_s=float(config["RANKER_FEATURE_TIMEOUT_MS"]) / 1000.0,
            reload_interval_s=float(config["RANKER_RELOAD_INTERVAL_S"]),
            item_cache_ttl_s=float(config["RANKER_ITEM_CACHE_TTL_S"]),
            surfaces=surfaces,
            fetch_threads=int(config["RANKER_FETCH_THREADS"]),
            compiled_trees=bool(config["RANKER_COMPILED_TREES"]),
            max_body_bytes=int(config["MAX_CONTENT_LENGTH"]),
            metrics_multiprocess=bool(config["RANKER_METRICS_MULTIPROCESS"]),
            experiments=load_variants(
                config.get("RANKER_VARIANTS") or "",
                str(config.get("RANKER_VARIANTS_FILE") or ""),
                surfaces=surfaces,
                salt=str(config.get("RANKER_AB_SALT") or ""),
            ),
            served_log=_served_log_config(config),
            exploration=_exploration_policy(config),
        )
        return out


def _exploration_policy(config: Mapping[str, Any]) -> Any:
    from ranker.serving.exploration import ExplorationPolicy, parse_slots

    return ExplorationPolicy(
        slots=parse_slots(str(config.get("RANKER_EXPLORE_SLOTS") or "")),
        young_hours=float(config["RANKER_EXPLORE_YOUNG_HOURS"]),
        pool=int(config["RANKER_EXPLORE_POOL"]),
        seed=int(config["RANKER_EXPLORE_SEED"]),
    )


def _served_log_config(config: Mapping[str, Any]) -> Any:
    from ranker.monitoring.servedlog import ServedLogConfig

    try:
        return ServedLogConfig(
            uri=str(config.get("RANKER_SERVED_LOG_URI") or ""),
            sample_rate=float(config.get("RANKER_SERVED_LOG_SAMPLE", 0.0)),
            queue_size=int(config.get("RANKER_SERVED_LOG_QUEUE", 2000)),
            rotate_rows=int(config.get("RANKER_SERVED_LOG_ROTATE_ROWS", 50_000)),
            rotate_seconds=float(config.get("RANKER_SERVED_LOG_ROTATE_S", 60.0)),
        )
    except RankerError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, eq=False)
class Ranking:
    """One request's outcome: the kept (not sold) items, their scores, the order to return them in."""

    item_ids: list[str]
    scores: np.ndarray
    order: np.ndarray  # indices into item_ids/scores, best first, cut at the limit
    matrix: np.ndarray | None  # features of item_ids (None when degraded)
    removed_sold: int
    degraded_reason: str | None
    # Exploration on (RANKER_EXPLORE_SLOTS): per position of ``order``, the logging propensity and
    # whether a reserved slot's draw filled it; None when exploration is off.
    propensity: np.ndarray | None = None
    explored: np.ndarray | None = None


class Scorer:
    """The app's long-lived state: settings, models (with the store pool), item memory and metrics."""

    def __init__(
        self, *, settings: Settings, config: ScorerConfig, models: ModelHolder, metrics: Metrics, served_log: Any = None
    ) -> None:
        from ranker.serving.features import FetchDeadlineExceeded, OnlineStoreUnavailable

        self.settings = settings
        self.config = config
        self.models = models
        self.metrics = metrics
        self.served_log = served_log  # ranker.monitoring.servedlog.ServedLogWriter or None (off)
        self.memory = ItemMemory()
        self.store_unavailable = OnlineStoreUnavailable
        self.deadline_exceeded = FetchDeadlineExceeded
        self._last_warning: dict[str, float] = {}

    def _warn(self, key: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log a degradation at most every 10 s per kind: an outage must not flood the logs."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) >= 10.0:
            self._last_warning[key] = now
            log.warning(
                message + " (repeats are logged every 10 s; see ranker_degraded_responses_total)",
                *args,
                exc_info=exc_info,
            )

    def fetch(self, model: ServingModel, req: RankRequest) -> tuple[Any, str | None]:
        """(FeatureRows, None) or (None, reason) when the store failed or missed the budget.

        The fetch runs on the request's own thread with a deadline of now + the budget: every
        wait on the store ends by then (socket timeouts for Redis, an interrupted statement for
        sqlite), so a hung store cannot hold the request past the budget, and a healthy one costs
        no hand-off to another thread.
        """
        try:
            rows = model.features.fetch(
                user_id=req.user_id,
                item_ids=req.items,
                query=req.query,
                request_ts=req.request_ts,
                deadline=time.monotonic() + self.config.feature_timeout_s,
            )
            return rows, None
        except self.deadline_exceeded:
            self._warn(
                f"timeout:{req.surface}",
                "feature fetch for %s missed its %.0f ms budget; degraded answer",
                req.surface,
                self.config.feature_timeout_s * 1e3,
            )
            return None, "timeout"
        except self.store_unavailable as exc:
            self._warn(
                f"unavailable:{req.surface}", "online store unavailable for %s: %s; degraded answer", req.surface, exc
            )
            return None, "store_unavailable"
        except Exception:  # noqa: BLE001 - a broken feature path degrades the answer, it does not fail it
            self._warn(
                f"error:{req.surface}", "feature fetch for %s failed; degraded answer", req.surface, exc_info=True
            )
            return None, "error"

    def score(
        self, model: ServingModel, req: RankRequest, rows: Any, degraded_reason: str | None, *, request_id: str = ""
    ) -> "Ranking":
        """Drop sold listings, score the rest (the model on the fetched rows, or the fallback), order them.

        With rows: scores are ``Booster.predict`` on the float32 matrix, and the rows' popularity and
        sold flags are remembered for later degraded answers. Without: listings remembered as sold
        are dropped and the rest scored by remembered popularity (0 when never seen).

        With exploration on (:mod:`ranker.serving.exploration`), the order comes from the policy
        (reserved slots drawn among young candidates, seeded by ``request_id``) with a propensity per
        position; a degraded answer explores nothing (its propensities are all 1).
        """
        metrics = self.metrics
        item_ids = list(req.items)
        matrix = None
        if rows is not None:
            metrics.sync_cache(req.surface, model.features)
            sold = np.asarray(rows.sold, dtype=bool)
            known = np.asarray(rows.known, dtype=bool)
            matrix = np.asarray(rows.matrix, dtype=np.float32)
            pop = model.popularity_index
            self.memory.remember(item_ids, matrix[:, pop] if pop is not None else None, sold)
            if not known.all():
                metrics.unknown_items.labels(req.surface).inc(int((~known).sum()))
        else:
            metrics.degraded.labels(req.surface, degraded_reason).inc()
            sold = self.memory.sold(item_ids)
        keep = np.flatnonzero(~sold)
        everything = len(keep) == len(item_ids)
        kept_ids = item_ids if everything else [item_ids[i] for i in keep.tolist()]
        if matrix is not None:
            if not everything:
                matrix = matrix[keep]
            scores = model.predict(matrix) if len(keep) else np.empty(0)
        else:
            scores = np.nan_to_num(self.memory.popularity(kept_ids), nan=0.0)
        policy = self.config.exploration
        propensity = explored = None
        if policy is not None and policy.active:
            age = model.feature_names.index(AGE_FEATURE) if AGE_FEATURE in model.feature_names else None
            if matrix is not None and age is not None:
                chosen = policy.rank(scores, matrix[:, age], request_id=request_id)
                order, propensity, explored = chosen.order, chosen.propensity, chosen.explored
            else:  # degraded, or a model without the listing's age: the deterministic order
                order = np.argsort(-scores, kind="stable")
                propensity, explored = np.ones(len(order)), np.zeros(len(order), dtype=bool)
        else:
            # Highest score first; equal scores keep the caller's order (stable sort).
            order = np.argsort(-scores, kind="stable")
        if req.limit is not None:
            order = order[: req.limit]
            if propensity is not None and explored is not None:
                propensity, explored = propensity[: req.limit], explored[: req.limit]
        removed = len(item_ids) - len(keep)
        if removed:
            metrics.removed_sold.labels(req.surface).inc(removed)
        return Ranking(
            item_ids=kept_ids,
            scores=scores,
            order=order,
            matrix=matrix,
            removed_sold=removed,
            degraded_reason=None if rows is not None else degraded_reason,
            propensity=propensity,
            explored=explored,
        )

    def model_for(self, req: RankRequest) -> tuple[ServingModel | None, str]:
        """(model, variant name) for the request: the user's A/B variant; when that variant has no
        model loaded (e.g. an empty staging stage) the control serves and is reported."""
        experiment = self.config.experiments[req.surface]
        variant = experiment.assign(req.user_id).name
        model = self.models.get(req.surface, variant)
        if model is None and variant != experiment.variants[0].name:
            self._warn(
                f"variant:{req.surface}:{variant}",
                "variant %s of %s has no model; the control serves",
                variant,
                req.surface,
            )
            variant = experiment.variants[0].name
            model = self.models.get(req.surface)
        return model, variant

    def log_served(
        self, *, request_id: str, req: RankRequest, model: ServingModel, variant: str, ranking: "Ranking"
    ) -> None:
        """Hand the answer to the served-feature log (sampled). Cheap and never raises: the record
        holds the arrays this request already owns (the kept rows' matrix: the fetch's own array,
        made for this request and never written after, or its indexed copy) and the queue never waits."""
        writer = self.served_log
        try:
            if writer is None or not writer.sample():
                return
            from ranker.monitoring.servedlog import ServedRecord

            ranks = np.zeros(len(ranking.item_ids), dtype=np.int32)
            ranks[ranking.order] = np.arange(1, len(ranking.order) + 1, dtype=np.int32)
            # The logging policy's propensity per returned item (1: deterministic; NaN: not returned).
            propensity = np.full(len(ranking.item_ids), np.nan)
            explored = np.zeros(len(ranking.item_ids), dtype=bool)
            propensity[ranking.order] = 1.0 if ranking.propensity is None else ranking.propensity
            if ranking.explored is not None:
                explored[ranking.order] = ranking.explored
            record = ServedRecord(
                request_id=request_id,
                request_ts=float(req.request_ts),
                logged_at=time.time(),
                surface=req.surface,
                user_id=req.user_id,
                query=req.query,
                model_name=model.name,
                model_version=model.version,
                variant=variant,
                feature_service=model.feature_service,
                feature_names=model.feature_names,
                degraded=ranking.degraded_reason is not None,
                item_ids=ranking.item_ids,
                scores=ranking.scores,
                ranks=ranks,
                matrix=ranking.matrix,
                propensity=propensity,
                explored=explored,
            )
            if writer.submit(record):
                self.metrics.served_log_requests.inc()
        except Exception:  # noqa: BLE001 - logging must never fail a request
            self.metrics.served_log_dropped.labels("error").inc()
            self._warn("served_log", "served-feature log record failed; dropped", exc_info=True)

    def close(self) -> None:
        """Stop the poller, close feature paths and the store pool, flush the served log."""
        self.models.close()
        if self.served_log is not None:
            self.served_log.close()


def check_config(env: Mapping[str, str] | None = None) -> ScorerConfig:
    """The scorer settings of ``env`` (default ``os.environ``) over :data:`DEFAULTS`, validated as
    :func:`create_app` does; ``ranker serve`` calls it before starting workers, so a bad setting is
    one error line instead of a worker that fails to boot."""
    return ScorerConfig.from_config({**DEFAULTS, **config_from_env(env)})


def create_app(
    test_config: Mapping[str, Any] | None = None, *, settings: Settings | None = None, features_factory: Any = None
) -> Flask:
    """Build the scorer.

    Args:
        test_config: overrides applied last (keys of :data:`DEFAULTS` or any Flask setting).
        settings: platform settings; default ``Settings.from_env()``.
        features_factory: builds the feature path of a service (default ``OnlineFeatures``); tests
            use it to wrap the real path (e.g. to inject a serving-side transformation bug).

    Loads the production model of every configured surface (a surface without one is reported by
    /readyz and answers 503 ``no_model``) and starts the registry poller.
    """
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(DEFAULTS)
    app.config.update(config_from_env())
    if test_config:
        app.config.update(test_config)
    if isinstance(app.json, DefaultJSONProvider):  # Flask's own provider: keep the documented key order
        app.json.sort_keys = False
    config = ScorerConfig.from_config(app.config)
    settings = settings or Settings.from_env()

    metrics = Metrics(multiprocess=config.metrics_multiprocess)
    models = ModelHolder(
        settings,
        surfaces=config.surfaces,
        feature_timeout_s=config.feature_timeout_s,
        item_cache_ttl_s=config.item_cache_ttl_s,
        metrics=metrics,
        fetch_threads=config.fetch_threads,
        experiments=config.experiments,
        features_factory=features_factory,
        compile_trees=config.compiled_trees,
    )
    served_log = None
    if config.served_log.sample_rate > 0:
        from ranker.monitoring.servedlog import ServedLogWriter, log_store

        served_log = ServedLogWriter(
            log_store(settings, config.served_log.uri), config.served_log, on_event=metrics.served_log_event
        )
    scorer = Scorer(settings=settings, config=config, models=models, metrics=metrics, served_log=served_log)
    app.extensions["ranker"] = scorer
    for surface in config.surfaces:
        metrics.init_surface(surface)
    models.refresh()
    models.start_polling(config.reload_interval_s)

    app.register_blueprint(rank_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(admin_bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def freeze_heap() -> None:
    """Collect once and move every start-up object to the permanent generation: later gen-2
    collections skip them, which removed ~100 ms p99 spikes (docs/internals.md, "How the scorer stays fast")."""
    gc.collect()
    gc.freeze()


def scorer() -> Scorer:
    return current_app.extensions["ranker"]


# ------------------------------------------------------------------------------------------ errors


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = current_app.response_class(orjson.dumps(body), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    scorer().metrics.errors.labels(code).inc()
    return _json(error_body(code, message), status, headers)


def _api_error(exc: ApiError) -> Response:
    return _error(exc.status, exc.code, exc.message, exc.headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, (exc.name or "error").lower().replace(" ", "_"))
    message = exc.description or exc.name
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than {limit} bytes (RANKER_MAX_BODY_BYTES)"
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return _error(status, code, message, headers)


def _unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # pragma: no cover - Flask routes these to _http_error
        return _http_error(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal", "internal error; the scorer logged it")


def _require_token(*, admin: bool) -> None:
    expected = scorer().config.token
    if not expected:
        if admin:
            raise ApiError(
                403,
                "admin_disabled",
                "admin routes are disabled: set RANKER_API_TOKEN on the scorer and send it as "
                "'Authorization: Bearer <token>'",
            )
        return
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    challenge = 'Bearer realm="ranker"'
    if scheme.lower() != "bearer" or not supplied.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing bearer token: send 'Authorization: Bearer <RANKER_API_TOKEN>'",
            headers={"WWW-Authenticate": challenge},
        )
    if not hmac.compare_digest(supplied.strip().encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(
            401,
            "unauthorized",
            "invalid bearer token",
            headers={"WWW-Authenticate": challenge + ', error="invalid_token"'},
        )


# ------------------------------------------------------------------------------------------ ranking

rank_bp = Blueprint("rank", __name__)


@rank_bp.before_request
def _rank_start() -> None:
    g.started = time.perf_counter()
    g.surface = "invalid"
    _require_token(admin=False)


@rank_bp.after_request
def _rank_done(response: Response) -> Response:
    metrics = scorer().metrics
    metrics.child(metrics.requests, g.get("surface", "invalid"), str(response.status_code)).inc()
    if response.status_code >= 500 and "variant" in g:
        metrics.child(metrics.variant_errors, g.surface, g.variant).inc()
    if "started" in g:
        metrics.observe_stage(g.get("surface", "invalid"), "total", time.perf_counter() - g.started)
    return response


@rank_bp.post("/v1/rank")
def rank() -> Response:
    """Rank candidate listings; see the module docstring and /openapi.json for the contract."""
    state = scorer()
    metrics = state.metrics
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as application/json (got {request.mimetype or 'no content type'})",
        )
    req = parse_rank_request(
        parse_json_body(request.get_data(cache=False)),
        surfaces=state.config.surfaces,
        max_candidates=state.config.max_candidates,
    )
    g.surface = req.surface
    model, variant = state.model_for(req)  # read once: a concurrent reload cannot change it under us
    g.variant = variant
    if model is None:
        raise ApiError(
            503,
            "no_model",
            f"no production model is loaded for surface {req.surface!r}: "
            f"{state.models.state(req.surface).error or 'promote one and POST /admin/reload'}",
        )
    t_parse = time.perf_counter()
    metrics.observe_stage(req.surface, "parse", t_parse - g.started)
    metrics.child(metrics.candidates, req.surface).observe(len(req.items))

    rows, degraded_reason = state.fetch(model, req)
    t_fetch = time.perf_counter()
    metrics.observe_stage(req.surface, "fetch", t_fetch - t_parse)

    request_id = uuid.uuid4().hex
    ranking = state.score(model, req, rows, degraded_reason, request_id=request_id)
    t_predict = time.perf_counter()
    metrics.observe_stage(req.surface, "predict", t_predict - t_fetch)

    ids, scores = ranking.item_ids, ranking.scores[ranking.order].tolist()
    items = [
        {"item_id": ids[i], "score": score, "rank": rank_}
        for rank_, (i, score) in enumerate(zip(ranking.order.tolist(), scores, strict=False), start=1)
    ]
    if ranking.propensity is not None and ranking.explored is not None:
        for item, p, e in zip(items, ranking.propensity.tolist(), ranking.explored.tolist(), strict=True):
            item["propensity"] = p
            item["explored"] = e
    if req.explain:
        _explain(items, model, ranking.matrix[ranking.order] if ranking.matrix is not None else None)
    body: dict[str, Any] = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version},
        "variant": variant,
        "items": items,
        "removed_sold": ranking.removed_sold,
        "duplicates_removed": req.duplicates,
        "degraded": ranking.degraded_reason is not None,
    }
    if ranking.degraded_reason is not None:
        body["degraded_reason"] = ranking.degraded_reason
    if req.ignored:
        body["ignored_fields"] = list(req.ignored)
    response = _json(body, headers={"X-Request-ID": request_id})
    metrics.child(metrics.variant_requests, req.surface, variant).inc()
    state.log_served(request_id=request_id, req=req, model=model, variant=variant, ranking=ranking)
    metrics.observe_stage(req.surface, "serialise", time.perf_counter() - t_predict)
    return response


def _explain(items: list[dict], model: ServingModel, matrix: np.ndarray | None) -> None:
    """Add each item's feature values and its top SHAP contributions (plus the rest and the bias, so
    ``sum(top) + other + bias == score``). Degraded answers have neither: both are null."""
    if matrix is None:
        for item in items:
            item["features"] = None
            item["contributions"] = None
        return
    contrib = model.contributions(matrix) if len(items) else np.empty((0, len(model.feature_names) + 1))
    names = model.feature_names
    for item, values, row in zip(items, matrix.tolist(), contrib, strict=False):
        item["features"] = {name: finite_or_none(v) for name, v in zip(names, values, strict=False)}
        per_feature = row[:-1]
        top = np.argsort(-np.abs(per_feature), kind="stable")[:TOP_CONTRIBUTIONS]
        item["contributions"] = {
            "bias": float(row[-1]),
            "top": [{"feature": names[j], "value": float(per_feature[j])} for j in top.tolist()],
            "other": float(per_feature.sum() - per_feature[top].sum()),
        }


# ------------------------------------------------------------------------------------------ operations

ops_bp = Blueprint("ops", __name__)


@ops_bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return _json({"status": "ok"})


@ops_bp.get("/readyz")
def readyz() -> Response:
    """Readiness: every surface has a model and its online store answers a ping."""
    ready, surfaces = scorer().models.readiness()
    reasons = [f"{s}: {r}" for s, entry in surfaces.items() for r in entry["reasons"]]
    body = {"ready": ready, "surfaces": surfaces}
    if not ready:
        body["reasons"] = reasons
    return _json(body, 200 if ready else 503)


@ops_bp.get("/metrics")
def metrics_text() -> Response:
    """Prometheus exposition text."""
    data, content_type = scorer().metrics.render()
    return Response(data, status=200, content_type=content_type)


@ops_bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document of every route."""
    from api.openapi import build_spec

    return _json(build_spec(current_app))


# ------------------------------------------------------------------------------------------ admin

admin_bp = Blueprint("admin", __name__, url_prefix="/admin")


@admin_bp.before_request
def _admin_auth() -> None:
    _require_token(admin=True)


@admin_bp.post("/reload")
def reload_models() -> Response:
    """Load the registry's production versions now (retrying versions that failed before)."""
    result = scorer().models.refresh(force=True)
    return _json({"surfaces": result})
