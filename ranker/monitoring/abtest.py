"""A/B variants of a surface: which model versions serve it, with what share of the users.

The configuration is data, not code: ``RANKER_VARIANTS`` (JSON) or ``RANKER_VARIANTS_FILE`` (a JSON
file, e.g. mounted from a config map), so a deploy changes an experiment without a release::

    {"search": [{"name": "control",   "model": "production", "weight": 0.5},
                {"name": "treatment", "model": "staging",    "weight": 0.5}]}

``model`` is a registry stage (``production``, ``staging``: re-resolved on every registry poll, so
promoting a version to staging changes the treatment live) or a fixed version id. Surfaces not
listed serve their production model as the single variant ``control``.

Assignment: ``sha256(salt : surface : user_id)`` read as a number in [0, 1) and placed on the
cumulative weights. Deterministic (a user stays in one variant for as long as salt and weights
stay), independent between surfaces, and changing the salt (``RANKER_AB_SALT``) reshuffles everyone.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ranker.errors import RankerError

DEFAULT_VARIANT = "control"
DEFAULT_SALT = "ranker-ab-1"
STAGE_REFS = ("production", "staging")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # a stage name or a version id
    weight: float

    @property
    def is_stage(self) -> bool:
        return self.model in STAGE_REFS


@dataclass(frozen=True)
class Experiment:
    """The variants of one surface and the cumulative weights used by :meth:`assign`."""

    surface: str
    variants: tuple[Variant, ...]
    salt: str = DEFAULT_SALT

    def __post_init__(self) -> None:
        total = sum(v.weight for v in self.variants)
        object.__setattr__(
            self,
            "_bounds",
            tuple(sum(v.weight for v in self.variants[: i + 1]) / total for i in range(len(self.variants))),
        )

    def assign(self, user_id: str) -> Variant:
        """The user's variant (one sha256 of a short string: ~1 µs)."""
        if len(self.variants) == 1:
            return self.variants[0]
        digest = hashlib.sha256(f"{self.salt}:{self.surface}:{user_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        for variant, bound in zip(self.variants, self._bounds, strict=False):  # type: ignore[attr-defined]
            if u < bound:
                return variant
        return self.variants[-1]


def default_experiment(surface: str, salt: str = DEFAULT_SALT) -> Experiment:
    return Experiment(surface, (Variant(DEFAULT_VARIANT, "production", 1.0),), salt)


def parse_variants(
    config: Any, *, surfaces: tuple[str, ...], salt: str = DEFAULT_SALT, source: str = "RANKER_VARIANTS"
) -> dict[str, Experiment]:
    """Validate a variants document (already decoded JSON); every surface gets an experiment."""
    if config is None or config == "" or config == {}:
        config = {}
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise RankerError(f"{source} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(config, Mapping):
        raise RankerError(f"{source} must be a JSON object of surface -> list of variants")
    unknown = [s for s in config if s not in surfaces]
    if unknown:
        raise RankerError(
            f"{source} names surface(s) {', '.join(map(str, unknown))} this scorer does not serve "
            f"({', '.join(surfaces)})"
        )
    out = {}
    for surface in surfaces:
        entries = config.get(surface)
        if entries is None:
            out[surface] = default_experiment(surface, salt)
            continue
        if not isinstance(entries, list) or not entries:
            raise RankerError(
                f"{source}[{surface!r}] must be a non-empty list of "
                '{"name": ..., "model": "production" | "staging" | <version>, "weight": ...}'
            )
        variants = []
        for i, entry in enumerate(entries):
            where = f"{source}[{surface!r}][{i}]"
            if not isinstance(entry, Mapping):
                raise RankerError(f"{where} must be an object with name, model and weight")
            name, model, weight = entry.get("name"), entry.get("model", "production"), entry.get("weight", 1.0)
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise RankerError(f"{where}.name must be 1-40 letters, digits, '_', '.' or '-', got {name!r}")
            if not isinstance(model, str) or not model.strip():
                raise RankerError(f"{where}.model must be a stage (production, staging) or a version id")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise RankerError(f"{where}.weight must be a number > 0, got {weight!r}")
            variants.append(Variant(name, model.strip(), float(weight)))
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise RankerError(f"{source}[{surface!r}] repeats a variant name: {names}")
        out[surface] = Experiment(surface, tuple(variants), salt)
    return out


def load_variants(raw: Any, path: str = "", *, surfaces: tuple[str, ...], salt: str = "") -> dict[str, Experiment]:
    """Experiments from a ``RANKER_VARIANTS`` value (JSON text or an already decoded mapping) or the
    JSON file ``RANKER_VARIANTS_FILE``; ``salt`` is ``RANKER_AB_SALT`` (empty = the default)."""
    salt = (salt or "").strip() or DEFAULT_SALT
    path = (path or "").strip()
    if isinstance(raw, str):
        raw = raw.strip()
    if raw and path:
        raise RankerError("set RANKER_VARIANTS or RANKER_VARIANTS_FILE, not both")
    source = "RANKER_VARIANTS"
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise RankerError(f"RANKER_VARIANTS_FILE={path!r} cannot be read: {exc.strerror}") from None
        source = f"RANKER_VARIANTS_FILE {path}"
    return parse_variants(raw, surfaces=surfaces, salt=salt, source=source)
