"""The sqlite reader: Feast's embedded online store (``{project}_{view}`` tables of ``entity_key``,
``feature_name``, ``value``), one query per view and round for all the entity keys of the request
(the keys are joined from a ``VALUES`` list, so SQLite hands back each row's position), one
read-only connection per thread."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from ranker.serving.reads import Block, Pending
from ranker.serving.values import decode_numbers, decode_strings


class SqliteReader:
    """Reads of a round from Feast's sqlite layout (see the module doc); thread-safe."""

    MAX_KEYS = 10_000  # per statement (SQLite allows 32,766 parameters)

    def __init__(self, path: Path, timeout_s: float, probe_table: str) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.errors = (sqlite3.Error,)
        self.name = f"sqlite online store {path}"
        self._probe = probe_table
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list = []

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never use a connection across fork()
            if not self.path.exists():
                raise sqlite3.OperationalError(f"{self.path} does not exist: run `ranker features materialize`")
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro",
                uri=True,
                timeout=self.timeout_s,
                check_same_thread=False,
                cached_statements=512,
            )
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._conns.append(conn)
        return conn

    def send(self, reads: list, deadline: float | None = None) -> Pending:
        """SQLite answers in the caller's thread: the round is read when it is received."""
        return Pending(reads, [], deadline)

    def receive(self, pending: Pending) -> list:
        return self.read(pending.reads, pending.deadline)

    def abandon(self, pending: Pending) -> None:
        pass

    def read(self, reads: list, deadline: float | None = None) -> list:
        """Like :meth:`RedisReader.read`; statements still running at ``deadline`` are interrupted."""
        conn = self._conn()
        if deadline is None:
            return self._read(conn, reads)
        conn.set_progress_handler(lambda: time.monotonic() >= deadline, 2000)  # non-zero: interrupt
        try:
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError("deadline passed")
            return self._read(conn, reads)
        finally:
            conn.set_progress_handler(None, 0)

    def _read(self, conn, reads: list) -> list:
        out = []
        for entity_keys, fs in reads:
            keys = entity_keys.serialized()
            cells = np.full(len(keys) * fs.n, None, dtype=object)
            for lo in range(0, len(keys), self.MAX_KEYS):
                chunk = keys[lo : lo + self.MAX_KEYS]
                for sql in fs.sqlite_queries(len(chunk)):
                    rows = conn.execute(sql, chunk).fetchall()
                    if rows:
                        pos, values = zip(*rows, strict=True)
                        cells[np.fromiter(pos, dtype=np.intp, count=len(pos)) + lo * fs.n] = values
            grid = cells.reshape(len(keys), fs.n)
            nums = grid[:, : fs.n_num]
            text = np.empty((len(keys), fs.n - fs.n_num), dtype=object)
            if text.size:
                strings = decode_strings(grid[:, fs.n_num :].ravel().tolist())
                text[:] = np.array(strings, dtype=object).reshape(text.shape)
            out.append(
                Block(
                    values=decode_numbers(nums.ravel().tolist()).reshape(nums.shape),
                    present=(nums != None),  # noqa: E711 - element-wise on an object array
                    text=text,
                )
            )
        return out

    def ping(self) -> bool:
        try:
            self._conn().execute(f'SELECT 1 FROM "{self._probe}" LIMIT 1').fetchall()
            return True
        except self.errors:
            return False

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
