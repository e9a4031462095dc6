"""The streaming half end to end (issue 16), with real processes and services: a processor killed
by SIGKILL mid-stream and restarted; a sold event removing a listing from a live scorer; the broker
going down (a proxy in front of the machine's RabbitMQ is closed) while the processor backs off and
the scorer keeps serving. Skips, saying why, without RabbitMQ or redis-server."""

from __future__ import annotations

import time
import uuid

import pytest

from tests import test_streaming as ts
from tests.test_streaming import (
    _clicks,
    _expected_clicks,
    _online_clicks,
    _run_partition,
    _stderr_lines,
    _wait_for,
)

rabbitmq = ts.rabbitmq  # fixtures shared with the transport tests
stream_home = ts.stream_home


@pytest.mark.redis
def test_a_processor_killed_mid_stream_and_restarted_ends_with_the_uninterrupted_state(
    stream_home, redis_server, rabbitmq
):
    """SIGKILL while the producer is publishing, restart: the online state equals the brute-force
    count (what an uninterrupted run writes): 0 lost, 0 counted twice; SIGTERM then exits 0."""
    import json
    import signal
    import threading

    from ranker.streaming.broker import RabbitMQBroker
    from ranker.streaming.producer import Producer
    from ranker.streaming.state import load_checkpoint

    name = f"test-s1-kill-{uuid.uuid4().hex[:8]}"
    settings = stream_home.with_(
        online_store="redis",
        redis_url=f"{redis_server}/8",
        stream_url=rabbitmq,
        stream_name=name,
        stream_partitions=1,
        stream_checkpoint_s=0.3,
    )
    broker = RabbitMQBroker(rabbitmq)
    broker.create(name, 1)
    try:
        rows = _clicks(3000, items=40, seed=5)
        producer = Producer(broker, name, 1, records_per_message=10)
        published: list = []
        publisher = threading.Thread(target=lambda: published.append(producer.publish(rows, rate=1500.0)))
        proc = _run_partition(settings, 0)
        log = _stderr_lines(proc)
        _wait_for(lambda: any("consuming" in line for line in log), 120, "the processor to subscribe", proc)
        publisher.start()  # while the processor consumes: it is killed mid-stream
        ckpt = lambda: load_checkpoint(settings.stream_dir, name, 0, 1)  # noqa: E731
        killed_at = _wait_for(lambda: (c := ckpt()) and c.offset >= 60 and c, 60, "a checkpoint past offset 60", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        publisher.join(timeout=60)
        last = published[0].messages - 1
        restarted = _run_partition(settings, 0, "--json")
        log = _stderr_lines(restarted)
        _wait_for(lambda: any("consuming" in line for line in log), 120, "the processor to resume", restarted)
        _wait_for(lambda: (c := ckpt()) and c.offset == last, 60, "the last offset checkpointed", restarted)
        restarted.send_signal(signal.SIGTERM)
        out = restarted.stdout.read()
        restarted.wait(timeout=30)
        assert restarted.returncode == 0, "".join(log)[-2000:]
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert summary["resumed_from"] >= killed_at.offset + 1  # resumed from its last checkpoint
        assert summary["records"] > 0  # killed mid-stream: the restart had work left
        items = [f"sx-i{i}" for i in range(40)]
        expected = _expected_clicks(rows)
        assert _online_clicks(settings, items) == {i: expected.get(i) for i in items}
    finally:
        broker.delete(name, 1)
        broker.close()


class _Proxy:
    """A TCP proxy on a fixed loopback port in front of the broker: ``stop`` closes the listener and
    every connection through it (the broker is down, as far as its clients can tell), ``start``
    listens again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket

        self.upstream = upstream
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._sockets: list = []
        self._listener = None

    def start(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:  # stopped meanwhile
                client.close()
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        import socket

        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._sockets = []


@pytest.mark.redis
def test_a_sold_event_removes_the_listing_from_a_live_scorer_and_survives_a_broker_outage(
    stream_home, redis_server, rabbitmq, tmp_path
):
    """Publish a sale: the next rankings of a live scorer drop the listing. Then the broker goes away:
    the processor retries with back-off, the scorer keeps serving; a sale published meanwhile
    reaches the scorer once the broker is back."""
    import json
    import threading

    import pandas as pd

    from api.app import create_app
    from ranker.features.materialize import materialize
    from ranker.registry import Registry
    from ranker.streaming.broker import RabbitMQBroker
    from ranker.streaming.processor import Processor
    from ranker.streaming.producer import Producer
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model
    from tests.stream_state import CountingState

    name = f"test-s1-sold-{uuid.uuid4().hex[:8]}"
    settings = stream_home.with_(
        online_store="redis",
        redis_url=f"{redis_server}/9",
        stream_url=rabbitmq,
        stream_name=name,
        stream_partitions=1,
        stream_checkpoint_s=0.5,
        registry_uri=(tmp_path / "registry").as_uri(),
    )
    materialize(settings, full=True)
    build_dataset(settings, DatasetOptions(surface="recs", chunk_rows=50_000))
    model = train_model(settings, TrainOptions(surface="recs"))
    registry = Registry.from_settings(settings)
    registry.publish(model)
    card = json.loads((model / "card.json").read_text())
    registry.promote(card["name"], card["version"], stage="production", gate=None, force=True, reason="test")

    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    live = listings[listings.sold_at.isna()].item_id.astype(str).sample(20, random_state=1).tolist()
    broker = RabbitMQBroker(rabbitmq)
    broker.create(name, 1)
    proxy = _Proxy(("127.0.0.1", 5672))
    proxy.start()
    stop = threading.Event()
    processor = Processor(
        settings.with_(stream_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"),
        0,
        state_class=CountingState,
        stop=stop,
    )
    runner = threading.Thread(target=processor.run, daemon=True)
    app = create_app(test_config={"RANKER_RELOAD_INTERVAL_S": 0, "RANKER_FEATURE_TIMEOUT_MS": 5000}, settings=settings)
    client = app.test_client()
    ts_request = pd.Timestamp("2026-10-08T12:00:00", tz="UTC").timestamp()

    def ranked() -> list[str]:
        body = {"surface": "recs", "user_id": "u000001", "items": live, "context": {"timestamp": ts_request}}
        response = client.post("/v1/rank", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return [i["item_id"] for i in response.get_json()["items"]]

    def sell(item: str) -> float:
        Producer(broker, name, 1).send(
            [{"type": "listing", "change": "sold", "item_id": item, "timestamp": time.time_ns() // 1000}]
        )
        return time.monotonic()

    try:
        runner.start()
        assert sorted(ranked()) == sorted(live)
        sent = sell(live[0])
        _wait_for(lambda: live[0] not in ranked(), 20, "the sold listing to leave the ranking")
        delay = time.monotonic() - sent
        assert sorted(ranked()) == sorted(live[1:])
        print(f"sold -> gone from the ranking in {delay * 1000:.0f} ms")

        proxy.stop()  # the broker is down for the processor
        _wait_for(lambda: processor.retries >= 2, 30, "the processor to retry")
        sell(live[1])  # published while the processor cannot read
        for _ in range(5):
            assert live[1] in ranked()  # the scorer keeps serving what is online
        proxy.start()
        _wait_for(lambda: live[1] not in ranked(), 30, "the sale published during the outage")
        assert sorted(ranked()) == sorted(live[2:])
    finally:
        stop.set()
        runner.join(timeout=30)
        proxy.stop()
        app.extensions["ranker"].close()
        broker.delete(name, 1)
        broker.close()
    assert not runner.is_alive()
