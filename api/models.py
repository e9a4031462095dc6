"""The scorer's models: one production model per surface, loaded from the registry, with hot reload.

A :class:`ServingModel` bundles everything a request needs for one surface: the verified LightGBM
booster, its card, and the :class:`~ranker.serving.features.OnlineFeatures` of the card's feature
service. The :class:`ModelHolder` keeps one per surface and swaps it atomically: a new version is
built completely (registry fetch with sha256 verification, booster, feature path, feature-order
check) and only then replaces one dictionary reference. A request reads that reference once, so an
in-flight request finishes on the object it started with; the replaced feature path is closed after
a grace period, not under a running request. A version that fails to load is logged, counted
(``ranker_model_loads_total{result="failed"}``) and skipped; the current model keeps serving.

A/B: a surface can have several variants (:mod:`ranker.monitoring.abtest`), each naming a stage or
a version; the holder keeps one model per (surface, variant), and variants that resolve to the same
version share one :class:`ServingModel`. ``get(surface)`` is the first (control) variant.

:class:`ItemMemory` is the degraded-mode source: the last-known popularity (``item_clicks_7d``) and
sold status of listings, remembered from successful feature fetches. It costs no start-up I/O and
bounds its memory with two generations of dictionaries.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.monitoring.abtest import Experiment, default_experiment
from ranker.surfaces import MODEL_NAMES

POPULARITY_FEATURE = "item_clicks_7d"
STAGE = "production"

log = logging.getLogger("api.models")


class ModelLoadError(RankerError):
    """A model version cannot be served (verification failed, features differ from its service...)."""


@dataclass(frozen=True, eq=False)
class ServingModel:
    """Everything one surface needs to rank: immutable once built, replaced whole on reload."""

    surface: str
    name: str
    version: str
    card: dict = field(repr=False)
    booster: Any = field(repr=False)
    features: Any = field(repr=False)  # OnlineFeatures of card["feature_service"]
    feature_names: tuple[str, ...] = ()
    loaded_at: float = 0.0
    compiled: Any = field(default=None, repr=False)  # ranker.serving.trees.CompiledTrees; None: LightGBM

    @property
    def predictor(self) -> str:
        """``compiled`` (the verified numba trees) or ``lightgbm`` (Booster.predict)."""
        return "lightgbm" if self.compiled is None else "compiled"

    @property
    def feature_service(self) -> str:
        return str(self.card["feature_service"])

    @property
    def popularity_index(self) -> int | None:
        try:
            return self.feature_names.index(POPULARITY_FEATURE)
        except ValueError:
            return None

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Raw LightGBM scores (one thread: gunicorn workers are the parallelism): the compiled
        trees when the model compiled and verified bit-identical at load, else ``Booster.predict``."""
        if self.compiled is not None:
            return self.compiled.predict(matrix)
        return self.booster.predict(matrix, num_threads=1)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """SHAP contributions, shape (n_items, n_features + 1); the last column is the bias."""
        return self.booster.predict(matrix, pred_contrib=True, num_threads=1)


class ItemMemory:
    """Last-known popularity and sold status of listings, for ranking when the online store is down.

    Filled from every successful fetch. Two generations bound memory: when the young generation
    reaches ``capacity`` it becomes the old one and the previous old one is dropped, so at most
    ``2 * capacity`` listings are held and recently seen ones survive.
    """

    def __init__(self, *, capacity: int = 200_000) -> None:
        self.capacity = int(capacity)
        self._young: dict[str, float] = {}
        self._old: dict[str, float] = {}
        self._sold_young: set[str] = set()
        self._sold_old: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, item_ids: list[str], popularity: np.ndarray | None, sold: np.ndarray) -> None:
        sold_ids = [item for item, is_sold in zip(item_ids, sold.tolist(), strict=False) if is_sold]
        with self._lock:
            if popularity is not None:
                if len(self._young) >= self.capacity:
                    self._old, self._young = self._young, {}
                self._young.update(zip(item_ids, popularity.tolist(), strict=False))
            if sold_ids:
                if len(self._sold_young) >= self.capacity:
                    self._sold_old, self._sold_young = self._sold_young, set()
                self._sold_young.update(sold_ids)

    def popularity(self, item_ids: list[str]) -> np.ndarray:
        """Remembered popularity per item, NaN for items never seen."""
        young, old = self._young, self._old
        nan = float("nan")
        return np.array([young.get(i, old.get(i, nan)) for i in item_ids], dtype=np.float64)

    def sold(self, item_ids: list[str]) -> np.ndarray:
        young, old = self._sold_young, self._sold_old
        return np.array([(i in young or i in old) for i in item_ids], dtype=bool)

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


