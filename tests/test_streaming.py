"""The streaming transport (issue 16): the message format, the RabbitMQ stream broker, the online
writer, the processor (checkpoints, SIGKILL + restart, broker down) and the CLI.

Real services: RabbitMQ on 127.0.0.1:5672 (guest/guest, one uuid-named stream per test, deleted
afterwards) and a private redis-server (tests/conftest.py). Tests needing one skip, saying why, when
it is unreachable.
"""

from __future__ import annotations

import time
from collections import Counter
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
    from ranker.streaming.records import StreamRecord

    built = StreamRecord("e1", "event", T0, "i1", "u1", "click", None, "u1", event.attrs)
    assert records[1] == built and repr(records[1]) == repr(built)


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
        (encode([{**_event(1), "position": True}]), "bad_record"),
        (encode([{**_event(1), "event_type": ["click"]}]), "bad_record"),
        (encode([{**_event(1), "timestamp": True}]), "bad_record"),
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


# --- writer (Feast's online layout, read back by Feast's own reader) --------------------------------


@pytest.fixture(scope="module")
def stream_home(tmp_path_factory):
    """A private small world (its online store is written by these tests, never the shared one)."""
    import warnings

    from ranker.data.simulate import SimConfig, simulate
    from ranker.features.store import apply
    from ranker.jobs.feature_tables import build_feature_tables
    from tests.conftest import SMALL_WORLD, make_home

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    settings = make_home(tmp_path_factory.mktemp("stream_world"))
    simulate(SimConfig(**SMALL_WORLD), raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
    build_feature_tables(settings)  # batch tables and the real-time backfill, as `ranker features build`
    apply(settings)
    return settings


def _loaded(settings):
    from ranker.features.materialize import materialize

    materialize(settings, full=True)
    return settings


@pytest.fixture(scope="module")
def sqlite_home(stream_home):
    return _loaded(stream_home)


@pytest.fixture(scope="module")
def redis_home(stream_home, redis_server):
    return _loaded(stream_home.with_(online_store="redis", redis_url=f"{redis_server}/7"))


def _online(settings, refs: list[str], items: list[str]) -> dict:
    from ranker.features.store import feature_store

    store = feature_store(settings)
    return store.get_online_features(features=refs, entity_rows=[{"item_id": i} for i in items]).to_dict()


def _sold_update(items: list[str], ts_us: int, value: int = 1) -> dict:
    import pyarrow as pa

    n = len(items)
    return {
        "listing_fv": pa.table(
            {
                "item_id": pa.array(items, pa.string()),
                "event_timestamp": pa.array([ts_us] * n, pa.timestamp("us", tz="UTC")),
                "is_sold": pa.array([value] * n, pa.int64()),
            }
        )
    }


@pytest.mark.parametrize("home", ["sqlite_home", pytest.param("redis_home", marks=pytest.mark.redis)])
def test_the_writer_writes_feasts_layout_keeps_other_fields_and_never_overwrites_a_newer_value(home, request):
    import pandas as pd

    from ranker.streaming.writer import OnlineWriter

    settings = request.getfixturevalue(home)
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    active = listings[listings.sold_at.isna()].item_id.astype(str).tolist()
    items = active[:3] if home == "sqlite_home" else active[3:6]
    refs = ["listing_fv:is_sold", "listing_fv:price", "listing_fv:category"]
    before = _online(settings, refs, items)
    assert before["is_sold"] == [0, 0, 0]
    now_us = time.time_ns() // 1000
    writer = OnlineWriter(settings)
    stats = writer.write(_sold_update(items, now_us))
    assert (stats.written, stats.skipped_not_newer) == (3, 0)
    after = _online(settings, refs, items)
    assert after["is_sold"] == [1, 1, 1]
    assert after["price"] == before["price"] and after["category"] == before["category"]  # untouched fields
    older = writer.write(_sold_update(items, now_us - 1_000_000, value=0))
    assert (older.written, older.skipped_not_newer) == (0, 3)
    assert _online(settings, refs, items)["is_sold"] == [1, 1, 1]
    same = writer.write(_sold_update(items[:1], now_us, value=1))  # a replay rewrites the same value
    assert (same.written, same.skipped_not_newer) == (1, 0)
    fresh = writer.write(_sold_update(["never-seen-item"], now_us))  # a new entity: the other fields are null
    assert fresh.written == 1
    got = _online(settings, refs, ["never-seen-item"])
    assert got["is_sold"] == [1] and got["price"] == [None]
    writer.close()


def _raw_online_rows(settings, view: str, items: list[str]):
    """The stored bytes of these items in the view: sqlite rows or Redis hashes."""
    import sqlite3

    from ranker.features.feast_compat import sqlite_path, sqlite_table, string_entity_keys
    from ranker.features.store import feature_store

    store = feature_store(settings)
    fv = store.get_feature_view(view)
    if settings.online_store == "redis":
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        keys = string_entity_keys(["item_id"], [items], store.project.encode())
        return [client.hgetall(k) for k in keys]
    keys = string_entity_keys(["item_id"], [items], b"")
    with sqlite3.connect(sqlite_path(store.config)) as conn:
        table = sqlite_table(store.project, fv)
        q = f'SELECT entity_key, feature_name, value, value_text, event_ts FROM "{table}" WHERE entity_key IN (?, ?)'
        return sorted(conn.execute(q, keys).fetchall())


@pytest.mark.parametrize("home", ["sqlite_home", pytest.param("redis_home", marks=pytest.mark.redis)])
def test_the_writer_stores_the_same_bytes_as_feasts_write_to_online_store(home, request):
    import pandas as pd
    import pyarrow as pa

    from ranker.features.store import feature_store
    from ranker.streaming.writer import OnlineWriter

    settings = request.getfixturevalue(home)
    store = feature_store(settings)
    fv = store.get_feature_view("listing_fv")
    names = [f.name for f in fv.features]
    items = ["pin-a", "pin-b"] if home == "sqlite_home" else ["pin-c", "pin-d"]
    ts = pd.Timestamp("2026-11-30 10:00:00.250000", tz="UTC")
    df = pd.DataFrame(
        {
            "item_id": items,
            "event_timestamp": [ts, ts],
            "seller_id": ["s1", "s2"],
            "category": ["dresses", "shoes"],
            "brand": ["zara", None],
            "size": ["M", "40"],
            "title": ["red dress", "boots"],
            "price": pa.array([12.5, 30.1], pa.float32()).to_pandas(),
            "discount_pct": pa.array([0.5, 0.25], pa.float32()).to_pandas(),
            "condition_score": [3, 4],
            "listing_created_epoch": [1_780_000_000, 1_780_000_100],
            "is_sold": [0, 1],
        }
    )
    assert sorted(df.columns[2:]) == sorted(names)
    store.write_to_online_store("listing_fv", df)
    feasts = _raw_online_rows(settings, "listing_fv", items)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.set_column(table.schema.get_field_index("price"), "price", table.column("price").cast(pa.float32()))
    stats = OnlineWriter(settings).write({"listing_fv": table})
    assert (stats.written, stats.skipped_not_newer) == (2, 0)  # equal timestamps are rewritten
    assert _raw_online_rows(settings, "listing_fv", items) == feasts


# --- processor ----------------------------------------------------------------------------------------


def _clicks(n: int, *, items: int, users: int = 7, seed: int = 3, t0: int = T0) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [
        _event(i, item=f"sx-i{rng.randrange(items)}", user=f"sx-u{rng.randrange(users)}", ts=t0 + i * 1000)
        for i in range(n)
    ]


def _expected_clicks(rows: list[dict]) -> dict[str, int]:
    seen, out = set(), {}
    for r in rows:
        if r["type"] == "event" and r["event_type"] == "click" and r["event_id"] not in seen:
            seen.add(r["event_id"])
            out[r["item_id"]] = out.get(r["item_id"], 0) + 1
    return out


def _online_clicks(settings, items: list[str]) -> dict[str, int | None]:
    got = _online(settings, ["item_stats_fv:item_clicks_1d"], items)
    return dict(zip(items, got["item_clicks_1d"], strict=True))


def _last_offsets(per_partition_rows: dict[int, int], per_message: int, extra: dict[int, int]) -> dict[int, int]:
    return {p: -(-rows // per_message) + extra.get(p, 0) - 1 for p, rows in per_partition_rows.items()}


def test_the_processor_applies_dedups_checkpoints_and_appends_what_it_wrote_offline(sqlite_home, stream):
    import pandas as pd
    import pyarrow.parquet as pq

    from ranker.streaming.processor import Processor
    from ranker.streaming.producer import Producer
    from ranker.streaming.state import load_checkpoint
    from tests.stream_state import CountingState

    broker, name, n = stream
    settings = sqlite_home.with_(stream_name=name, stream_partitions=n, stream_checkpoint_s=0.2)
    rows = _clicks(300, items=20)
    rows += rows[:25]  # a producer's retry: the same events again
    rows.append({"type": "listing", "change": "sold", "item_id": "sx-i3", "timestamp": T0 + 999_000})
    stats = Producer(broker, name, n, records_per_message=40).send(rows)
    broker.publish(name, 0, [b"{not json", encode([{"type": "rating"}])])
    last = _last_offsets(stats.per_partition, 40, {0: 2})
    summaries = []
    for k in range(n):
        processor = Processor(settings, k, broker=broker, state_class=CountingState, batch_messages=3)
        summaries.append(processor.run(until_offset=last[k], max_seconds=30))
        assert summaries[-1]["offset"] == last[k]
        assert load_checkpoint(settings.stream_dir, name, k, n).offset == last[k]
        metrics = _samples(processor.metrics.registry)
        labels = (("partition", str(k)), ("stream", name))
        assert metrics[("ranker_stream_freshness_seconds_count", *labels)] == summaries[-1]["records"] > 0
        assert metrics[("ranker_stream_offset", *labels)] == last[k]
        assert metrics[("ranker_stream_dropped_total", *labels[:1], ("reason", "duplicate"), labels[1])] > 0
    items = [f"sx-i{i}" for i in range(20)]
    assert _online_clicks(settings, items) == {i: _expected_clicks(rows).get(i) for i in items}
    assert _online(settings, ["listing_fv:is_sold"], ["sx-i3"])["is_sold"] == [1]
    dropped = sum((Counter(s["dropped"]) for s in summaries), Counter())
    assert dropped == {"duplicate": 50, "bad_json": 1, "unknown_type": 1}  # each duplicate once per route
    # what was online, appended offline at each checkpoint: its last value per item is the online one
    files = sorted((settings.realtime_dir / "item_stats_fv").glob(f"stream-{name}-p*.parquet"))
    assert files and all(f.name.startswith((f"stream-{name}-p0-", f"stream-{name}-p1-")) for f in files)
    offline = pd.concat([pq.read_table(f).to_pandas() for f in files])
    latest = offline.sort_values(["event_timestamp", "item_clicks_1d"]).groupby("item_id").item_clicks_1d.last()
    assert latest.to_dict() == _expected_clicks(rows)
    # a restart resumes after the checkpoint: nothing is applied twice
    again = Processor(settings, 0, broker=broker, state_class=CountingState).run(idle_exit_s=0.3)
    assert again["resumed_from"] == last[0] + 1 and again.get("records", 0) == 0
    assert _online_clicks(settings, items) == {i: _expected_clicks(rows).get(i) for i in items}


def _samples(registry) -> dict[tuple, float]:
    """Prometheus samples as {(name, *sorted label pairs): value}."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


def test_the_metrics_port_serves_the_processors_metrics():
    import urllib.request

    from ranker.streaming.metrics import StreamMetrics

    metrics = StreamMetrics("s", 0)
    metrics.freshness.observe(0.02)
    metrics.dropped("late", 3)
    port = _closed_port()
    metrics.serve(port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'ranker_stream_freshness_seconds_bucket{le="0.025",partition="0",stream="s"} 1.0' in text
    assert 'ranker_stream_dropped_total{partition="0",reason="late",stream="s"} 3.0' in text


def test_one_processor_per_partition_and_host(sqlite_home, stream):
    from ranker.streaming.errors import PartitionBusy, StreamError
    from ranker.streaming.processor import Processor
    from ranker.streaming.state import PartitionLock
    from tests.stream_state import CountingState

    broker, name, n = stream
    settings = sqlite_home.with_(stream_name=name, stream_partitions=n)
    with PartitionLock(settings.stream_dir, name, 1):
        with pytest.raises(PartitionBusy, match="one processor per partition"):
            Processor(settings, 1, broker=broker, state_class=CountingState).run(idle_exit_s=0.1)
    with pytest.raises(StreamError, match="not a partition of 2"):
        Processor(settings, 2, broker=broker, state_class=CountingState)


def test_a_lock_left_to_a_killed_processors_checkpoint_writer_is_waited_for(tmp_path):
    """A processor's forked checkpoint writer shares its lock; after SIGKILL the lock outlives the
    processor (whose pid is in the file) until the writer is done: a restart waits, then takes it."""
    import fcntl
    import os
    import subprocess
    import threading

    from ranker.streaming.state import PartitionLock

    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / "s-p0.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(dead.pid).encode())
    released = threading.Timer(0.3, lambda: os.close(fd))
    released.start()
    started = time.monotonic()
    with PartitionLock(tmp_path, "s", 0):
        assert time.monotonic() - started >= 0.25
        assert path.read_text() == str(os.getpid())
    released.join()


def _stream_env(settings, **extra) -> dict:
    import os

    from tests.conftest import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANKER_", "REDIS_"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        RANKER_HOME=str(settings.home),
        RANKER_ONLINE_STORE=settings.online_store,
        REDIS_URL=settings.redis_url,
        RANKER_STREAM_URL=settings.stream_url,
        RANKER_STREAM_NAME=settings.stream_name,
        RANKER_STREAM_PARTITIONS=str(settings.stream_partitions),
        RANKER_STREAM_CHECKPOINT_S=str(settings.stream_checkpoint_s),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_partition(settings, partition: int, *args: str):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pipelines.cli", "stream", "run", "--partition", str(partition)]
    cmd += ["--state-class", "tests.stream_state:CountingState", *args]
    return subprocess.Popen(cmd, env=_stream_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stderr_lines(proc) -> list[str]:
    """The process's stderr lines as they come (read by a thread)."""
    import threading

    lines: list[str] = []

    def read() -> None:
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(condition, deadline_s: float, what: str, proc=None):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"the processor exited ({proc.returncode}) before {what}: {proc.stderr.read().decode()[-2000:]}"
            )
        time.sleep(0.02)  # polling a condition with a deadline
    pytest.fail(f"timed out waiting for {what}")


# --- CLI ----------------------------------------------------------------------------------------------


def _cli(settings, *args: str, **env):
    from click.testing import CliRunner

    from pipelines import cli

    cli._register()
    return CliRunner().invoke(cli.cli, list(args), env=_stream_env(settings, **env), catch_exceptions=False)


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_bad_stream_arguments_exit_2_with_one_line(stream_home, tmp_path):
    settings = stream_home.with_(stream_url=f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F")
    assert "not found" in _one_error_line(_cli(settings, "stream", "publish", str(tmp_path / "nope.parquet")))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert "neither events" in _one_error_line(_cli(settings, "stream", "publish", str(bad)))
    events = tmp_path / "events.csv"
    events.write_text("event_id,event_type,timestamp,user_id,item_id,surface,request_id,position,query\n")
    events.write_text(events.read_text() + "e1,click,not-a-time,u1,i1,search,r1,1,\n")
    assert "events.timestamp" in _one_error_line(_cli(settings, "stream", "publish", str(events)))
    assert "not reachable" in _one_error_line(_cli(settings, "stream", "create"))
    line = _one_error_line(_cli(settings, "stream", "run", "--partition", "7", RANKER_STREAM_PARTITIONS="4"))
    assert "not a partition of 4" in line
    assert "RANKER_STREAM_PARTITIONS" in _one_error_line(
        _cli(settings, "stream", "create", RANKER_STREAM_PARTITIONS="0")
    )
    usage = _cli(settings, "stream", "publish", str(events), "--rate", "0")
    assert usage.exit_code == 2 and "Invalid value for '--rate'" in usage.output


def test_publish_a_csv_then_run_the_partitions_from_the_cli(sqlite_home, stream, tmp_path):
    import json

    import pandas as pd

    broker, name, n = stream
    settings = sqlite_home.with_(stream_name=name, stream_partitions=n, stream_checkpoint_s=0.2)
    rows = _clicks(120, items=6, seed=9)
    for r in rows:
        r["item_id"] = r["item_id"].replace("sx-", "cli-")
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "type"} for r in rows])
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="us", utc=True).map(lambda t: t.isoformat())
    path = tmp_path / "events.csv"
    df.to_csv(path, index=False)
    published = _cli(settings, "stream", "publish", str(path), "--rate", "5000")
    assert published.exit_code == 0, published.output
    assert "published 120 rows" in published.output
    for k in range(n):
        ran = _cli(
            settings,
            "stream",
            "run",
            "--partition",
            str(k),
            "--idle-exit",
            "1",
            "--state-class",
            "tests.stream_state:CountingState",
            "--json",
        )
        assert ran.exit_code == 0, ran.output
        summary = json.loads(ran.output.strip().splitlines()[-1])
        assert summary["resumed_from"] == 0 and summary["dropped"] == {}
    items = [f"cli-i{i}" for i in range(6)]
    expected = {r["item_id"]: 0 for r in rows}
    for r in rows:
        expected[r["item_id"]] += 1
    assert _online_clicks(settings, items) == {i: expected.get(i) for i in items}


