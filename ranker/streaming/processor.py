"""The stream processor of one partition (``ranker stream run --partition k``).

Loop: poll a batch of messages from the partition's stream, parse them (rejects counted per reason),
apply the records to the window state (event time, allowed lateness, de-duplication: the state's
job), write its updates into the online store (never over a newer value), and every
``RANKER_STREAM_CHECKPOINT_S`` (stretched to ten times the last checkpoint's duration when the
state's snapshot is slower: checkpoints take at most a tenth of the time) checkpoint, in a forked
child while the loop goes on: first append
the updates written since the last checkpoint to the offline store
(``<home>/data/features/realtime/<view>/stream-<stream>-p{k}-{first:012d}-{last:012d}.parquet``: what
was actually online), then save ``{offset, state snapshot}`` atomically.

Guarantees. Delivery is at least once: after a crash (even SIGKILL) the processor restores the state
of its last checkpoint and resumes at the next offset, replaying what it had processed since; the
replay recomputes the same values from the same state, so the online store ends as after an
uninterrupted run (values equal; an intermediate value older than one already stored is skipped),
and offline files written after the checkpoint are removed before the replay writes them again: an
exactly-once effect. Duplicate messages (a producer's retry) are dropped by the state's dedup on
``(record_id, route)``. Within a partition, records are applied in offset order; across partitions
there is no order (every entity's state lives in one partition).

One active processor per partition and host: an ``flock`` in ``<home>/data/stream/``. SIGTERM (or the
``stop`` event) finishes the batch in hand, checkpoints and returns. When the broker or the online
store is unreachable, the processor retries with back-off (0.2 s doubling to 10 s) and goes on where
it was; the scorer keeps serving the values already online meanwhile.

The window state is ``ranker.streaming.windows.WindowState`` unless another class is named
(``module:Class``, same interface); it is imported only when the processor starts.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ranker.config import Settings
from ranker.streaming.broker import Backoff, Broker, RabbitMQBroker
from ranker.streaming.errors import StreamError
from ranker.streaming.messages import parse
from ranker.streaming.metrics import StreamMetrics
from ranker.streaming.state import Checkpoint, PartitionLock, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

DEFAULT_STATE = "ranker.streaming.windows:WindowState"
BATCH_MESSAGES = 500
PROGRESS_S = 1.0
# Checkpoints are written by a forked child (copy-on-write, like Redis' BGSAVE): pickling a day of windows
# takes ~0.5 s per 60k events and the offline parquet append ~0.1 s a second at 10k events/s, which would
# stall the loop (freshness p99) if done inline.
FORK = hasattr(os, "fork")
CHECKPOINT_SHARE = 10  # the checkpoint interval is at least this many times the last checkpoint's duration


def load_state_class(spec: str = DEFAULT_STATE) -> Any:
    """The window state class named ``module:Class`` (imported now, not at import time)."""
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise StreamError(f"the window state module {module_name} is not available ({exc})") from None
    try:
        return getattr(module, class_name or "WindowState")
    except AttributeError:
        raise StreamError(f"{module_name} has no class {class_name}") from None


def offline_file(realtime_dir: Path, view: str, stream: str, partition: int, first: int, last: int) -> Path:
    """Where the updates of offsets first..last of a partition go offline. The stream's name is part of
    the file name: a new stream (another name) restarts at offset 0 without touching older files."""
    return Path(realtime_dir) / view / f"stream-{stream}-p{partition}-{first:012d}-{last:012d}.parquet"


def _offline_first_offset(path: Path, stream: str, partition: int) -> int | None:
    parts = path.stem.rsplit("-", 3)
    if len(parts) != 4 or parts[0] != f"stream-{stream}" or parts[1] != f"p{partition}" or not parts[2].isdigit():
        return None
    return int(parts[2])


class Processor:
    """One partition's processor; :meth:`run` until stopped (or idle, for tests and benchmarks)."""

    def __init__(
        self,
        settings: Settings,
        partition: int,
        *,
        broker: Broker | None = None,
        state_class: str | Any = DEFAULT_STATE,
        writer: Any = None,
        metrics: StreamMetrics | None = None,
        batch_messages: int = BATCH_MESSAGES,
        poll_timeout_s: float = 0.05,
        stop: threading.Event | None = None,
        progress: Callable[[str], None] | None = None,
        keep_freshness: bool = False,
        freeze_gc: bool = True,
    ) -> None:
        n = settings.stream_partitions
        if not 0 <= partition < n:
            raise StreamError(
                f"--partition {partition} is not a partition of {n} (RANKER_STREAM_PARTITIONS): use 0..{n - 1}"
            )
        self.settings = settings
        self.partition = partition
        self.stream = settings.stream_name
        self.stop = stop or threading.Event()
        self.metrics = metrics or StreamMetrics(self.stream, partition)
        self.broker = broker or RabbitMQBroker(settings.stream_url, stop=self.stop, on_retry=self._on_retry)
        self.state_class = load_state_class(state_class) if isinstance(state_class, str) else state_class
        self._writer = writer
        self.batch_messages = batch_messages
        self.poll_timeout_s = poll_timeout_s
        self.progress = progress
        self.freshness: list[float] | None = [] if keep_freshness else None
        self.counts: Counter = Counter()
        self.dropped: Counter = Counter()
        self.retries = 0
        self.lag_s = 0.0
        self.checkpoint_interval_s = settings.stream_checkpoint_s
        self.ready = threading.Event()  # set once subscribed and polling
        self.freeze_gc = freeze_gc

    # --- plumbing -----------------------------------------------------------------------------------
    def _on_retry(self, exc: BaseException, delay: float) -> None:
        self.retries += 1
        self.metrics.retries.inc()
        if self.progress is not None:
            self.progress(f"p{self.partition} broker unavailable ({exc.__class__.__name__}); retry in {delay:.1f}s")

    @property
    def writer(self):
        if self._writer is None:
            from ranker.streaming.writer import OnlineWriter

            self._writer = OnlineWriter(self.settings)
        return self._writer

    def _write(self, updates: dict) -> Any:
        import redis

        errors = (redis.ConnectionError, redis.TimeoutError, sqlite3.OperationalError)
        backoff = Backoff(self.stop)
        while True:
            try:
                return self.writer.write(updates)
            except errors as exc:
                self._on_retry(exc, backoff.delay)
                if not backoff.wait():
                    raise StreamError(f"stopped while the online store was unavailable ({exc})") from None

    def _new_state(self):
        state = self.state_class(self.settings.stream_lateness_s)
        listings = self.settings.raw_dir / "listings.parquet"
        if hasattr(state, "seed_listings") and listings.exists():
            state.seed_listings(pq.read_table(listings))
        return state

    def _prune_offline(self, offset: int) -> int:
        """Remove offline files of this partition written after the checkpoint (they are replayed)."""
        removed = 0
        root = self.settings.realtime_dir
        if not root.exists():
            return 0
        for path in root.glob(f"*/stream-{self.stream}-p{self.partition}-*.parquet"):
            first = _offline_first_offset(path, self.stream, self.partition)
            if first is not None and first > offset:
                path.unlink()
                removed += 1
        return removed

    def _append_offline(self, pending: dict[str, list[pa.Table]], first: int, last: int) -> None:
        for view, tables in pending.items():
            if not tables:
                continue
            table = pa.concat_tables(tables, promote_options="default")
            path = offline_file(self.settings.realtime_dir, view, self.stream, self.partition, first, last)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(table, tmp)
            tmp.replace(path)

    # --- the loop -----------------------------------------------------------------------------------
    def run(
        self, *, idle_exit_s: float | None = None, max_seconds: float | None = None, until_offset: int | None = None
    ) -> dict:
        """Process until stopped (``stop`` set, SIGTERM in the CLI), until no message came for
        ``idle_exit_s``, for ``max_seconds``, or once ``until_offset`` is processed; returns the
        run's summary."""
        settings = self.settings
        lock = PartitionLock(settings.stream_dir, self.stream, self.partition).acquire()
        consumer = None
        try:
            ckpt = load_checkpoint(settings.stream_dir, self.stream, self.partition, settings.stream_partitions)
            if ckpt is not None:
                state = self.state_class.restore(ckpt.snapshot)
                offset = ckpt.offset
            else:
                state = self._new_state()
                offset = -1
            resumed_from = offset + 1
            k = self.partition
            self._prune_offline(offset)
            self.writer  # noqa: B018 -- open the online store (and load Feast) before the first message
            if self.freeze_gc:
                # Feast, pandas and the seeded state are long-lived: out of the collector's sight, a full
                # collection scans only what the loop made since (it took up to 1 s at start-up's size)
                gc.collect()
                gc.freeze()
            consumer = self.broker.consumer(self.stream, self.partition, resumed_from)
            started = last_ckpt = last_progress = idle_since = time.monotonic()
            pending: dict[str, list[pa.Table]] = {}
            first_pending: int | None = None
            checkpoints = 0

            interval = settings.stream_checkpoint_s

            child: int | None = None  # the process writing the last checkpoint in the background
            # what that child appends offline (views' tables, first and last offset): given back to
            # ``pending`` if it fails, so the next checkpoint writes it
            in_flight: tuple[dict[str, list[pa.Table]], int, int] | None = None

            def writer_done(block: bool = False) -> bool:
                nonlocal child, in_flight, pending, first_pending
                if child is None:
                    return True
                pid, status = os.waitpid(child, 0 if block else os.WNOHANG)
                if pid == 0:
                    return False
                child = None
                if status != 0:
                    log.warning("p%d: a background checkpoint failed (status %d); the next one is written", k, status)
                if status != 0 and in_flight is not None:
                    tables, first, last = in_flight
                    for view in tables:  # a file it may have written is rewritten over a longer range
                        offline_file(settings.realtime_dir, view, self.stream, k, first, last).unlink(missing_ok=True)
                    pending = {v: [*tables.get(v, []), *pending.get(v, [])] for v in {*tables, *pending}}
                    first_pending = first
                in_flight = None
                return True

            def checkpoint(background: bool = False) -> None:
                """Offline append, then ``{offset, snapshot}``; in the background, a forked child does
                both (copy-on-write, like Redis' BGSAVE) while this process goes on: the loop only
                pays for the fork."""
                nonlocal first_pending, pending, last_ckpt, checkpoints, interval, child, in_flight
                began = time.monotonic()
                writer_done(block=True)  # never two writers: an older checkpoint must not land last
                at = offset

                def write() -> None:
                    if first_pending is not None:
                        self._append_offline(pending, first_pending, at)
                    save_checkpoint(
                        settings.stream_dir,
                        Checkpoint(self.stream, k, settings.stream_partitions, at, state.snapshot()),
                    )

                if background and FORK:
                    pid = os.fork()
                    if pid == 0:  # the child: write and leave, touching nothing else of the parent
                        code = 1
                        try:
                            gc.disable()  # a collection would touch (copy) every page of the state
                            write()
                            code = 0
                        finally:
                            os._exit(code)
                    child = pid
                    if first_pending is not None:
                        in_flight = (pending, first_pending, at)
                else:
                    write()
                pending, first_pending = {}, None
                last_ckpt = time.monotonic()
                # what the checkpoint costs this process grows with the state: at most ~1/CHECKPOINT_SHARE
                # of the time goes to it (a restart replays at most one interval)
                interval = max(settings.stream_checkpoint_s, (last_ckpt - began) * CHECKPOINT_SHARE)
                self.checkpoint_interval_s = interval
                checkpoints += 1
                self.metrics.checkpoints.inc()

            while not self.stop.is_set() and (until_offset is None or offset < until_offset):
                now = time.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                try:
                    messages = consumer.poll(self.batch_messages, self.poll_timeout_s)
                except StreamError:
                    if self.stop.is_set():
                        break
                    raise
                if not self.ready.is_set():
                    self.ready.set()
                    if self.progress is not None:
                        self.progress(
                            f"p{self.partition} consuming {self.stream}-p{self.partition} from offset {resumed_from}"
                        )
                if messages:
                    idle_since = time.monotonic()
                    self._process(messages, state, pending)
                    if first_pending is None:
                        first_pending = messages[0].offset
                    offset = messages[-1].offset
                    self.metrics.offset.set(offset)
                    newest = messages[-1].published_us
                    waiting = len(messages) >= self.batch_messages or getattr(consumer, "buffered", 0) > 0
                    self.lag_s = max(0.0, time.time() - newest / 1e6) if newest and waiting else 0.0
                    self.metrics.lag.set(self.lag_s)
                else:
                    self.lag_s = 0.0
                    self.metrics.lag.set(0.0)
                    if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                        break
                now = time.monotonic()
                if first_pending is not None and now - last_ckpt >= interval and writer_done():
                    checkpoint(background=True)
                if self.progress is not None and now - last_progress >= PROGRESS_S:
                    last_progress = now
                    self.progress(self._progress_line(offset))
            writer_done(block=True)  # a failed background checkpoint gives its rows back to pending
            if first_pending is not None or ckpt is None:
                checkpoint()
            return {
                "stream": self.stream,
                "partition": self.partition,
                "resumed_from": resumed_from,
                "offset": offset,
                "checkpoints": checkpoints,
                "seconds": round(time.monotonic() - started, 3),
                "retries": self.retries,
                **dict(self.counts),
                "dropped": dict(self.dropped),
            }
        finally:
            if consumer is not None:
                consumer.close()
            lock.release()

    def _process(self, messages: list, state: Any, pending: dict[str, list[pa.Table]]) -> None:
        records: list = []
        per_message: list[tuple[int | None, int]] = []
        k, n = self.partition, self.settings.stream_partitions
        for m in messages:
            recs, rejects = parse(m.body, k, n)
            records.extend(recs)
            per_message.append((m.published_us, len(recs)))
            for reason, count in rejects.items():
                self.dropped[reason] += count
                self.metrics.dropped(reason, count)
        applied = state.apply(records)
        for reason, count in (getattr(applied, "rejected", None) or {}).items():
            self.dropped[reason] += count
            self.metrics.dropped(reason, count)
        updates = {v: t for v, t in applied.updates.items() if t is not None and t.num_rows}
        if updates:
            stats = self._write(updates)
            for view, (w, s) in stats.by_view.items():
                self.metrics.written(view, w, s)
            self.counts["written"] += stats.written
            self.counts["stale_skipped"] += stats.skipped_not_newer
            for view, table in updates.items():
                pending.setdefault(view, []).append(table)
        written_us = time.time_ns() // 1000
        for published, count in per_message:
            if published is None or not count:
                continue
            seconds = max(0.0, (written_us - published) / 1e6)
            self.metrics.freshness.observe(seconds, count)
            if self.freshness is not None:
                self.freshness.extend([seconds] * count)
        self.counts["messages"] += len(messages)
        self.counts["records"] += len(records)
        self.counts["accepted"] += int(getattr(applied, "accepted", len(records)))
        self.metrics.records.inc(len(records))

    def _progress_line(self, offset: int) -> str:
        lag = self.lag_s
        drops = ",".join(f"{r}={c}" for r, c in sorted(self.dropped.items())) or "none"
        return (
            f"p{self.partition} offset={offset} messages={self.counts['messages']} records={self.counts['records']} "
            f"written={self.counts['written']} stale={self.counts['stale_skipped']} lag_s={lag:.3f} dropped={drops} "
            f"checkpoint_every_s={self.checkpoint_interval_s:.1f}"
        )