@dataclass
class SurfaceState:
    """What the holder knows about one surface besides its model (for /readyz and /admin/reload)."""

    name: str
    error: str | None = None
    failed_version: str | None = None
    checked_at: float | None = None
    resolved_at: float | None = None  # last time the registry answered for this surface/variant


def _default_features_factory(settings: Settings, *, service: str, timeout_s: float, item_cache_ttl_s: float) -> Any:
    from ranker.serving.features import OnlineFeatures

    return OnlineFeatures(settings, service=service, timeout_s=timeout_s, item_cache_ttl_s=item_cache_ttl_s)


class ModelHolder:
    """The production model of each surface, loaded at start and swapped atomically on reload.

    Args:
        settings: platform settings (registry location, online store).
        surfaces: the surfaces to serve (keys of ``MODEL_NAMES``).
        feature_timeout_s: the feature fetch budget handed to each ``OnlineFeatures``.
        item_cache_ttl_s: item feature cache TTL (0 = no cache).
        metrics: the app's :class:`~api.metrics.Metrics` (None in unit use).
        registry: a ``Registry`` (default ``Registry.from_settings(settings)``).
        features_factory: builds the feature path of a service (default ``OnlineFeatures``).
        retire_grace_s: how long a replaced feature path stays open for requests still using it.
        fetch_threads: size of :attr:`pool`, the threads readiness pings and warm-up fetches run on
            (waited on with a deadline). Request fetches run on the request's thread with a
            deadline of their own (``OnlineFeatures.fetch(deadline=...)``): no hand-off per request.
        compile_trees: predict with the model's trees compiled by :mod:`ranker.serving.trees`
            (verified bit-identical at load, else LightGBM's own predict); False: always LightGBM.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        surfaces: tuple[str, ...],
        feature_timeout_s: float,
        item_cache_ttl_s: float = 0.0,
        metrics: Any = None,
        registry: Any = None,
        features_factory: Callable[..., Any] | None = None,
        retire_grace_s: float = 30.0,
        fetch_threads: int = 8,
        experiments: dict[str, Experiment] | None = None,
        compile_trees: bool = True,
    ) -> None:
        unknown = [s for s in surfaces if s not in MODEL_NAMES]
        if unknown:
            raise RankerError(
                f"unknown surface(s) {', '.join(unknown)} in RANKER_SURFACES; use {', '.join(MODEL_NAMES)}"
            )
        if registry is None:
            from ranker.registry import Registry

            registry = Registry.from_settings(settings)
        self.settings = settings
        self.surfaces = tuple(surfaces)
        self.feature_timeout_s = float(feature_timeout_s)
        self.item_cache_ttl_s = float(item_cache_ttl_s)
        self.metrics = metrics
        self.registry = registry
        self.features_factory = features_factory or _default_features_factory
        self.retire_grace_s = float(retire_grace_s)
        self.compile_trees = bool(compile_trees)
        experiments = dict(experiments or {})
        self.experiments = {s: experiments.get(s) or default_experiment(s) for s in self.surfaces}
        self._models: dict[str, ServingModel] = {}  # surface -> the control (first) variant's model
        self._variant_models: dict[tuple[str, str], ServingModel] = {}
        self._state = {s: SurfaceState(name=MODEL_NAMES[s]) for s in self.surfaces}
        self._variant_state = {
            (s, v.name): (self._state[s] if i == 0 else SurfaceState(name=MODEL_NAMES[s]))
            for s in self.surfaces
            for i, v in enumerate(self.experiments[s].variants)
        }
        self._refresh_lock = threading.Lock()
        self._retired: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(fetch_threads)), thread_name_prefix="ranker-store")
        self._service_views: dict[str, tuple[str, tuple[str, ...]]] = {}  # service -> (project, batch views)

    # ------------------------------------------------------------------------------------- reading

    def get(self, surface: str, variant: str | None = None) -> ServingModel | None:
        """The model serving ``surface`` (its ``variant``; default the control) now: one reference
        read, safe against a concurrent swap."""
        if variant is None:
            return self._models.get(surface)
        return self._variant_models.get((surface, variant))

    def state(self, surface: str, variant: str | None = None) -> SurfaceState:
        return self._state[surface] if variant is None else self._variant_state[(surface, variant)]

    def ping(self, model: ServingModel, *, timeout_s: float) -> bool:
        """Does the model's online store answer within ``timeout_s``? Never raises."""
        future = self.pool.submit(model.features.ping)
        try:
            return bool(future.result(timeout=timeout_s))
        except Exception as exc:  # noqa: BLE001 - a failing or hung ping is an unready store, whatever the cause
            future.cancel()
            log.debug("ping of %s failed: %r", model.feature_service, exc)
            return False

    def empty_views(self, model: ServingModel, *, timeout_s: float) -> list[str] | None:
        """The views of the model's feature service that the online store holds no rows for
        (per the materialization markers written with the data; :mod:`ranker.features.online_state`),
        or None when that cannot be told within ``timeout_s``. Never raises."""
        from ranker.features import online_state

        def check() -> list[str]:
            service = model.feature_service
            if service not in self._service_views:  # a registry read, once per service
                self._service_views[service] = online_state.service_views(self.settings, service)
            project, views = self._service_views[service]
            markers = online_state.read_markers(self.settings, project, timeout_s=timeout_s)
            return online_state.missing_views(markers, views)

        future = self.pool.submit(check)
        try:
            return future.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - unknown contents are reported by the ping, not here
            future.cancel()
            log.debug("materialization markers of %s unreadable: %r", model.feature_service, exc)
            return None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, per-surface detail): ready iff every surface has a model whose store answers ping
        and holds rows for every view of the model's feature service."""
        ready = True
        detail: dict[str, Any] = {}
        for surface in self.surfaces:
            model = self.get(surface)
            state = self._state[surface]
            entry: dict[str, Any] = {
                "model": state.name,
                "version": model.version if model else None,
                "predictor": model.predictor if model else None,
            }
            reasons = []
            if model is None:
                reasons.append(
                    f"no {STAGE} model loaded for {state.name}" + (f": {state.error}" if state.error else "")
                )
            else:
                store_ok = self.ping(model, timeout_s=max(1.0, 2 * self.feature_timeout_s))
                entry["online_store"] = "ok" if store_ok else "unavailable"
                if not store_ok:
                    reasons.append(f"the online store does not answer for {model.feature_service}")
                else:
                    empty = self.empty_views(model, timeout_s=max(1.0, 2 * self.feature_timeout_s))
                    if empty:
                        entry["online_store"] = "empty"
                        entry["empty_views"] = empty
                        reasons.append(
                            f"the online store holds no rows for {', '.join(empty)} "
                            f"(views of {model.feature_service}): "
                            "run `ranker features materialize` against it"
                        )
                if state.error:
                    entry["last_reload_error"] = state.error
            variants = self.experiments[surface].variants
            if len(variants) > 1:
                entry["variants"] = {}
                for v in variants:
                    vm = self.get(surface, v.name)
                    entry["variants"][v.name] = {
                        "model": v.model,
                        "weight": v.weight,
                        "version": vm.version if vm else None,
                    }
                    if vm is None:
                        reasons.append(f"variant {v.name} ({v.model}) has no model loaded")
            entry["reasons"] = reasons
            ready = ready and not reasons
            detail[surface] = entry
        return ready, detail

    # ------------------------------------------------------------------------------------- loading

    def refresh(self, *, force: bool = False) -> dict[str, dict[str, Any]]:
        """Load any newly promoted production version; returns per surface what happened.

        ``status`` is ``loaded`` (swapped in), ``unchanged``, ``failed`` (the current model keeps
        serving; ``error`` says why) or ``no_model``. A version that failed is not retried by the
        poller until the pointer moves; ``force`` (the admin route) retries it.
        """
        with self._refresh_lock:
            self._close_retired(time.monotonic())
            out = {}
            for surface in self.surfaces:
                variants = self.experiments[surface].variants
                results = {v.name: self._refresh_surface(surface, v.name, v.model, force=force) for v in variants}
                out[surface] = dict(results[variants[0].name])
                if len(variants) > 1:
                    out[surface]["variants"] = results
                resolved = [self._variant_state[(surface, v.name)].resolved_at for v in variants]
                if self.metrics is not None and all(t is not None for t in resolved):
                    self.metrics.registry_checked(surface, min(t for t in resolved if t is not None))
            return out

    def _refresh_surface(self, surface: str, variant: str, ref: str, *, force: bool) -> dict[str, Any]:
        key = (surface, variant)
        state = self._variant_state[key]
        state.checked_at = time.time()
        current = self._variant_models.get(key)
        out: dict[str, Any] = {"model": state.name, "previous": current.version if current else None}
        try:
            if ref in ("production", "staging"):
                version = self.registry.resolve(state.name, ref)
            else:
                version = ref
                self.registry.version_info(state.name, version)  # exists and is complete, or RankerError
            state.resolved_at = time.time()
        except RankerError as exc:
            # No pointer for the stage (or the registry is unreachable): keep whatever serves now.
            state.error = str(exc)
            status = "failed" if current is not None else "no_model"
            log.warning("%s/%s: cannot resolve %s %s: %s", surface, variant, state.name, ref, exc)
            return {**out, "status": status, "version": current.version if current else None, "error": str(exc)}
        if current is not None and current.version == version:
            state.error = None
            return {**out, "status": "unchanged", "version": version}
        if not force and state.failed_version == version:
            return {**out, "status": "failed", "version": current.version if current else None, "error": state.error}
        shared = next((m for m in self._variant_models.values() if m.surface == surface and m.version == version), None)
        try:
            model = shared if shared is not None else self._build(surface, state.name, version)
        except Exception as exc:  # noqa: BLE001 - any failure to build must leave the current model serving
            message = str(exc) if isinstance(exc, RankerError) else f"{type(exc).__name__}: {exc}"
            state.error = f"{state.name} {version} not loaded: {message}"
            state.failed_version = version
            log.error("%s: %s", surface, state.error)
            if self.metrics is not None:
                self.metrics.model_loads.labels(surface, "failed").inc()
            return {**out, "status": "failed", "version": current.version if current else None, "error": state.error}
        # The swap: one reference replaced; readers see the old or the new dict, never a mix.
        self._variant_models = {**self._variant_models, key: model}
        if variant == self.experiments[surface].variants[0].name:
            self._models = {**self._models, surface: model}
        state.error = None
        state.failed_version = None
        still_used = current is not None and any(m is current for m in self._variant_models.values())
        if current is not None and not still_used:
            self._retired.append((time.monotonic() + self.retire_grace_s, current.features))
        if self.metrics is not None:
            if shared is None:
                self.metrics.model_loads.labels(surface, "loaded").inc()
            old = current.version if current is not None and not still_used else None
            self.metrics.model_swapped(surface, state.name, old, version)
            self.metrics.variant_swapped(
                surface, variant, current.version if current else None, version, created_at=model.card.get("created_at")
            )
        log.info(
            "%s/%s: serving %s %s (was %s)", surface, variant, state.name, version, current.version if current else None
        )
        return {**out, "status": "loaded", "version": version}

    def _build(self, surface: str, name: str, version: str) -> ServingModel:
        loaded = self.registry.fetch(name, version=version)  # verifies card and model sha256
        card = loaded.card
        if card.get("surface") not in (None, surface):
            raise ModelLoadError(f"the card says surface {card.get('surface')!r}, not {surface!r}")
        booster = loaded.booster()  # re-verifies the bytes it parses
        booster_features = list(booster.feature_name())
        if booster_features != list(card["features"]):
            raise ModelLoadError(
                f"model.txt has features {booster_features[:3]}... ({len(booster_features)}), the card "
                f"{list(card['features'])[:3]}... ({len(card['features'])})"
            )
        features = self.features_factory(
            self.settings,
            service=card["feature_service"],
            timeout_s=self.feature_timeout_s,
            item_cache_ttl_s=self.item_cache_ttl_s,
        )
        try:
            service_features = self._service_features(features, card)
            if list(service_features) != list(card["features"]):
                missing = [f for f in card["features"] if f not in service_features]
                extra = [f for f in service_features if f not in card["features"]]
                raise ModelLoadError(
                    f"the card's features differ from feature service {card['feature_service']!r} "
                    f"(missing from the service: {missing or 'none'}; not in the card: {extra or 'none'}; "
                    "same sets means a different order); serve it with the service it was trained on"
                )
        except BaseException:
            _close_quietly(features)
            raise
        compiled = self._compile(booster, surface, version)
        self._warm_up(features, booster, surface)
        return ServingModel(
            surface=surface,
            name=name,
            version=version,
            card=card,
            booster=booster,
            features=features,
            feature_names=tuple(card["features"]),
            loaded_at=time.time(),
            compiled=compiled,
        )

    def _compile(self, booster: Any, surface: str, version: str) -> Any:
        """The model's trees compiled (:mod:`ranker.serving.trees`) and checked bit-identical to
        ``Booster.predict`` on every threshold's neighbourhood; None (serve with LightGBM) when
        compiling is off, the model has something the compiler does not reproduce, or anything
        fails: a compiled model that is not exact is never used."""
        if not self.compile_trees:
            return None
        from ranker.serving.trees import UnsupportedModel, compile_verified

        try:
            compiled = compile_verified(booster)
        except UnsupportedModel as exc:
            log.info("%s %s: serving with LightGBM's predict (%s)", surface, version, exc)
            return None
        except Exception:  # noqa: BLE001 - the plain LightGBM path always works
            log.warning(
                "%s %s: compiling the trees failed; serving with LightGBM's predict", surface, version, exc_info=True
            )
            return None
        log.info("%s %s: compiled trees verified bit-identical to LightGBM", surface, version)
        return compiled

    def _warm_up(self, features: Any, booster: Any, surface: str) -> None:
        """One throw-away fetch (on the pool) and predict, so the first real request does not pay for
        opening the store connection and first-call costs (~40 ms measured). A store that is down now
        is not an error here: requests degrade and /readyz reports it."""
        try:
            rows = self.pool.submit(
                features.fetch, user_id="__warmup__", item_ids=["__warmup__"], query=None, request_ts=int(time.time())
            ).result(timeout=max(5.0, 10 * self.feature_timeout_s))
            booster.predict(rows.matrix, num_threads=1)
        except Exception as exc:  # noqa: BLE001 - see docstring
            log.warning("%s: warm-up fetch failed (%r); serving anyway", surface, exc)

    def _service_features(self, features: Any, card: dict) -> list[str]:
        names = getattr(features, "feature_names", None)
        if names is not None:
            return list(names)
        from ranker.features.store import feature_store, service_spec

        return list(service_spec(feature_store(self.settings), card["feature_service"]).features)

    # ------------------------------------------------------------------------------------- polling

    def start_polling(self, interval_s: float) -> None:
        """Poll the registry every ``interval_s`` seconds in a daemon thread (no-op when <= 0)."""
        if interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, args=(float(interval_s),), name="ranker-model-poller", daemon=True
        )
        self._thread.start()

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the poller must survive anything and try again
                log.exception("model poll failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop polling, close every feature path (current and retired) and the store pool."""
        self.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._refresh_lock:
            for _, features in self._retired:
                self._release(features)
            self._retired.clear()
            models, self._variant_models, self._models = self._variant_models, {}, {}
            for model in {id(m): m for m in models.values()}.values():
                self._release(model.features)

    def _close_retired(self, now: float) -> None:
        keep = []
        for deadline, features in self._retired:
            if deadline <= now:
                self._release(features)
            else:
                keep.append((deadline, features))
        self._retired = keep

    def _release(self, features: Any) -> None:
        if self.metrics is not None:
            self.metrics.forget_features(features)
        _close_quietly(features)


def _close_quietly(features: Any) -> None:
    try:
        features.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real outcome
        log.debug("closing a feature path failed", exc_info=True)
