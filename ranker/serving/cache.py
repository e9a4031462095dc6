"""The scorer's in-process cache of item-level feature values (off by default; see
:class:`~ranker.serving.features.OnlineFeatures` for its staleness bound)."""

from __future__ import annotations

import threading
from itertools import repeat

import numpy as np


class ItemCache:
    """Item-level records by item id, each valid for ``ttl_s`` seconds after it was read; at most
    ``size`` items, the least recently used evicted first.

    The records sit in rows of two tables (numbers, texts) with a dict from item id to row, so a
    request's hits cost one dict lookup per item (at C speed) and one gather per table, not a
    Python object per item. Recency is a tick per row; when no row is free, the least recently used
    eighth of the rows (at least what the insert needs) is evicted in one pass. An expired record
    stays until its item is stored again (in the same row) or evicted."""

    FIRST_ROWS = 4096  # rows allocated at first; doubled as needed up to ``size``
    _UNUSED = np.iinfo(np.int64).max  # the recency of a free row: never an eviction victim

    def __init__(self, ttl_s: float, size: int, widths: tuple[int, int]) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._widths = widths
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        n_num, n_str = self._widths
        with self._lock:
            self._row: dict = {}  # item id -> row
            self._ids: list = []  # row -> item id (None: free)
            self._free: list = []  # free rows
            self._num = np.empty((0, n_num))
            self._text = np.empty((0, n_str), dtype=object)
            self._expires = np.empty(0)
            self._used = np.empty(0, dtype=np.int64)
            self._tick = 0

    def __len__(self) -> int:
        return len(self._row)

    def get(self, keys: list, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in ``keys`` of the live records, their numbers, their texts); the rows are
        copied out, so a later insert may reuse them."""
        with self._lock:
            rows = np.fromiter(map(self._row.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
            hit = np.flatnonzero(rows >= 0)
            rows = rows[hit]
            live = self._expires[rows] > now
            if not live.all():
                hit, rows = hit[live], rows[live]
            self._tick += 1
            self._used[rows] = self._tick
            return hit, self._num[rows], self._text[rows]

    def put(self, keys: list, num: np.ndarray, text: np.ndarray, now: float) -> None:
        """Store the records of ``keys`` (distinct item ids), valid until ``now + ttl_s``."""
        if len(keys) > self.size:  # more than fit: the last ones, as an LRU would keep
            keys, num, text = keys[-self.size :], num[-self.size :], text[-self.size :]
        with self._lock:
            self._tick += 1
            rows = np.fromiter(map(self._row.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
            self._used[rows[rows >= 0]] = self._tick  # stored again: never this insert's victims
            new = np.flatnonzero(rows < 0)
            if len(new):
                rows[new] = self._allocate(len(new))
                for i, r in zip(new.tolist(), rows[new].tolist(), strict=True):
                    self._row[keys[i]] = r
                    self._ids[r] = keys[i]
            self._num[rows] = num
            self._text[rows] = text
            self._expires[rows] = now + self.ttl_s
            self._used[rows] = self._tick

    def _allocate(self, k: int) -> list:
        """``k`` free rows (k <= size): the tables grown while below ``size``, else rows of the
        least recently used items, evicted."""
        n = len(self._ids)
        if len(self._free) < k and n < self.size:
            self._grow(min(self.size, max(2 * n, self.FIRST_ROWS, n + k - len(self._free))))
        if len(self._free) < k:
            # not the rows this insert stores again (their tick is the current one)
            m = min(max(k - len(self._free), len(self._ids) // 8), int((self._used < self._tick).sum()))
            victims = np.argpartition(self._used, m - 1)[:m].tolist()
            for r in victims:
                del self._row[self._ids[r]]
                self._ids[r] = None
            self._used[victims] = self._UNUSED
            self._free.extend(victims)
        rows = self._free[-k:]
        del self._free[-k:]
        return rows

    def _grow(self, rows: int) -> None:
        n = len(self._ids)
        extra = rows - n
        self._num = np.concatenate([self._num, np.empty((extra, self._num.shape[1]))])
        self._text = np.concatenate([self._text, np.empty((extra, self._text.shape[1]), dtype=object)])
        self._expires = np.concatenate([self._expires, np.full(extra, -np.inf)])
        self._used = np.concatenate([self._used, np.full(extra, self._UNUSED, dtype=np.int64)])
        self._ids.extend([None] * extra)
        self._free.extend(range(rows - 1, n - 1, -1))  # popped from the end: lowest rows first
