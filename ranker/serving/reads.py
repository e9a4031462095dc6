"""What one request reads from the online store, and where each read's values land.

A request is served in at most two rounds of reads (see :mod:`ranker.serving.features`). Each read
is a small typed object: the entity keys and field set the store backend reads
(:mod:`ranker.serving.redis_reader`, :mod:`ranker.serving.sqlite_reader`), and a ``place`` method
that puts the :class:`Block` the backend returned into the request's :class:`Gathered` values:

* :class:`ListingRead`: the listings not cached (their hash: every item-level field, the sold flag
  and whether the listing exists);
* :class:`SoldFlagRead`: the live sold flag (and existence) of the cached listings;
* :class:`MissedItemsRead`: an item-level view keyed by the listing's seller or category, for the
  listings not cached;
* :class:`RequestRead`: a view read for every listing of the request (user, user x category,
  query x category...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from ranker.errors import RankerError
from ranker.features.feast_compat import string_entity_keys

if TYPE_CHECKING:
    from ranker.serving.plan import FieldSet, Group


class OnlineStoreUnavailable(RankerError):
    """The online store is down, timed out, or returned something unreadable."""


class FetchDeadlineExceeded(OnlineStoreUnavailable):
    """The store did not answer before the caller's deadline (``fetch(deadline=...)``)."""


class Block(NamedTuple):
    """One read's values, a row per entity key: the numeric fields decoded (NaN = missing), whether
    each numeric cell exists in the store (a null value exists, a missing field or hash does not),
    and the string fields (None = missing)."""

    values: np.ndarray  # float64 (keys, n_num)
    present: np.ndarray | None  # bool (keys, n_num); Redis: only for the field sets that need it (presence)
    text: np.ndarray  # object (keys, n_str)

    @classmethod
    def empty(cls, fs: FieldSet) -> Block:
        """The block of a read with no keys."""
        return cls(
            np.empty((0, fs.n_num)), np.empty((0, fs.n_num), dtype=bool), np.empty((0, fs.n - fs.n_num), dtype=object)
        )


class EntityKeys(NamedTuple):
    """The entity keys of one read, not serialized yet: per join key (sorted, as Feast serializes
    them), the values of the ``n_keys`` keys (a list), or one value every key shares (a str: the
    request's user or query)."""

    join_keys: tuple
    columns: tuple
    n_keys: int

    def serialized(self, suffix: bytes = b"") -> list:
        """Feast's serialized keys (+ ``suffix``), by the reference implementation."""
        values = [[c] * self.n_keys if isinstance(c, str) else list(c) for c in self.columns]
        return string_entity_keys(list(self.join_keys), values, suffix)


class Pending:
    """A round written to the store whose replies are not read yet (``send`` / ``receive``)."""

    __slots__ = ("reads", "counts", "deadline", "conn", "widths", "table_of", "timeout")

    def __init__(self, reads: list, counts: list, deadline: float | None) -> None:
        self.reads, self.counts, self.deadline = reads, counts, deadline
        self.conn: Any = None
        self.widths: Any = None
        self.table_of: Any = None
        self.timeout: Any = None


class RowSelection:
    """Unique-item rows of the request that a set of reads covers (every row, the cache misses or
    the cache hits). The distinct values of the keys that vary with the listing are computed once
    per selection and shared by the groups keyed by the same keys (category, user x category,
    query x category)."""

    def __init__(self, rows: Sequence[int], *, every: bool) -> None:
        self.rows = rows
        self.every = every  # rows == range(number of unique items)
        self._distinct: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def values_of(self, column: list) -> list:
        """One item-level column at these rows."""
        return column if self.every else [column[i] for i in self.rows]

    def distinct(self, varying: tuple[str, ...], columns: dict) -> tuple[list, np.ndarray]:
        """The distinct values of the ``varying`` keys at these rows (a value, or a tuple of values
        for several keys) and each row's index into them."""
        made = self._distinct.get(varying)
        if made is None:
            if len(varying) == 1:
                keyed = self.values_of(columns[varying[0]])
            else:
                keyed = [tuple(columns[k][i] for k in varying) for i in self.rows]
            distinct = list(dict.fromkeys(keyed))
            position = {v: i for i, v in enumerate(distinct)}
            idx = np.fromiter(map(position.__getitem__, keyed), dtype=np.intp, count=len(keyed))
            made = self._distinct[varying] = (distinct, idx)
        return made


