"""The Redis Cluster online store: a real 3-master cluster on free loopback ports, materialized by
``ranker features materialize``'s writer, read by the scorer's fast path (ranker.serving.cluster_reader)
and compared bit for bit with Feast's ``get_online_features`` on the same cluster; a slot moved under
the reader (MOVED), a master killed (degraded answers, no exception but OnlineStoreUnavailable) and
restarted (answers recover)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from tests.test_online_features import _compare_random_requests, _Universe

pytestmark = pytest.mark.redis


def _cluster_port(rng: np.random.Generator) -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too (Redis's rule)."""
    while True:
        port = int(rng.integers(20000, 55535))
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


class Cluster:
    """Three cluster-enabled redis-servers (each in its own process group) made one cluster."""

    def __init__(self, root) -> None:
        self.server, self.cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if self.server is None or self.cli is None:
            pytest.skip("redis-server/redis-cli not installed: Redis Cluster tests need real servers")
        self.root = root
        rng = np.random.default_rng(os.getpid())  # distinct per run: parallel sessions on one host
        self.ports: list[int] = []
        while len(self.ports) < 3:
            port = _cluster_port(rng)
            if port not in self.ports:
                self.ports.append(port)
        self.procs: dict = {}

    def start(self, port: int) -> None:
        d = self.root / str(port)
        d.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                self.server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(d / "nodes.conf"),
                "--cluster-node-timeout",
                "1500",
                "--dir",
                str(d),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=open(d / "log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # noqa: SIM115
        )
        import redis

        until = time.monotonic() + 30
        while True:  # bounded poll: PING answers once the server accepts connections
            if self.procs[port].poll() is not None:
                pytest.fail(f"redis-server on {port} exited:\n" + (d / "log").read_text()[-2000:])
            try:
                if self.client(port).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > until:
                    pytest.fail(f"redis-server on {port} not ready within 30 s")

    def stop(self, port: int, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(port, None)
        if proc is not None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)

    def client(self, port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def wait_ok(self, ports=None, timeout_s: float = 60.0) -> None:
        """Poll CLUSTER INFO on every node until each reports cluster_state:ok (bounded)."""
        import redis

        until = time.monotonic() + timeout_s
        for port in ports or self.ports:
            while True:
                try:
                    info = self.client(port).execute_command("CLUSTER INFO")
                    state = info.get("cluster_state") if isinstance(info, dict) else None
                    if state == "ok" or b"cluster_state:ok" in (info if isinstance(info, bytes) else b""):
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > until:
                    pytest.fail(f"cluster node {port} not ok within {timeout_s}s")

    def create(self) -> None:
        for port in self.ports:
            self.start(port)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def raw(self, port: int, *args):
        """A command's reply as Redis sent it (no redis-py response callback)."""
        client = self.client(port)
        conn = client.connection_pool.get_connection()
        try:
            conn.send_command(*args)
            return conn.read_response()
        finally:
            client.connection_pool.release(conn)
            client.close()

    def node_ids(self) -> dict:
        """port -> node id."""
        out = {}
        for line in self.raw(self.ports[0], "CLUSTER", "NODES").decode().splitlines():
            node_id, address = line.split()[:2]
            out[int(address.split("@")[0].rsplit(":", 1)[1])] = node_id
        return out

    def close(self) -> None:
        for port in list(self.procs):
            self.stop(port)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        c.create()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def cluster_world(world, cluster):
    from ranker.features.materialize import materialize

    seeds = ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
    settings = world.with_(online_store="redis", redis_cluster=True, redis_url=f"redis://{seeds}")
    summary = materialize(settings, full=True)
    assert summary["rows"] > 0
    return settings


def test_key_slots_follow_redis():
    from redis.crc import key_slot

    from ranker.features.slots import key_slots

    rng = np.random.default_rng(7)
    keys = [bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8)) for _ in range(2000)]
    keys += [b"{user1}.a", b"a{}b", b"x{y}z{w}", b"{", b"}{a}", b"item_{42}\x01fashion_ranking"]
    assert key_slots(keys).tolist() == [key_slot(k) for k in keys]


def test_settings_read_the_cluster_mode():
    from ranker.config import ConfigError, Settings

    s = Settings.from_env(
        {
            "RANKER_ONLINE_STORE": "redis",
            "RANKER_REDIS_CLUSTER": "1",
            "REDIS_URL": "redis://10.0.0.1:7000,10.0.0.2:7001",
        }
    )
    assert s.redis_cluster and s.redis_seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert s.redis_connection_string == "10.0.0.1:7000,10.0.0.2:7001"
    assert Settings.from_env({"REDIS_URL": "redis+cluster://h:1"}).redis_cluster
    with pytest.raises(ConfigError, match="seed list"):
        Settings.from_env({"RANKER_ONLINE_STORE": "redis", "RANKER_REDIS_CLUSTER": "1", "REDIS_URL": "redis://h"})


def test_materialize_spreads_keys_over_every_master(cluster_world, cluster):
    sizes = [cluster.client(p).dbsize() for p in cluster.ports]
    assert all(n > 0 for n in sizes), sizes


def test_fetch_equals_feast_on_random_requests_cluster(cluster_world):
    from tests.test_online_features import REQUESTS_PER_SERVICE, SERVICES

    assert _compare_random_requests(cluster_world, seed=20261202) == len(SERVICES) * REQUESTS_PER_SERVICE


def _request(settings, seed: int) -> dict:
    universe = _Universe(settings, datetime.now(timezone.utc))
    return universe.request(np.random.default_rng(seed), "recs_ranker_v1")


