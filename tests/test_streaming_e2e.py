"""The streaming half end to end (issue 16), with real processes and services: a processor killed
by SIGKILL mid-stream and restarted; a sold event removing a listing from a live scorer; the broker
going down (a proxy in front of the machine's RabbitMQ is closed) while the processor backs off and
the scorer keeps serving. Skips, saying why, without RabbitMQ or redis-server."""

from __future__ import annotations

import uuid

import pytest

from tests import test_streaming as ts
from tests.test_streaming import _clicks, _expected_clicks, _online_clicks, _run_partition, _wait_for

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
        publisher.start()
        ckpt = lambda: load_checkpoint(settings.stream_dir, name, 0, 1)  # noqa: E731
        killed_at = _wait_for(lambda: (c := ckpt()) and c.offset >= 60 and c, 60, "a checkpoint past offset 60", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        publisher.join(timeout=60)
        last = published[0].messages - 1
        restarted = _run_partition(settings, 0, "--json")
        _wait_for(lambda: (c := ckpt()) and c.offset == last, 60, "the last offset checkpointed", restarted)
        restarted.send_signal(signal.SIGTERM)
        out, err = restarted.communicate(timeout=30)
        assert restarted.returncode == 0, err.decode()[-2000:]
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert summary["resumed_from"] >= killed_at.offset + 1  # resumed from its last checkpoint
        items = [f"sx-i{i}" for i in range(40)]
        expected = _expected_clicks(rows)
        assert _online_clicks(settings, items) == {i: expected.get(i) for i in items}
    finally:
        broker.delete(name, 1)
        broker.close()
