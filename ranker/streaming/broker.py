"""The broker behind a small interface: create/delete a partitioned stream, publish confirmed
batches of messages to one partition, consume one partition from an offset.

:class:`RabbitMQBroker` implements it with RabbitMQ **stream queues** (``x-queue-type: stream``: an
append-only, replayable log read from an offset) over AMQP 0-9-1 with pika: partition ``k`` of stream
``name`` is the stream queue ``<name>-p<k>``; a consumer subscribes with ``x-stream-offset`` and a
``basic_qos`` prefetch (RabbitMQ requires one on streams; the acks are credit, not deletion); a
publish waits for the publisher confirm, so a returned :meth:`publish` is on disk in the broker.
Every message carries the header ``x-published-us`` (wall clock at publish, microseconds), the start
of the freshness measurement.

When the broker is unreachable or drops the connection, every call retries with back-off (0.2 s,
doubling to 10 s) until it succeeds or the ``stop`` event is set; the consumer resumes after the
last offset it returned, so nothing is skipped. A Kafka implementation maps one to one: a topic
with ``partitions`` partitions, ``publish`` = a producer with ``acks=all`` and the key's partition,
``consumer`` = ``assign`` + ``seek(offset)`` (docs/guides/streaming.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from ranker.streaming.errors import StreamError

log = logging.getLogger(__name__)

PUBLISHED_HEADER = "x-published-us"
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
PREFETCH = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    offset: int
    body: bytes
    published_us: int | None


class Consumer(Protocol):
    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` messages in offset order, waiting at most ``timeout_s`` for the first."""

    def close(self) -> None: ...


class Broker(Protocol):
    def create(self, name: str, partitions: int) -> None: ...

    def delete(self, name: str, partitions: int) -> None: ...

    def publish(self, name: str, partition: int, bodies: list[bytes]) -> None:
        """Append ``bodies`` to the partition; returns once the broker confirmed every one."""

    def consumer(self, name: str, partition: int, from_offset: int) -> Consumer: ...

    def close(self) -> None: ...


def partition_queue(name: str, partition: int) -> str:
    return f"{name}-p{partition}"


def _connection_errors() -> tuple[type[BaseException], ...]:
    import pika.exceptions as pe

    return (pe.AMQPConnectionError, pe.AMQPChannelError, pe.StreamLostError, ConnectionError, OSError)


class Backoff:
    """0.2 s doubling to 10 s between attempts; ``wait`` returns False when ``stop`` is set."""

    def __init__(self, stop: threading.Event | None = None, start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S):
        self.stop = stop or threading.Event()
        self.start, self.cap = start, cap
        self.delay = start
        self.retries = 0

    def wait(self) -> bool:
        self.retries += 1
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return not self.stop.wait(delay)

    def reset(self) -> None:
        self.delay = self.start