def test_reader_follows_a_moved_slot(cluster_world, cluster):
    from ranker.features.feast_compat import string_entity_keys
    from ranker.features.slots import key_slots
    from ranker.serving.features import OnlineFeatures

    req = _request(cluster_world, 3)
    with OnlineFeatures(cluster_world, service="recs_ranker_v1", timeout_s=5.0) as online:
        before = online.fetch(**req)
        # move the slot of the first listing's key to another master, keys and all
        key = string_entity_keys(["item_id"], [[req["item_ids"][0]]], b"fashion_ranking")[0]
        slot = int(key_slots([key])[0])
        assert _move_slot(cluster, slot) >= 1
        refreshes = online._backend.refreshes
        after = online.fetch(**req)  # the reader's map still names the source: MOVED, refreshed, exact
        assert online._backend.refreshes > refreshes
        np.testing.assert_array_equal(after.matrix.view(np.uint32), before.matrix.view(np.uint32))
        np.testing.assert_array_equal(after.known, before.known)
        assert after.known[0]


def _move_slot(cluster, slot: int) -> int:
    """Move a hash slot, keys and all, from its master to another one; returns the keys moved."""
    ids = cluster.node_ids()
    source = next(p for p in cluster.ports if slot in _slots_of(cluster, p))
    target = next(p for p in cluster.ports if p != source)
    src, dst = cluster.client(source), cluster.client(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    moved = 0
    while True:
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
    for port in cluster.ports:
        cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    assert slot in _slots_of(cluster, target)
    return moved


def test_the_stream_writer_on_the_cluster_stores_what_it_stores_on_one_redis(cluster_world, cluster, redis_server):
    """The same events through the window state and the stream writer into the cluster (one script
    call per hash slot, one pipeline per master) and into one Redis: the same stored fields, with a
    slot moved under the writer midway (its map is stale: MOVED, refreshed, rewritten)."""
    import pyarrow.parquet as pq
    import redis
    from redis.cluster import RedisCluster

    from ranker.features.feast_compat import string_entity_keys
    from ranker.features.slots import key_slots
    from ranker.streaming.messages import encode, parse
    from ranker.streaming.producer import live_rows
    from ranker.streaming.windows import WindowState
    from ranker.streaming.writer import OnlineWriter

    rows = live_rows(cluster_world.raw_dir, now_us=1_900_000_000_000_000)[:4000]  # newer than the batch rows
    records, rejects = parse(encode(rows))
    assert records and not rejects
    single = cluster_world.with_(redis_cluster=False, redis_url=f"{redis_server}/7")
    redis.Redis.from_url(single.redis_url).flushdb()
    listings = pq.read_table(cluster_world.raw_dir / "listings.parquet")
    writers = {"cluster": OnlineWriter(cluster_world), "single": OnlineWriter(single)}
    states = {name: WindowState(300.0) for name in writers}
    for state in states.values():
        state.seed_listings(listings)
    project = writers["single"].project.encode()
    touched: set[tuple[str, str]] = set()  # (join key, entity)
    batches = [records[lo : lo + 400] for lo in range(0, len(records), 400)]
    for b, batch in enumerate(batches):
        if b == len(batches) // 2:
            key = string_entity_keys(["item_id"], [[batch[0].item_id]], project)[0]
            assert _move_slot(cluster, int(key_slots([key])[0])) >= 1
        stats = {}
        for name, writer in writers.items():
            updates = {v: t for v, t in states[name].apply(batch).updates.items() if t.num_rows}
            stats[name] = writer.write(updates).by_view
            for table in updates.values():
                join_key = table.column_names[0]
                touched.update((join_key, str(e)) for e in table.column(join_key).to_pylist())
        assert stats["cluster"] == stats["single"]
    assert writers["cluster"]._cluster.refreshes >= 1  # the moved slot was followed
    for writer in writers.values():
        writer.close()
    host, port = cluster_world.redis_seeds[0]
    on_cluster, on_one = RedisCluster(host=host, port=port), redis.Redis.from_url(single.redis_url)
    compared = 0
    for join_key, entity in sorted(touched):
        key = string_entity_keys([join_key], [[entity]], project)[0]
        want = on_one.hgetall(key)
        assert want, entity
        got = on_cluster.hgetall(key)
        assert {f: got.get(f) for f in want} == want, entity  # the cluster also holds the batch features
        compared += 1
    assert compared > 1000
    on_cluster.close()
    on_one.close()


def _slots_of(cluster, port: int) -> set:
    out: set = set()
    for start, end, master, *_replicas in cluster.raw(port, "CLUSTER", "SLOTS"):
        if int(master[1]) == port:
            out.update(range(int(start), int(end) + 1))
    return out


def test_master_down_degrades_within_the_budget_then_recovers(cluster_world, cluster):
    from ranker.features.materialize import materialize
    from ranker.serving.features import OnlineFeatures
    from ranker.serving.reads import OnlineStoreUnavailable

    req = _request(cluster_world, 5)
    budget_s = 0.5
    with OnlineFeatures(cluster_world, service="recs_ranker_v1", timeout_s=1.0) as online:
        want = online.fetch(**req)
        victim = cluster.ports[1]
        cluster.stop(victim, signal.SIGKILL)
        for _ in range(3):  # every answer within its budget: an OnlineStoreUnavailable, nothing else
            t0 = time.monotonic()
            with pytest.raises(OnlineStoreUnavailable):
                online.fetch(**req, deadline=t0 + budget_s)
            assert time.monotonic() - t0 < budget_s + 0.25
        assert not online.ping()
        cluster.start(victim)  # same node id (its nodes.conf), no data: --save "" and SIGKILL
        cluster.wait_ok()
        materialize(cluster_world, full=True)  # the job is rerunnable; the scorer was not restarted
        got = online.fetch(**req, deadline=time.monotonic() + 5.0)
        np.testing.assert_array_equal(got.matrix.view(np.uint32), want.matrix.view(np.uint32))
        assert online.ping()
