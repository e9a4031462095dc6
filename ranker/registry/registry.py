"""The model registry: publish immutable model versions, move stage pointers, load verified models.

Layout (identical in a local folder and under ``s3://bucket/prefix``)::

    {name}/versions/{version}/model.txt     LightGBM text model (never pickle)
    {name}/versions/{version}/card.json     the model card, stored byte for byte as the trainer wrote it
    {name}/versions/{version}/_COMPLETE     written last; a version without it does not exist
    {name}/stages/{stage}.json              pointer: version, updated_at, history (for rollback)
    {name}/audit/{utc-timestamp}-{uuid}.json  one object per event, never rewritten

``_COMPLETE`` is a small JSON document (sha256 of model.txt and card.json, created_at, feature
service), so listing versions reads markers only and a reader can detect a card swapped after publish.

Pointer updates are compare-and-swap loops over the store's conditional put (fcntl-locked
compare + os.replace locally, If-Match/If-None-Match on S3): concurrent promotions serialise, none is
lost, and every successful swap writes one audit event whose ``from`` is the version it replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ranker.errors import RankerError
from ranker.registry.gate import GateResult
from ranker.registry.store import ObjectStore, PreconditionFailed, store_from_uri

STAGES = ("staging", "production")
MODEL_FILE = "model.txt"
CARD_FILE = "card.json"
COMPLETE_FILE = "_COMPLETE"
REQUIRED_CARD_FIELDS: dict[str, type] = {
    "name": str,
    "version": str,
    "created_at": str,
    "feature_service": str,
    "features": list,
    "model_sha256": str,
    "metrics": dict,
}
# Names and versions become path components and S3 keys: keep them to a safe, portable alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HISTORY_LIMIT = 100
_CAS_ATTEMPTS = 50


class GateFailed(RankerError):
    """Promotion refused by the gate; ``result`` holds every check with its figures."""

    def __init__(self, message: str, *, result: GateResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class VersionInfo:
    """A published (complete) version, as recorded in its ``_COMPLETE`` marker."""

    name: str
    version: str
    created_at: str
    feature_service: str
    model_sha256: str
    card_sha256: str
    published_at: str
    published_by: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StagePointer:
    """Which version a stage serves, and the versions it served before (most recent last)."""

    name: str
    stage: str
    version: str
    updated_at: str
    updated_by: str
    event_id: str
    history: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "version": self.version,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "event_id": self.event_id,
            "history": list(self.history),
        }

    @property
    def previous_version(self) -> str | None:
        return self.history[-1]["version"] if self.history else None


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: str
    created: bool  # False: the identical version was already published (idempotent no-op)
    model_sha256: str
    location: str


@dataclass(frozen=True)
class PointerChange:
    """Outcome of promote/rollback. ``changed`` is False when the stage already served ``to_version``."""

    name: str
    stage: str
    action: str
    from_version: str | None
    to_version: str
    changed: bool
    event_id: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A verified model version in a local folder (the registry folder itself, or the S3 cache)."""

    name: str
    version: str
    path: Path
    card: dict[str, Any] = field(repr=False)
    model_sha256: str = ""

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    @property
    def features(self) -> list[str]:
        return list(self.card["features"])

    @property
    def feature_service(self) -> str:
        return str(self.card["feature_service"])

    def booster(self) -> Any:
        """A ``lightgbm.Booster`` built from bytes verified *now*, so a file swapped after fetch is caught."""
        import lightgbm

        data = self.model_path.read_bytes()
        actual = _sha256(data)
        if actual != self.model_sha256:
            raise RankerError(_corrupt_message(self.name, self.version, self.model_sha256, actual))
        return lightgbm.Booster(model_str=data.decode("utf-8"))


