"""Exploration for new listings: reserved slots filled by a seeded uniform draw among young
candidates, with the exact probability of every served (position, item) so that inverse-propensity
evaluation of the served log stays valid.

A listing that went live an hour ago has no clicks, so a model that learned from counts ranks it low
and it never earns any. The policy reserves a few positions (``RANKER_EXPLORE_SLOTS``, e.g. 4 and 8)
for listings younger than ``RANKER_EXPLORE_YOUNG_HOURS``; off by default (no slots).

Per request, with ``D`` the model's order (highest score first, ties in the caller's order, exactly
the order served without exploration) and the ``m`` reserved slots ``s_1 < ... < s_m`` that fit:

1. **Head** (deterministic): the first ``s_m - m`` items of ``D`` fill the positions above ``s_m``
   that are not reserved, in ``D``'s order. A young listing the model already ranks there stays.
2. **Pool**: the young candidates below the head, in ``D``'s order; with ``RANKER_EXPLORE_POOL = k``
   only the best ``k`` of them by model score (0: all). When the pool is smaller than ``m``, the
   last reserved slot is given up (it becomes an ordinary position) and 1-2 are redone, down to no
   exploration at all, when the answer is ``D`` itself.
3. **Draw**: ``m`` pool items uniformly without replacement (``numpy`` PCG64 seeded by
   ``RANKER_EXPLORE_SEED`` and the request id: the same request id gives the same list), placed in
   the reserved slots in draw order. Each reserved slot holds each pool item with probability
   exactly ``1 / len(pool)`` (exchangeability of a uniform sample).
4. **Tail**: everything else after ``s_m`` in ``D``'s order (undrawn pool items keep their place).

**Propensities** (``P(this item at this position | the request)``, the logging policy's): 1 for the
head; ``1 / len(pool)`` for an explored slot; for a tail item, its position is fixed by how many of the
``q`` pool items ranked above it in ``D`` were drawn (``d``), so its propensity is the hypergeometric
probability of that ``d`` (times "not drawn itself" for an undrawn pool item):
``C(q, d) C(n - q, m - d) / C(n, m)`` or ``C(q, d) C(n - 1 - q, m - d) / C(n, m)`` with ``n`` the pool
size. Tail items above every pool item or below all of them get 1. Without exploration every
propensity is 1 (a deterministic policy).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ranker.config import ConfigError

__all__ = ["ExplorationPolicy", "ExploredRanking", "parse_slots", "slot_probabilities"]


def parse_slots(text: str) -> tuple[int, ...]:
    """``"4,8"`` -> ``(4, 8)``; empty -> ``()`` (off). ConfigError for anything but distinct positions >= 1."""
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        slots = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"RANKER_EXPLORE_SLOTS={text!r} must be comma-separated positions >= 1 (e.g. 4,8), or empty for off"
        ) from None
    if any(s < 1 for s in slots) or len(set(slots)) != len(slots):
        raise ConfigError(
            f"RANKER_EXPLORE_SLOTS={text!r} must be distinct comma-separated positions >= 1 "
            "(e.g. 4,8), or empty for off"
        )
    return tuple(sorted(slots))


def slots_rule(text: str) -> bool:
    """The declared rule of RANKER_EXPLORE_SLOTS (for api/settings.py)."""
    try:
        parse_slots(text)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True, eq=False)
class ExploredRanking:
    """The served order with its logging propensities, position by position."""

    order: np.ndarray  # indices into the candidates, first position first (every candidate once)
    propensity: np.ndarray  # float64 per position: P(order[k] at position k + 1 | request)
    explored: np.ndarray  # bool per position: a reserved slot filled by the draw
    pool: np.ndarray  # candidate indices of the pool the slots were drawn from (empty: no exploration)


@dataclass(frozen=True)
class ExplorationPolicy:
    """Reserved slots for young listings (see the module docstring).

    Args:
        slots: 1-based positions reserved for exploration, ascending; empty = off.
        young_hours: a candidate is young when its ``listing_age_hours`` is below this.
        pool: draw among the best ``pool`` young candidates by model score (0: all of them); at
            least the number of slots, so every reserved slot can be explored.
        seed: with the request id, seeds the draw.
    """

    slots: tuple[int, ...] = ()
    young_hours: float = 48.0
    pool: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        slots = tuple(int(s) for s in self.slots)
        if any(s < 1 for s in slots) or len(set(slots)) != len(slots):
            raise ConfigError(f"RANKER_EXPLORE_SLOTS must be distinct positions >= 1, got {self.slots!r}")
        object.__setattr__(self, "slots", tuple(sorted(slots)))
        if not (math.isfinite(self.young_hours) and self.young_hours > 0):
            raise ConfigError(f"RANKER_EXPLORE_YOUNG_HOURS must be > 0, got {self.young_hours!r}")
        if self.pool < 0:
            raise ConfigError(f"RANKER_EXPLORE_POOL must be >= 0, got {self.pool!r}")
        if self.slots and 0 < self.pool < len(self.slots):
            raise ConfigError(
                f"RANKER_EXPLORE_POOL={self.pool} is smaller than the {len(self.slots)} slots of "
                f"RANKER_EXPLORE_SLOTS={','.join(map(str, self.slots))}: use 0 (every young candidate) "
                f"or at least {len(self.slots)}"
            )

    @property
    def active(self) -> bool:
        return bool(self.slots)

    def rng(self, request_id: str) -> np.random.Generator:
        """The request's generator: PCG64 seeded by (seed, a stable 64-bit hash of the request id)."""
        digest = int.from_bytes(hashlib.blake2b(str(request_id).encode("utf-8"), digest_size=8).digest(), "little")
        return np.random.Generator(np.random.PCG64([int(self.seed) & 0xFFFFFFFFFFFFFFFF, digest]))

    def plan(self, scores: np.ndarray, age_hours: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, tuple[int, ...]]:
        """(D, head length, pool, explored slots) before the draw: the model's order, how many of its
        first items are the head, the pool (candidate indices in D's order) and the slots it fills
        (both empty when nothing is explored)."""
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        n = len(order)
        slots = [s for s in self.slots if s <= n]
        if not slots:
            return order, n, order[:0], ()
        with np.errstate(invalid="ignore"):
            young = np.asarray(age_hours, dtype=np.float64) < self.young_hours  # NaN (unknown age): not young
        for m in range(len(slots), 0, -1):
            head = slots[m - 1] - m
            rest = order[head:]
            pool = rest[young[rest]]
            if self.pool:
                pool = pool[: self.pool]
            if len(pool) >= m:
                return order, head, pool, tuple(slots[:m])
        return order, n, order[:0], ()

    def rank(self, scores: np.ndarray, age_hours: np.ndarray, *, request_id: str) -> ExploredRanking:
        """The served order of candidates with ``scores`` and ``age_hours`` for ``request_id``."""
        order, head, pool, reserved = self.plan(scores, age_hours)
        n = len(order)
        if not reserved:
            return ExploredRanking(order, np.ones(n), np.zeros(n, dtype=bool), pool)
        m = len(reserved)
        picks = self.rng(request_id).choice(len(pool), size=m, replace=False)
        drawn = pool[picks]
        out = np.empty(n, dtype=order.dtype)
        explored = np.zeros(n, dtype=bool)
        propensity = np.ones(n)
        window = reserved[-1]
        at_slot = np.zeros(window, dtype=bool)
        at_slot[np.asarray(reserved) - 1] = True
        out[:window][~at_slot] = order[:head]
        out[:window][at_slot] = drawn
        explored[:window] = at_slot
        propensity[:window][at_slot] = 1.0 / len(pool)
        rest = order[head:]
        drawn_mask = np.zeros(n, dtype=bool)
        drawn_mask[drawn] = True
        pool_mask = np.zeros(n, dtype=bool)
        pool_mask[pool] = True
        is_drawn = drawn_mask[rest]
        out[window:] = rest[~is_drawn]
        # Tail propensities: q = pool items above in D, d = how many of them were drawn.
        in_pool = pool_mask[rest]
        q_all: np.ndarray = np.cumsum(in_pool) - in_pool  # pool items strictly above, per item of rest
        d_all: np.ndarray = np.cumsum(is_drawn) - is_drawn
        q: np.ndarray = q_all[~is_drawn]
        d: np.ndarray = d_all[~is_drawn]
        own = in_pool[~is_drawn]
        propensity[window:] = _tail_probabilities(q, d, own, n_pool=len(pool), m=m)
        return ExploredRanking(out, propensity, explored, pool)