def entity_keys(group: Group, columns: dict, selection: RowSelection) -> tuple[EntityKeys, np.ndarray]:
    """The distinct entity keys of ``group`` for the selected unique-item rows (their join-key
    values, serialized by the backend when it writes the read), and each row's entity."""
    join_keys, varying = group.join_keys, group.varying
    if not varying:  # keyed by the request alone (the user): one entity
        return EntityKeys(join_keys, tuple(columns[k] for k in join_keys), 1), np.zeros(len(selection), np.intp)
    if varying == ("item_id",):  # the rows are unique items already
        distinct = selection.values_of(columns["item_id"])
        values = {"item_id": distinct}
        idx = np.arange(len(selection), dtype=np.intp)
    else:
        distinct, idx = selection.distinct(varying, columns)
        if len(varying) == 1:
            values = {varying[0]: distinct}
        else:
            values = {k: [v[c] for v in distinct] for c, k in enumerate(varying)}
    # the request's own keys (user, query) are one value shared by every entity of the read
    keyed_columns = tuple(values[k] if k in values else columns[k] for k in join_keys)
    return EntityKeys(join_keys, keyed_columns, len(distinct)), idx


@dataclass
class Gathered:
    """What a request's reads brought so far, at unique-item level: per group its numbers
    ``(u, n_num)`` and strings ``(u, n_str)``, whether each listing exists and its sold flag."""

    groups: Sequence[Group]
    u: int
    misses: RowSelection  # the listings read from the store (not cached)
    hits: list  # rows of the cached listings
    num: list = field(init=False)
    strs: list = field(init=False)
    known: np.ndarray = field(init=False)
    sold_flag: np.ndarray = field(init=False)  # float64: listing_fv.is_sold (NaN when unknown)

    def __post_init__(self) -> None:
        self.num = [None] * len(self.groups)
        self.strs = [None] * len(self.groups)
        self.known = np.zeros(self.u, dtype=bool)
        self.sold_flag = np.full(self.u, np.nan)

    def allocate(self, g: int) -> None:
        """Room for every row of group ``g`` (filled part by part: cache hits, then misses)."""
        if self.num[g] is None:
            group = self.groups[g]
            self.num[g] = np.empty((self.u, group.n_num))
            self.strs[g] = np.empty((self.u, len(group.fields) - group.n_num), dtype=object)


@dataclass(frozen=True)
class ListingRead:
    """The hashes of the listings not cached: every item-level field, sold flag and existence."""

    keys: EntityKeys
    fieldset: FieldSet
    group: int
    sold_column: int  # the sold flag's column among the group's numbers

    def place(self, block: Block, got: Gathered) -> None:
        """Put the listings' values at their rows, with whether each exists and its sold flag."""
        values, present, text = block
        assert present is not None  # the listing's field set reports presence
        g, misses = self.group, got.misses
        if misses.every:
            got.known[:] = present[:, self.sold_column]
            got.sold_flag[:] = values[:, self.sold_column]
            got.num[g], got.strs[g] = values, text
            return
        got.allocate(g)
        rows = misses.rows
        got.num[g][rows] = values
        got.strs[g][rows] = text
        got.known[rows] = present[:, self.sold_column]  # a null value exists; a missing hash does not
        got.sold_flag[rows] = values[:, self.sold_column]


@dataclass(frozen=True)
class SoldFlagRead:
    """The sold flag of the cached listings (never cached), which also says whether each exists."""

    keys: EntityKeys
    fieldset: FieldSet

    def place(self, block: Block, got: Gathered) -> None:
        """Put each cached listing's existence and sold flag at its row."""
        assert block.present is not None
        got.known[got.hits] = block.present[:, 0]
        got.sold_flag[got.hits] = block.values[:, 0]


@dataclass(frozen=True)
class MissedItemsRead:
    """An item-level view keyed by the listing's seller or category, for the listings not cached
    (one entity per distinct key; ``rows`` maps each missed listing to its entity)."""

    keys: EntityKeys
    fieldset: FieldSet
    group: int
    rows: np.ndarray

    def place(self, block: Block, got: Gathered) -> None:
        """Put each missed listing's entity values at its row."""
        g, misses = self.group, got.misses
        if misses.every:
            got.num[g], got.strs[g] = block.values[self.rows], block.text[self.rows]
            return
        got.allocate(g)
        got.num[g][misses.rows] = block.values[self.rows]
        got.strs[g][misses.rows] = block.text[self.rows]


@dataclass(frozen=True)
class RequestRead:
    """A view read for every listing of the request (one entity per distinct key)."""

    keys: EntityKeys
    fieldset: FieldSet
    group: int
    rows: np.ndarray

    def place(self, block: Block, got: Gathered) -> None:
        """Put every listing's entity values at its row."""
        got.num[self.group] = block.values[self.rows]
        got.strs[self.group] = block.text[self.rows]


Read = ListingRead | SoldFlagRead | MissedItemsRead | RequestRead


def store_reads(reads: Sequence[Read]) -> list:
    """The (entity keys, field set) pairs a backend reads, in the reads' order."""
    return [(r.keys, r.fieldset) for r in reads]


def place_all(reads: Sequence[Read], blocks: Sequence[Block], got: Gathered) -> None:
    """Place each read's block (the backend returns them in the reads' order)."""
    for read, block in zip(reads, blocks, strict=True):
        read.place(block, got)