class Registry:
    """One registry API over any :class:`~ranker.registry.store.ObjectStore`."""

    def __init__(self, *, store: ObjectStore, cache_dir: Path, actor: str | None = None) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir)
        self._actor = actor

    @classmethod
    def from_settings(cls, settings: Any, *, actor: str | None = None) -> "Registry":
        """The registry named by ``settings.registry_uri`` (empty → ``artifacts/registry``)."""
        store = store_from_uri(uri=settings.registry_uri, default_root=settings.artifacts_dir / "registry")
        return cls(store=store, cache_dir=settings.artifacts_dir / "registry-cache", actor=actor)

    @property
    def location(self) -> str:
        return self.store.describe()

    @property
    def actor(self) -> str:
        return self._actor or os.environ.get("USER") or "unknown"

    # ---------------------------------------------------------------------------------------- publish

    def publish(self, model_dir: Path | str) -> PublishResult:
        """Upload ``model_dir`` (model.txt + card.json) as ``card.name``/``card.version``.

        Re-publishing identical content is a no-op; different content under an existing version is
        refused. The marker is written last with create-only semantics, so a failed or concurrent
        upload never exposes a half-written version.
        """
        folder = Path(model_dir)
        model_bytes, card_bytes, card = _read_model_dir(folder)
        name, version = card["name"], card["version"]
        model_sha = _sha256(model_bytes)
        prefix = _version_prefix(name, version)

        existing = self.store.get(f"{prefix}/{COMPLETE_FILE}")
        if existing is not None:
            return self._same_or_conflict(name, version, existing.data, model_sha, card)

        marker = {
            "name": name,
            "version": version,
            "created_at": card["created_at"],
            "feature_service": card["feature_service"],
            "model_sha256": model_sha,
            "card_sha256": _sha256(card_bytes),
            "model_bytes": len(model_bytes),
            "published_at": _now_iso(),
            "published_by": self.actor,
        }
        written: list[str] = []
        try:
            for filename, data in ((MODEL_FILE, model_bytes), (CARD_FILE, card_bytes)):
                self.store.put(f"{prefix}/{filename}", data)
                written.append(f"{prefix}/{filename}")
            self.store.put(f"{prefix}/{COMPLETE_FILE}", _dumps(marker), if_absent=True)
        except PreconditionFailed:
            # Someone completed the same version while we uploaded: identical content is fine.
            current = self.store.get(f"{prefix}/{COMPLETE_FILE}")
            if current is None:
                raise RankerError(f"publishing {name} {version} raced with another writer; retry") from None
            return self._same_or_conflict(name, version, current.data, model_sha, card)
        except BaseException:
            self._cleanup_partial(prefix, written)
            raise
        self._audit(
            name=name,
            action="publish",
            stage=None,
            from_version=None,
            to_version=version,
            reason=None,
            gate=None,
            extra={"model_sha256": model_sha},
        )
        return PublishResult(name=name, version=version, created=True, model_sha256=model_sha, location=self.location)

    def _same_or_conflict(
        self, name: str, version: str, marker_bytes: bytes, model_sha: str, card: dict
    ) -> PublishResult:
        marker = _loads(marker_bytes, what=f"{name} {version} {COMPLETE_FILE}")
        if marker.get("model_sha256") != model_sha:
            raise RankerError(
                f"{name} {version} is already published with a different model.txt "
                f"(registry sha256 {marker.get('model_sha256')}, yours {model_sha}); versions are immutable, "
                "publish under a new version"
            )
        stored = self.store.get(f"{_version_prefix(name, version)}/{CARD_FILE}")
        stored_card = _loads(stored.data, what=f"{name} {version} {CARD_FILE}") if stored else None
        if stored_card != card:
            differing = sorted(
                k for k in set(card) | set(stored_card or {}) if (stored_card or {}).get(k) != card.get(k)
            )
            raise RankerError(
                f"{name} {version} is already published with a different card.json (fields differ: "
                f"{', '.join(differing)}); versions are immutable, publish under a new version"
            )
        return PublishResult(name=name, version=version, created=False, model_sha256=model_sha, location=self.location)

    def _cleanup_partial(self, prefix: str, written: list[str]) -> None:
        # Invisible anyway without _COMPLETE; removing the pieces keeps the store tidy. Never remove
        # files a concurrent publisher has since completed.
        try:
            if self.store.get(f"{prefix}/{COMPLETE_FILE}") is not None:
                return
            for key in written:
                self.store.delete(key)
        except Exception:  # noqa: BLE001 - best effort; the original error is what the user must see
            pass

    # ---------------------------------------------------------------------------------------- read

    def list_models(self) -> list[str]:
        """Model names with at least one complete version."""
        return [name for name in self.store.list_children("") if _NAME_RE.match(name) and self.list_versions(name)]

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Complete versions of ``name``, oldest first (by created_at, then version)."""
        _check_name(name, what="model name")
        infos = []
        for key in self.store.list_keys(f"{name}/versions"):
            parts = key.split("/")
            if len(parts) == 4 and parts[3] == COMPLETE_FILE:
                stored = self.store.get(key)
                if stored is not None:
                    infos.append(_version_info(_loads(stored.data, what=key)))
        return sorted(infos, key=lambda v: (v.created_at, v.version))

    def version_info(self, name: str, version: str) -> VersionInfo:
        return _version_info(self._marker(name, version))

    def pointer(self, name: str, stage: str) -> StagePointer | None:
        """The stage pointer, or None when the stage has never been set."""
        _check_name(name, what="model name")
        stored = self.store.get(_stage_key(name, _check_stage(stage)))
        return None if stored is None else _pointer_from(stored.data, key=_stage_key(name, stage))

    def stages(self, name: str) -> dict[str, StagePointer]:
        return {stage: p for stage in STAGES if (p := self.pointer(name, stage)) is not None}

    def resolve(self, name: str, stage: str = "production") -> str:
        """The version ``stage`` currently serves; RankerError when the stage is unset."""
        current = self.pointer(name, stage)
        if current is None:
            self.require_model(name)
            raise RankerError(f"{name} has no {stage} version yet; promote one with `ranker registry promote`")
        return current.version

    def card(self, name: str, *, version: str | None = None, stage: str | None = None) -> dict[str, Any]:
        """The card of a version (checked against the marker), without downloading the model."""
        version = self._pick_version(name, version=version, stage=stage)
        marker = self._marker(name, version)
        stored = self.store.get(f"{_version_prefix(name, version)}/{CARD_FILE}")
        if stored is None:
            raise RankerError(f"{name} {version}: card.json is missing from {self.location}")
        return _verified_card(name, version, marker, stored.data)

    def fetch(self, name: str, *, version: str | None = None, stage: str | None = None) -> LoadedModel:
        """A verified local copy of a version (pass exactly one of ``version`` or ``stage``).

        Local registries are read in place; S3 versions are downloaded once into the cache and
        re-verified on every fetch. A model whose sha256 differs from its card is refused.
        """
        version = self._pick_version(name, version=version, stage=stage)
        marker = self._marker(name, version)
        prefix = _version_prefix(name, version)
        in_place = self.store.local_path(prefix)
        if in_place is not None:
            return self._verify_folder(name, version, marker, in_place)

        target = self.cache_dir / _cache_slug(self.location) / name / version
        if target.is_dir():
            try:
                return self._verify_folder(name, version, marker, target)
            except RankerError:
                pass  # a damaged cache is not the registry's fault: download again
        model = self.store.get(f"{prefix}/{MODEL_FILE}")
        card = self.store.get(f"{prefix}/{CARD_FILE}")
        if model is None or card is None:
            raise RankerError(
                f"{name} {version} is marked complete but model.txt/card.json is missing in {self.location}"
            )
        card_dict = _verified_card(name, version, marker, card.data)
        _verify_model(name, version, card_dict, marker, model.data)
        _install_dir(target, {MODEL_FILE: model.data, CARD_FILE: card.data})
        # Verify what landed on disk, not only what came over the wire.
        return self._verify_folder(name, version, marker, target)

    def _verify_folder(self, name: str, version: str, marker: dict, folder: Path) -> LoadedModel:
        try:
            card_bytes = (folder / CARD_FILE).read_bytes()
            model_bytes = (folder / MODEL_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise RankerError(f"{name} {version}: {exc.filename} is missing") from None
        card = _verified_card(name, version, marker, card_bytes)
        sha = _verify_model(name, version, card, marker, model_bytes)
        return LoadedModel(name=name, version=version, path=folder, card=card, model_sha256=sha)

    def audit_log(self, name: str) -> list[dict[str, Any]]:
        """Every audit event of ``name``, oldest first."""
        _check_name(name, what="model name")
        events = []
        for key in self.store.list_keys(f"{name}/audit"):
            stored = self.store.get(key)
            if stored is not None:
                events.append(_loads(stored.data, what=key))
        return events

    # ---------------------------------------------------------------------------------------- stages

    def promote(
        self,
        name: str,
        version: str,
        *,
        stage: str,
        gate: GateResult | None,
        force: bool = False,
        reason: str | None = None,
    ) -> PointerChange:
        """Point ``stage`` at ``version`` if ``gate`` passed (or ``force`` with a ``reason``).

        Everything is validated before anything is written. A failed gate raises :class:`GateFailed`.
        """
        stage = _check_stage(stage)
        self._marker(name, version)  # unknown model / unknown or incomplete version
        reason = (reason or "").strip() or None
        if force and not reason:
            raise RankerError("--force needs --reason: forced promotions are audited with a justification")
        if gate is None and not force:
            raise RankerError("promotion needs a gate result (evaluate_gate) or force with a reason")
        if gate is not None and not gate.passed and not force:
            raise GateFailed(f"{name} {version} not promoted to {stage}: {gate.summary()}", result=gate)
        action = "force" if force else "promote"

        def compute(current: StagePointer | None) -> tuple[str | None, str, list] | None:
            if current is not None and current.version == version:
                return None
            history = list(current.history) if current else []
            if current is not None:
                history.append(
                    {"version": current.version, "updated_at": current.updated_at, "event_id": current.event_id}
                )
            return (current.version if current else None), version, history[-_HISTORY_LIMIT:]

        return self._swap(name=name, stage=stage, action=action, compute=compute, reason=reason, gate=gate)

    def rollback(self, name: str, *, stage: str = "production", reason: str | None = None) -> PointerChange:
        """Point ``stage`` back at the version it served before the last promotion."""
        stage = _check_stage(stage)
        self.require_model(name)

        def compute(current: StagePointer | None) -> tuple[str | None, str, list] | None:
            if current is None:
                raise RankerError(f"{name} has no {stage} pointer; nothing to roll back")
            if not current.history:
                raise RankerError(f"{name} {stage} has no previous version to roll back to (serving {current.version})")
            previous = current.history[-1]["version"]
            self._marker(name, previous)
            return current.version, previous, list(current.history[:-1])

        return self._swap(
            name=name, stage=stage, action="rollback", compute=compute, reason=(reason or "").strip() or None, gate=None
        )

    def _swap(
        self,
        *,
        name: str,
        stage: str,
        action: str,
        compute: Callable[[StagePointer | None], tuple[str | None, str, list] | None],
        reason: str | None,
        gate: GateResult | None,
    ) -> PointerChange:
        """Compare-and-swap loop on the pointer. ``compute`` sees the pointer as it is *now* and
        returns (from, to, history) or None for a no-op; it may raise to abort without writing."""
        key = _stage_key(name, stage)
        rng = random.Random()  # jitter only; not reproducibility-relevant
        for attempt in range(_CAS_ATTEMPTS):
            stored = self.store.get(key)
            current = None if stored is None else _pointer_from(stored.data, key=key)
            decision = compute(current)
            if decision is None:
                assert current is not None  # compute declines only when the stage already serves the version
                return PointerChange(
                    name=name,
                    stage=stage,
                    action=action,
                    from_version=current.version,
                    to_version=current.version,
                    changed=False,
                )
            from_version, to_version, history = decision
            event_id = uuid.uuid4().hex
            pointer = StagePointer(
                name=name,
                stage=stage,
                version=to_version,
                updated_at=_now_iso(),
                updated_by=self.actor,
                event_id=event_id,
                history=tuple(history),
            )
            try:
                if stored is None:
                    self.store.put(key, _dumps(pointer.to_dict()), if_absent=True)
                else:
                    self.store.put(key, _dumps(pointer.to_dict()), if_etag=stored.etag)
            except PreconditionFailed:
                # Lost the race: re-read and recompute. Short jittered back-off spreads the retries.
                time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 7))) * rng.random())
                continue
            self._audit(
                name=name,
                action=action,
                stage=stage,
                from_version=from_version,
                to_version=to_version,
                reason=reason,
                gate=gate,
                event_id=event_id,
            )
            return PointerChange(
                name=name,
                stage=stage,
                action=action,
                from_version=from_version,
                to_version=to_version,
                changed=True,
                event_id=event_id,
            )
        raise RankerError(f"could not update {name} {stage}: {_CAS_ATTEMPTS} concurrent writers won first; retry")

    # ---------------------------------------------------------------------------------------- helpers

    def _audit(
        self,
        *,
        name: str,
        action: str,
        stage: str | None,
        from_version: str | None,
        to_version: str | None,
        reason: str | None,
        gate: GateResult | None,
        event_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        now = datetime.now(timezone.utc)
        event_id = event_id or uuid.uuid4().hex
        event = {
            "event_id": event_id,
            "action": action,
            "name": name,
            "stage": stage,
            "when": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "who": self.actor,
            "from": from_version,
            "to": to_version,
            "reason": reason,
            "gate": gate.to_dict() if gate is not None else None,
            **(extra or {}),
        }
        key = f"{name}/audit/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{event_id}.json"
        self.store.put(key, _dumps(event), if_absent=True)

    def require_model(self, name: str) -> list[VersionInfo]:
        """The complete versions of ``name`` (oldest first); RankerError naming known models if none."""
        versions = self.list_versions(name)
        if not versions:
            known = ", ".join(self.list_models()) or "none"
            raise RankerError(f"unknown model {name!r} in registry {self.location} (known models: {known})")
        return versions

    def _marker(self, name: str, version: str) -> dict[str, Any]:
        _check_name(name, what="model name")
        _check_name(version, what="version")
        stored = self.store.get(f"{_version_prefix(name, version)}/{COMPLETE_FILE}")
        if stored is None:
            versions = self.require_model(name)
            recent = ", ".join(v.version for v in versions[-5:])
            raise RankerError(
                f"{name} has no version {version!r} in {self.location} (missing or upload incomplete); "
                f"latest versions: {recent}"
            )
        return _loads(stored.data, what=f"{name} {version} {COMPLETE_FILE}")

    def _pick_version(self, name: str, *, version: str | None, stage: str | None) -> str:
        if (version is None) == (stage is None):
            raise RankerError("give exactly one of version or stage")
        if version is not None:
            return version
        assert stage is not None
        return self.resolve(name, stage)


# -------------------------------------------------------------------------------------------- pure helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _loads(data: bytes, *, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RankerError(f"{what} is not valid JSON: {exc}") from None


def _check_name(value: Any, *, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise RankerError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 128)")
    return value


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise RankerError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    return stage


def _version_prefix(name: str, version: str) -> str:
    return f"{_check_name(name, what='model name')}/versions/{_check_name(version, what='version')}"


def _stage_key(name: str, stage: str) -> str:
    return f"{_check_name(name, what='model name')}/stages/{stage}.json"


def _cache_slug(location: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", location).strip("_")


def _corrupt_message(name: str, version: str, expected: str, actual: str) -> str:
    return (
        f"model.txt of {name} {version} is corrupt or tampered: sha256 expected {expected} (card.json), "
        f"got {actual}; refusing to load it (re-publish the version from the training output)"
    )


def _read_model_dir(folder: Path) -> tuple[bytes, bytes, dict[str, Any]]:
    """Read and validate a training output folder before anything is uploaded."""
    if not folder.is_dir():
        raise RankerError(f"{folder} is not a folder; expected a model version folder with model.txt and card.json")
    try:
        model_bytes = (folder / MODEL_FILE).read_bytes()
        card_bytes = (folder / CARD_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise RankerError(f"{folder}: {Path(exc.filename).name} is missing") from None
    card = _loads(card_bytes, what=str(folder / CARD_FILE))
    if not isinstance(card, dict):
        raise RankerError(f"{folder / CARD_FILE} must hold a JSON object")
    problems = [
        f"{key} ({kind.__name__})" for key, kind in REQUIRED_CARD_FIELDS.items() if not isinstance(card.get(key), kind)
    ]
    if problems:
        raise RankerError(f"{folder / CARD_FILE} lacks or mistypes: {', '.join(problems)}")
    _check_name(card["name"], what="model name")
    _check_name(card["version"], what="version")
    if not all(isinstance(f, str) for f in card["features"]) or not card["features"]:
        raise RankerError(f"{folder / CARD_FILE}: features must be a non-empty list of feature names")
    # LightGBM text models start with "tree"; anything else (a pickle, a binary dump) is refused.
    if not model_bytes.startswith(b"tree"):
        raise RankerError(f"{folder / MODEL_FILE} is not a LightGBM text model (save with Booster.save_model)")
    actual = _sha256(model_bytes)
    if card["model_sha256"].lower() != actual:
        raise RankerError(
            f"{folder}: card.json model_sha256 {card['model_sha256']} does not match model.txt ({actual}); "
            "the card describes a different model"
        )
    return model_bytes, card_bytes, card


def _verified_card(name: str, version: str, marker: dict, card_bytes: bytes) -> dict[str, Any]:
    actual = _sha256(card_bytes)
    if marker.get("card_sha256") != actual:
        raise RankerError(
            f"card.json of {name} {version} was modified after publish: sha256 expected {marker.get('card_sha256')}, "
            f"got {actual}"
        )
    return _loads(card_bytes, what=f"{name} {version} {CARD_FILE}")


def _verify_model(name: str, version: str, card: dict, marker: dict, model_bytes: bytes) -> str:
    expected = str(card.get("model_sha256", "")).lower()
    actual = _sha256(model_bytes)
    if actual != expected or actual != marker.get("model_sha256"):
        raise RankerError(_corrupt_message(name, version, expected, actual))
    return actual


def _version_info(marker: dict[str, Any]) -> VersionInfo:
    return VersionInfo(
        name=marker["name"],
        version=marker["version"],
        created_at=marker.get("created_at", ""),
        feature_service=marker.get("feature_service", ""),
        model_sha256=marker.get("model_sha256", ""),
        card_sha256=marker.get("card_sha256", ""),
        published_at=marker.get("published_at", ""),
        published_by=marker.get("published_by", ""),
    )


def _pointer_from(data: bytes, *, key: str) -> StagePointer:
    raw = _loads(data, what=key)
    try:
        return StagePointer(
            name=raw["name"],
            stage=raw["stage"],
            version=raw["version"],
            updated_at=raw["updated_at"],
            updated_by=raw.get("updated_by", ""),
            event_id=raw.get("event_id", ""),
            history=tuple(raw.get("history", [])),
        )
    except (KeyError, TypeError) as exc:
        raise RankerError(f"stage pointer {key} is malformed ({exc}); restore it from the audit log") from None


def _install_dir(target: Path, files: dict[str, bytes]) -> None:
    """Materialise ``files`` as folder ``target`` atomically: build beside it, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        for filename, data in files.items():
            with open(tmp / filename, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if target.exists():
            # Only reached when the cached copy failed verification; a concurrent reader of the bad
            # copy would have failed verification too.
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            pass  # another fetcher installed the same version first; the caller verifies it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