def _tail_probabilities(q: np.ndarray, d: np.ndarray, own: np.ndarray, *, n_pool: int, m: int) -> np.ndarray:
    """Hypergeometric probability that d of the q pool items above were drawn (and, for a pool item,
    that it was not drawn itself): ``C(q, d) C(n - own - q, m - d) / C(n, m)``, vectorised."""
    q = q.astype(np.float64)
    below = n_pool - own.astype(np.float64) - q
    return _comb(q, d, m) * _comb(below, m - d, m) / math.comb(n_pool, m)


def _comb(x: np.ndarray, k: np.ndarray, k_max: int) -> np.ndarray:
    """C(x, k) for integer-valued x >= 0 and 0 <= k <= k_max (small: the number of slots), as the
    product of (x - j) / (j + 1) over j < k (0 when k > x); exact in float64 at these sizes."""
    out = np.ones(len(x))
    for j in range(k_max):
        out = np.where(j < k, out * (x - j) / (j + 1), out)
    return np.maximum(out, 0.0)


def slot_probabilities(policy: ExplorationPolicy, scores: np.ndarray, age_hours: np.ndarray) -> dict[int, np.ndarray]:
    """Per explored slot of this request, every candidate's probability of being served there
    (a vector over the candidates; each sums to 1). Empty when the request explores nothing."""
    order, _, pool, reserved = policy.plan(scores, age_hours)
    out = {}
    for slot in reserved:
        p = np.zeros(len(order))
        p[pool] = 1.0 / len(pool)
        out[slot] = p
    return out