class RabbitMQBroker:
    """RabbitMQ stream queues (see the module docstring). ``on_retry(exc, delay_s)`` is told of each
    failed attempt (the processor shows and counts them)."""

    def __init__(
        self,
        url: str,
        *,
        stop: threading.Event | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
        max_age: str = "7D",
    ) -> None:
        self.url = url
        self.stop = stop or threading.Event()
        self.on_retry = on_retry
        self.max_age = max_age
        self._conn = None
        self._channel = None

    # --- connection with retries ------------------------------------------------------------------
    def _connect(self):
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 30
        self._conn = pika.BlockingConnection(params)
        self._channel = self._conn.channel()
        self._channel.confirm_delivery()
        return self._channel

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                pass

    def retrying(self, action: Callable[[object], T]) -> T:
        """``action(channel)`` until it succeeds, reconnecting with back-off; StreamError when stopped."""
        backoff = Backoff(self.stop)
        errors = _connection_errors()
        while True:
            try:
                channel = self._channel if self._channel is not None and self._channel.is_open else self._connect()
                return action(channel)
            except errors as exc:
                self._drop()
                if self.on_retry is not None:
                    self.on_retry(exc, backoff.delay)
                log.warning("broker %s unavailable (%s); retrying in %.1fs", _safe(self.url), exc, backoff.delay)
                if not backoff.wait():
                    where = _safe(self.url)
                    raise StreamError(f"stopped while the broker at {where} was unreachable ({exc})") from None

    def check(self, timeout_s: float = 3.0) -> None:
        """One connection attempt; StreamError with the reason when the broker is not reachable."""
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = timeout_s
        try:
            pika.BlockingConnection(params).close()
        except _connection_errors() as exc:
            raise StreamError(
                f"RabbitMQ at {_safe(self.url)} is not reachable ({exc.__class__.__name__}); "
                "start it or fix RANKER_STREAM_URL"
            ) from None

    # --- the interface ------------------------------------------------------------------------------
    def create(self, name: str, partitions: int) -> None:
        args = {"x-queue-type": "stream", "x-max-age": self.max_age}

        def declare(channel) -> None:
            for k in range(partitions):
                channel.queue_declare(partition_queue(name, k), durable=True, arguments=args)

        self.retrying(declare)

    def delete(self, name: str, partitions: int) -> None:
        def delete(channel) -> None:
            for k in range(partitions):
                channel.queue_delete(partition_queue(name, k))

        self.retrying(delete)

    def exists(self, name: str, partition: int) -> bool:
        import pika.exceptions as pe

        def probe(channel) -> bool:
            try:
                channel.queue_declare(partition_queue(name, partition), passive=True)
                return True
            except pe.ChannelClosedByBroker:
                self._channel = None
                return False

        return self.retrying(probe)

    def publish(self, name: str, partition: int, bodies: list[bytes]) -> None:
        import pika

        queue = partition_queue(name, partition)

        def send(channel) -> None:
            for body in bodies:
                props = pika.BasicProperties(
                    headers={PUBLISHED_HEADER: time.time_ns() // 1000}, delivery_mode=2, content_type="application/json"
                )
                channel.basic_publish("", queue, body, props, mandatory=True)

        # a retry re-sends the whole batch: duplicates are possible, losses are not (the consumer de-duplicates)
        self.retrying(send)

    def consumer(self, name: str, partition: int, from_offset: int) -> "RabbitMQConsumer":
        queue = partition_queue(name, partition)
        return RabbitMQConsumer(self.url, queue, from_offset, stop=self.stop, on_retry=self.on_retry)

    def close(self) -> None:
        self._drop()


class RabbitMQConsumer:
    """One partition's consumer: messages from ``from_offset`` on, in offset order, each once per
    subscription (offsets below the next one expected, which a stream may redeliver from the start of
    its chunk or after a reconnect, are dropped)."""

    def __init__(
        self,
        url: str,
        queue: str,
        from_offset: int,
        *,
        stop: threading.Event | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
        prefetch: int = PREFETCH,
    ) -> None:
        self.url, self.queue = url, queue
        self.next_offset = max(0, int(from_offset))
        self.stop = stop or threading.Event()
        self.on_retry = on_retry
        self.prefetch = prefetch
        self._buffer: deque[Message] = deque()
        self._conn = None
        self._channel = None
        self._last_tag = 0
        self.reconnects = 0

    def _subscribe(self) -> None:
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.queue_declare(self.queue, passive=True)  # a missing stream is an error, not a new one
        offset = {"x-stream-offset": self.next_offset}
        channel.basic_consume(self.queue, self._deliver, auto_ack=False, arguments=offset)
        self._conn, self._channel = conn, channel
        self._buffer.clear()
        self._expect = self.next_offset

    def _deliver(self, channel, method, properties, body) -> None:
        headers = properties.headers or {}
        offset = int(headers.get("x-stream-offset", -1))
        self._last_tag = method.delivery_tag
        if offset < self._expect:
            return
        self._expect = offset + 1
        published = headers.get(PUBLISHED_HEADER)
        self._buffer.append(Message(offset, body, int(published) if published is not None else None))

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        import pika.exceptions as pe

        backoff = Backoff(self.stop)
        errors = _connection_errors()
        while True:
            try:
                if self._conn is None or not self._conn.is_open:
                    self._subscribe()
                    backoff.reset()
                assert self._conn is not None
                if not self._buffer:
                    self._conn.process_data_events(time_limit=timeout_s)
                if len(self._buffer) < max_messages:
                    self._conn.process_data_events(time_limit=0)
                out = []
                while self._buffer and len(out) < max_messages:
                    out.append(self._buffer.popleft())
                if self._last_tag and self._channel is not None:
                    self._channel.basic_ack(self._last_tag, multiple=True)
                    self._last_tag = 0
                if out:
                    self.next_offset = out[-1].offset + 1
                return out
            except pe.ChannelClosedByBroker as exc:
                self._drop()
                if exc.reply_code == 404:
                    raise StreamError(f"stream queue {self.queue} does not exist: run `ranker stream create`") from None
                self._retry(exc, backoff)
            except errors as exc:
                self._drop()
                self._retry(exc, backoff)

    def _retry(self, exc: BaseException, backoff: Backoff) -> None:
        # what was buffered but not returned is re-read from next_offset on the new subscription
        self.reconnects += 1
        if self.on_retry is not None:
            self.on_retry(exc, backoff.delay)
        log.warning("stream %s: broker unavailable (%s); retrying in %.1fs", self.queue, exc, backoff.delay)
        if not backoff.wait():
            raise StreamError(f"stopped while the broker was unreachable ({exc})") from None

    @property
    def buffered(self) -> int:
        """Messages received from the broker and not yet returned (a sign of lag)."""
        return len(self._buffer)

    def close(self) -> None:
        self._drop()


def _safe(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
        return parsed._replace(netloc=netloc).geturl()
    return url