def test_with_the_window_state_the_stream_serves_what_the_backfill_computes(sqlite_home, stream):
    """The world's last 6 hours of events through the stream (2 partitions, the real WindowState):
    every touched listing's and user's online real-time values equal the backfill's row at their
    latest event, computed from the same events (0 mismatches)."""
    import numpy as np
    import pandas as pd

    from ranker.streaming.backfill import backfill_tables
    from ranker.streaming.processor import Processor
    from ranker.streaming.producer import Producer, event_rows

    broker, name, n = stream
    settings = sqlite_home.with_(stream_name=name, stream_partitions=n, stream_checkpoint_s=0.5)
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    end = events.timestamp.max()
    window = events[events.timestamp > end - pd.Timedelta(hours=6)].reset_index(drop=True)
    stats = Producer(broker, name, n).send(event_rows(window))
    last = _last_offsets(stats.per_partition, 200, {})
    for k in range(n):
        summary = Processor(settings, k, broker=broker).run(until_offset=last[k], max_seconds=60)
        assert summary["offset"] == last[k] and summary["dropped"] == {}
    expected = backfill_tables(window, listings)
    mismatches = 0
    for view, key in (("item_realtime_fv", "item_id"), ("user_session_fv", "user_id")):
        rows = expected[view].to_pandas().sort_values(["event_timestamp", "created"]).groupby(key).last()
        rows = rows.sample(min(len(rows), 150), random_state=0)
        assert len(rows) >= 20 and rows[rows.columns[0]].astype(bool).any(), view
        features = [c for c in rows.columns if c not in ("event_timestamp", "created")]
        online = _online_rows(settings, [f"{view}:{f}" for f in features], key, rows.index.tolist())
        for f in features:
            want, got = rows[f].to_numpy(), np.asarray(online[f], dtype=object)
            if rows[f].dtype.kind == "f":
                mismatches += int((~np.isclose(want.astype(float), got.astype(float), rtol=1e-6)).sum())
            else:
                mismatches += int(
                    sum(a != b and not (pd.isna(a) and b is None) for a, b in zip(want, got, strict=True))
                )
    assert mismatches == 0


