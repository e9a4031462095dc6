"""The streaming transport (issue 16): the message format, the RabbitMQ stream broker, the online
writer, the processor (checkpoints, SIGKILL + restart, broker down) and the CLI.

Real services: RabbitMQ on 127.0.0.1:5672 (guest/guest, one uuid-named stream per test, deleted
afterwards) and a private redis-server (tests/conftest.py). Tests needing one skip, saying why, when
it is unreachable.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from ranker.streaming import messages
from ranker.streaming.messages import encode, parse, partition_of, route_rows

T0 = 1_780_000_000_000_000  # event time, microseconds


def _event(i: int, *, item: str = "i1", user: str = "u1", event_type: str = "click", ts: int = T0) -> dict:
    return {
        "type": "event",
        "event_id": f"e{i}",
        "event_type": event_type,
        "timestamp": ts,
        "user_id": user,
        "item_id": item,
        "surface": "search",
        "request_id": "r1",
        "position": 3,
        "query": "dress",
    }


# --- messages ---------------------------------------------------------------------------------------


def test_an_event_becomes_one_record_per_route_and_a_listing_change_one():
    sold = {"type": "listing", "change": "sold", "item_id": "i1", "timestamp": T0}
    records, rejects = parse(encode([_event(1), sold]))
    assert not rejects
    assert [(r.kind, r.route) for r in records] == [("event", "i1"), ("event", "u1"), ("listing", "i1")]
    event = records[0]
    assert (event.record_id, event.ts_us, event.event_type, event.user_id) == ("e1", T0, "click", "u1")
    assert event.attrs == {"surface": "search", "request_id": "r1", "position": 3, "query": "dress"}
    assert records[2].record_id == f"i1:sold:{T0}" and records[2].change == "sold"


def test_iso_timestamps_are_event_time_in_microseconds():
    records, _ = parse(encode([_event(1, ts="2026-05-28T20:26:40.000123+00:00")]))  # type: ignore[arg-type]
    assert records[0].ts_us == 1_780_000_000_000_123


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"v": 1}', "bad_json"),
        (b'{"v": 2, "records": []}', "bad_version"),
        (b'{"records": []}', "bad_version"),
        (encode([{"type": "rating", "item_id": "i1"}]), "unknown_type"),
        (encode([_event(1, event_type="like")]), "unknown_type"),
        (encode([{"type": "listing", "change": "deleted", "item_id": "i1", "timestamp": T0}]), "unknown_type"),
        (encode([{**_event(1), "timestamp": "yesterday"}]), "bad_record"),
        (encode([{**_event(1), "timestamp": "2026-05-28T20:26:40"}]), "bad_record"),  # no offset
        (encode([{**_event(1), "user_id": None}]), "bad_record"),
        (encode([{**_event(1), "position": "3"}]), "bad_record"),
        (encode([{"type": "listing", "change": "price", "item_id": "i1", "timestamp": T0}]), "bad_record"),
        (encode([{"type": "listing", "change": "created", "item_id": "i1", "timestamp": T0}]), "bad_record"),
        (encode(["a string"]), "bad_record"),
    ],
)
def test_each_malformed_input_is_counted_under_its_reason(body, reason):
    records, rejects = parse(body)
    assert records == [] and dict(rejects) == {reason: 1}


def test_a_bad_row_rejects_only_itself():
    records, rejects = parse(encode([_event(1), {"type": "nope"}, {**_event(2), "event_id": ""}, _event(3)]))
    assert [r.record_id for r in records if r.route == "i1"] == ["e1", "e3"]
    assert dict(rejects) == {"unknown_type": 1, "bad_record": 1}


def test_partitioning_is_stable_and_each_route_reaches_exactly_one_partition():
    assert partition_of("item-42", 8) == partition_of("item-42", 8) == messages._hash64("item-42") % 8
    assert partition_of("anything", 1) == 0
    rows = [_event(i, item=f"i{i % 17}", user=f"u{i % 5}") for i in range(200)]
    n = 4
    seen: dict[tuple[str, str], list[int]] = {}
    for p, part_rows in route_rows(rows, n).items():
        records, rejects = parse(encode(part_rows), partition=p, partitions=n)
        assert not rejects
        for r in records:
            assert partition_of(r.route, n) == p
            seen.setdefault((r.record_id, r.route), []).append(p)
    assert len(seen) == 400 and all(len(ps) == 1 for ps in seen.values())
    spread = {partition_of(f"i{i}", n) for i in range(17)}
    assert spread == set(range(n))


def test_a_row_published_to_a_partition_none_of_its_routes_hash_to_is_misrouted():
    n = 8
    item = next(f"i{k}" for k in range(100) if partition_of(f"i{k}", n) == 0)
    user = next(f"u{k}" for k in range(100) if partition_of(f"u{k}", n) == 0)
    other = 1
    records, rejects = parse(encode([_event(1, item=item, user=user)]), partition=other, partitions=n)
    assert records == [] and dict(rejects) == {"misrouted": 1}


def test_encode_is_the_documented_envelope():
    assert orjson.loads(encode([_event(1)])) == {"v": 1, "records": [_event(1)]}


# --- broker (the machine's RabbitMQ) ----------------------------------------------------------------

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _rabbitmq_reachable() -> str | None:
    try:
        import pika
    except ImportError:
        return "pika is not installed (make install)"
    try:
        params = pika.URLParameters(AMQP_URL)
        params.connection_attempts = 1
        params.socket_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception as exc:  # any failure to connect means: no broker here
        return f"RabbitMQ is not reachable at 127.0.0.1:5672 ({exc.__class__.__name__}): start rabbitmq-server"
    return None


@pytest.fixture(scope="module")
def rabbitmq() -> str:
    reason = _rabbitmq_reachable()
    if reason:
        pytest.skip(reason)
    return AMQP_URL


@pytest.fixture
def stream(rabbitmq):
    """A uuid-named stream of 2 partitions, deleted afterwards; yields (broker, name, partitions)."""
    from ranker.streaming.broker import RabbitMQBroker

    broker = RabbitMQBroker(rabbitmq)
    name = f"test-s1-{uuid.uuid4().hex[:10]}"
    broker.create(name, 2)
    yield broker, name, 2
    broker.delete(name, 2)
    broker.close()


def _drain(consumer, want: int, deadline_s: float = 20.0) -> list:
    got: list = []
    deadline = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.poll(1000, 0.2)
    return got


def test_a_stream_partition_is_a_replayable_log_read_from_an_offset(stream):
    broker, name, _ = stream
    assert broker.exists(name, 0) and broker.exists(name, 1) and not broker.exists(name, 2)
    bodies = [encode([_event(i)]) for i in range(30)]
    broker.publish(name, 1, bodies)
    first = broker.consumer(name, 1, 0)
    got = _drain(first, 30)
    first.close()
    assert [m.offset for m in got] == list(range(30)) and [m.body for m in got] == bodies
    assert all(m.published_us and abs(m.published_us / 1e6 - time.time()) < 60 for m in got)
    resumed = broker.consumer(name, 1, 21)
    again = _drain(resumed, 9)
    assert [m.offset for m in again] == list(range(21, 30))
    assert resumed.poll(10, 0.1) == []  # nothing more, nothing twice
    broker.publish(name, 1, [b"late"])
    assert [m.body for m in _drain(resumed, 1)] == [b"late"]
    resumed.close()
    other = broker.consumer(name, 0, 0)
    assert other.poll(10, 0.2) == []  # partitions are separate streams
    other.close()


def test_an_unreachable_broker_is_retried_with_doubling_back_off_until_stopped():
    import threading

    from ranker.streaming.broker import RabbitMQBroker
    from ranker.streaming.errors import StreamError

    port = _closed_port()
    stop = threading.Event()
    delays: list[float] = []

    def on_retry(exc, delay):
        delays.append(delay)
        if len(delays) == 4:
            stop.set()

    broker = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{port}/%2F", stop=stop, on_retry=on_retry)
    with pytest.raises(StreamError, match="unreachable"):
        broker.publish("nowhere", 0, [b"x"])
    assert delays == [0.2, 0.4, 0.8, 1.6]
    with pytest.raises(StreamError, match="not reachable"):
        broker.check(timeout_s=1)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
