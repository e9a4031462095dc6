"""The Redis Cluster reader: Feast's Redis layout on a cluster, one :class:`RedisReader` (one
socket per thread) per master.

A round's keys are routed by hash slot (:mod:`ranker.features.slots`), its commands split per
master and written to every master before any reply is read, so the masters answer concurrently;
the blocks are put back in the round's key order. A ``MOVED``/``ASK`` reply (a slot that moved) or
a lost node refreshes the slot map (``CLUSTER SLOTS`` from any known node) before the next try; a
moved slot is retried within the deadline, a node down raises (the scorer answers degraded) and
the next round starts from a fresh map, so the scorer recovers once the cluster does.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from ranker.features.slots import key_slots, slot_map
from ranker.serving.reads import Block, EntityKeys, Pending
from ranker.serving.redis_reader import RedisReader

if TYPE_CHECKING:
    from ranker.serving.plan import FieldSet

MOVE_RETRIES = 3  # slot map refreshes per round after MOVED/ASK before giving up


class ClusterPending(Pending):
    """A round written to the masters (``parts``, per master: its reader, its pending round, the
    rows of each read it holds)."""

    __slots__ = ("parts",)

    def __init__(self, reads: list, deadline: float | None) -> None:
        super().__init__(reads, [keys.n_keys for keys, _fs in reads], deadline)
        self.parts: list = []


def _subset(keys: EntityKeys, rows: np.ndarray) -> EntityKeys:
    picked = rows.tolist()
    columns = tuple(c if isinstance(c, str) else [c[i] for i in picked] for c in keys.columns)
    return EntityKeys(keys.join_keys, columns, len(picked))


def _merge(fs: FieldSet, n: int, pieces: list) -> Block:
    """One block of ``n`` rows from per-master blocks and their rows."""
    if len(pieces) == 1 and len(pieces[0][0]) == n:
        return pieces[0][1]
    values = np.empty((n, fs.n_num))
    present = np.zeros((n, fs.n_num), dtype=bool) if fs.presence else None
    text = np.empty((n, fs.n - fs.n_num), dtype=object)
    for rows, block in pieces:
        values[rows] = block.values
        if present is not None:
            present[rows] = block.present
        text[rows] = block.text
    return Block(values, present, text)


class ClusterReader:
    """Reads of a round from Feast's Redis layout on a Redis Cluster (module doc); thread-safe."""

    def __init__(
        self,
        seeds: list[tuple[str, int]],
        timeout_s: float,
        map_names: np.ndarray,
        map_columns: np.ndarray,
        *,
        key_suffix: bytes,
    ) -> None:
        import redis

        self._redis = redis
        self._timeout_s = timeout_s
        self._args = (map_names, map_columns)
        self._suffix = key_suffix
        self._seeds = list(seeds)
        self._readers: dict = {}  # (host, port) -> RedisReader, kept across slot map refreshes
        self._nodes: list = []
        self._owner = np.full(0, -1, dtype=np.int64)
        self._stale = True
        self.refreshes = 0  # slot maps read (the first, then one per MOVED/ASK or lost node)
        self._lock = threading.Lock()
        self.errors = (redis.RedisError, OSError)
        self.name = "Redis Cluster at " + ",".join(f"{h}:{p}" for h, p in seeds)

    # -- slot map ---------------------------------------------------------------------------------
    def _reader(self, address: tuple[str, int]) -> RedisReader:
        reader = self._readers.get(address)
        if reader is None:
            names, columns = self._args
            reader = self._readers[address] = RedisReader(
                f"redis://{address[0]}:{address[1]}/0", self._timeout_s, names, columns, key_suffix=self._suffix
            )
        return reader

    def refresh(self, deadline: float | None = None) -> None:
        """Read the slot map from the first node that answers (known masters first, then the seeds)."""
        redis = self._redis
        last: BaseException | None = None
        for host, port in dict.fromkeys([*self._nodes, *self._seeds]):
            timeout = self._timeout_s if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                raise redis.TimeoutError("deadline passed while refreshing the cluster's slot map")
            timeout = min(timeout, self._timeout_s)
            client = redis.Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout)
            try:
                conn = client.connection_pool.get_connection()
                try:
                    conn.send_command("CLUSTER", "SLOTS")
                    replies = conn.read_response()  # raw: no response callback
                finally:
                    client.connection_pool.release(conn)
            except self.errors as exc:
                last = exc
                continue
            finally:
                client.close()
            nodes, owner = slot_map(replies)
            with self._lock:
                self._nodes, self._owner, self._stale = nodes, owner, False
                self.refreshes += 1
            return
        raise redis.ConnectionError(f"no node of the cluster answered CLUSTER SLOTS ({last})")

    # -- reads ------------------------------------------------------------------------------------
    def read(self, reads: list, deadline: float | None = None) -> list:
        """Like :meth:`RedisReader.read`, keys routed to their masters (module doc)."""
        return self.receive(self.send(reads, deadline))

    def send(self, reads: list, deadline: float | None = None) -> ClusterPending:
        """Write the round's commands to every master holding some of its keys; replies not read."""
        if self._stale:
            self.refresh(deadline)
        pending = ClusterPending(reads, deadline)
        nodes, owner = self._nodes, self._owner
        per_node: dict = {}  # master index -> per read: rows
        for r, (keys, _fs) in enumerate(reads):
            if not keys.n_keys:
                continue
            node_of = owner[key_slots(keys.serialized(self._suffix))]
            if (node_of < 0).any():
                self._stale = True
                raise self._redis.ConnectionError("the cluster serves no master for some hash slots")
            for n in np.unique(node_of).tolist():
                per_node.setdefault(n, {})[r] = np.flatnonzero(node_of == n)
        try:
            for n, rows_of in per_node.items():
                reader = self._reader(nodes[n])
                sub = [(_subset(reads[r][0], rows), reads[r][1]) for r, rows in rows_of.items()]
                pending.parts.append((reader, reader.send(sub, deadline), rows_of))
        except BaseException:
            self._stale = True
            self.abandon(pending)
            raise
        return pending

    def receive(self, pending: Pending, _tries: int = 0) -> list:
        """The round's blocks in its key order; a moved slot refreshes the map and reads again."""
        assert isinstance(pending, ClusterPending)  # noqa: S101 -- a round of this reader
        pieces: list = [[] for _ in pending.reads]
        moved: BaseException | None = None
        failure: BaseException | None = None
        for reader, part, rows_of in pending.parts:
            try:
                blocks = reader.receive(part)
            except self._redis.ResponseError as exc:
                if str(exc).startswith(("MOVED", "ASK")):
                    moved = exc
                else:
                    failure = failure or exc
                continue
            except BaseException as exc:
                failure = failure or exc
                continue
            for (r, rows), block in zip(rows_of.items(), blocks, strict=True):
                pieces[r].append((rows, block))
        pending.parts = []
        if failure is not None:
            self._stale = True
            raise failure
        if moved is not None:
            self._stale = True
            if _tries >= MOVE_RETRIES:
                raise moved
            return self.receive(self.send(pending.reads, pending.deadline), _tries + 1)
        return [
            _merge(fs, keys.n_keys, pieces[r]) if keys.n_keys else Block.empty(fs)
            for r, (keys, fs) in enumerate(pending.reads)
        ]

    def abandon(self, pending: Pending) -> None:
        """Drop a round whose replies will not be read (every master's connection closed)."""
        assert isinstance(pending, ClusterPending)  # noqa: S101 -- a round of this reader
        for reader, part, _rows in pending.parts:
            reader.abandon(part)
        pending.parts = []

    def ping(self) -> bool:
        try:
            self.refresh()
        except self.errors:
            return False
        return all(self._reader(address).ping() for address in self._nodes)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