def _online_rows(settings, refs: list[str], key: str, ids: list[str]) -> dict:
    from ranker.features.store import feature_store

    store = feature_store(settings)
    return store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()


def test_simulate_publishes_the_simulated_marketplace_live(sqlite_home, stream):
    broker, name, n = stream
    settings = sqlite_home.with_(stream_name=name, stream_partitions=n)
    before = time.time_ns() // 1000
    result = _cli(settings, "stream", "simulate", "--rate", "2000", "--limit", "300")
    assert result.exit_code == 0, result.output
    assert "published 300 rows" in result.output
    got = []
    for k in range(n):
        consumer = broker.consumer(name, k, 0)
        for m in _drain(consumer, 1, deadline_s=10):
            records, rejects = parse(m.body, k, n)
            assert not rejects
            got += records
        consumer.close()
    assert got and all(r.ts_us >= before for r in got)  # event time = the send time
    assert {r.kind for r in got} <= {"event", "listing"}


@pytest.mark.parametrize("home", ["sqlite_home", pytest.param("redis_home", marks=pytest.mark.redis)])
def test_a_tombstone_reads_as_missing_on_both_paths(home, request):
    """An expired entity's tombstone (every feature null, windows._tombstones) written by the writer:
    get_online_features returns nulls for the view, and the scorer's fast path gives the same matrix
    bit for bit as Feast's (the features' defaults, as for a listing the stream never saw)."""
    import numpy as np
    import pandas as pd

    from ranker.features.reference import feast_reference
    from ranker.features.store import feature_store, service_spec
    from ranker.serving.features import OnlineFeatures
    from ranker.streaming.windows import ITEM_FEATURES, ITEM_VIEW, _tombstones
    from ranker.streaming.writer import OnlineWriter

    settings = request.getfixturevalue(home)
    realtime = pd.read_parquet(settings.features_dir / "realtime" / ITEM_VIEW)
    latest = realtime.sort_values(["event_timestamp", "created"]).drop_duplicates("item_id", keep="last")
    latest = latest.set_index("item_id")
    live = latest[latest.item_impressions_24h.notna()]
    items = live.index[:4].tolist() if home == "sqlite_home" else live.index[4:8].tolist()
    refs = [f"{ITEM_VIEW}:{name}" for name, _ in ITEM_FEATURES]
    before = _online(settings, refs, items)
    assert all(v is not None for v in before["item_impressions_24h"]), (items, before)
    # Later than anything another test wrote into the shared Redis database (a newer row would rightly
    # win over the tombstone): 2100-01-01.
    stamp = 4_102_444_800 * 10**6
    writer = OnlineWriter(settings)
    stats = writer.write({ITEM_VIEW: _tombstones(ITEM_VIEW, [(i, stamp) for i in items], stamp)})
    writer.close()
    assert stats.written == len(items)
    after = _online(settings, refs, items)
    assert all(after[name] == [None] * len(items) for name, _ in ITEM_FEATURES)
    store = feature_store(settings)
    spec = service_spec(store, "search_ranker_v2")
    req = dict(user_id="u1", item_ids=[*items, "never-seen-item"], query="dress", request_ts=stamp // 10**6)
    with OnlineFeatures(settings, service="search_ranker_v2", timeout_s=5.0) as online:
        got = online.fetch(**req)
    want = feast_reference(store, spec, **req)
    assert got.matrix.tobytes() == want.matrix.tobytes()
    col = spec.features.index("item_impressions_24h")
    np.testing.assert_array_equal(got.matrix[: len(items), col], got.matrix[len(items), col])  # the default


@pytest.mark.parametrize("home", ["sqlite_home", pytest.param("redis_home", marks=pytest.mark.redis)])
def test_a_rerun_materialize_never_puts_back_an_older_value_than_the_streams(home, request):
    """The stream marks listings sold after the batch snapshot; a materialize rerun (full load) of the
    same snapshot skips them instead of putting the older is_sold = 0 back (Feast's own sqlite write
    would)."""
    import pandas as pd

    from ranker.features.materialize import materialize
    from ranker.streaming.writer import OnlineWriter

    settings = request.getfixturevalue(home)
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    active = listings[listings.sold_at.isna()].item_id.astype(str).tolist()
    items = active[10:13] if home == "sqlite_home" else active[13:16]
    refs = ["listing_fv:is_sold", "listing_fv:price"]
    assert _online(settings, refs, items)["is_sold"] == [0, 0, 0]
    writer = OnlineWriter(settings)
    writer.write(_sold_update(items, time.time_ns() // 1000))
    writer.close()
    summary = materialize(settings, full=True)
    after = _online(settings, refs, items)
    assert after["is_sold"] == [1, 1, 1]
    assert summary["views"]["listing_fv"]["rows"] <= len(listings) - len(items)  # those three were skipped
