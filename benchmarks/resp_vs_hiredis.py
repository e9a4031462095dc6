"""The scorer's hand-written Redis reader (raw commands written by a numba kernel, replies parsed off
the socket by numba kernels: ranker.serving.redis_reader) against the library way: a redis-py
pipeline with the hiredis parser (HMGET/HGETALL of the same keys and fields), its replies decoded
by the same numpy Value decoding the sqlite reader uses. Both are plugged into the same
OnlineFeatures, so a full fetch differs only in the store reads; the two alternate request by
request (order swapped every other request) and every answer is checked bit for bit.

    make demo    # once
    RANKER_HOME=$PWD .venv/bin/python benchmarks/resp_vs_hiredis.py [--requests 400] [--candidates 200]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import _stack


class HiredisReader:
    """The reads of a round through a redis-py pipeline (hiredis parses the replies)."""

    def __init__(self, url: str, key_suffix: bytes) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5.0)
        self.suffix = key_suffix
        self.errors = (redis.RedisError, OSError)
        self.name = f"Redis (redis-py + hiredis) at {url}"

    def read(self, reads: list, deadline: float | None = None) -> list:
        from ranker.serving.reads import Block
        from ranker.serving.values import decode_numbers, decode_strings

        pipe = self.client.pipeline(transaction=False)
        for keys, fs in reads:
            for key in keys.serialized(self.suffix):
                if fs.hgetall:
                    pipe.hgetall(key)
                else:
                    pipe.hmget(key, fs.redis_names)
        replies = pipe.execute()
        out, at = [], 0
        for keys, fs in reads:
            k = keys.n_keys
            cells: list = []
            for reply in replies[at : at + k]:
                cells.extend([reply.get(name) for name in fs.redis_names] if fs.hgetall else reply)
            at += k
            grid = np.array(cells, dtype=object).reshape(k, fs.n)
            nums = grid[:, : fs.n_num]
            text = np.empty((k, fs.n - fs.n_num), dtype=object)
            if text.size:
                text[:] = np.array(decode_strings(grid[:, fs.n_num :].ravel().tolist()), dtype=object).reshape(
                    text.shape
                )
            values = decode_numbers(nums.ravel().tolist()).reshape(nums.shape)
            out.append(Block(values, nums != None, text))  # noqa: E711 - element-wise on an object array
        return out

    def send(self, reads: list, deadline: float | None = None):
        from ranker.serving.reads import Pending

        return Pending(reads, [], deadline)  # a pipeline's execute() writes and waits in one call

    def receive(self, pending) -> list:
        return self.read(pending.reads, pending.deadline)

    def abandon(self, pending) -> None:
        pass

    def close(self) -> None:
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="Timed requests per reader.")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from ranker.serving.features import OnlineFeatures

    print(_stack.machine_speed())
    with _stack.private_redis() as redis_url:
        settings = _stack.redis_settings(redis_url)
        service = "search_ranker_v1" if args.surface == "search" else "recs_ranker_v1"
        bodies = _stack.request_bodies(
            settings, surface=args.surface, candidates=args.candidates, n=args.requests + 20, seed=3
        )
        ours = OnlineFeatures(settings, service=service, timeout_s=5.0)
        library = OnlineFeatures(settings, service=service, timeout_s=5.0)
        library._backend = HiredisReader(settings.redis_url, library._project)
        readers = {"numba RESP kernels": ours, "redis-py + hiredis": library}
        samples: dict = {name: [] for name in readers}
        mismatches = 0
        for i, body in enumerate(bodies):
            request = dict(
                user_id=body["user_id"], item_ids=body["items"], query=body.get("query"), request_ts=int(time.time())
            )
            names = list(readers) if i % 2 == 0 else list(readers)[::-1]
            rows = {}
            for name in names:
                t0 = time.perf_counter()
                rows[name] = readers[name].fetch(**request)
                if i >= 20:  # warm-up: connections, caches, compiled kernels
                    samples[name].append((time.perf_counter() - t0) * 1000)
            a, b = (rows[n].matrix for n in readers)
            mismatches += not (np.array_equal(a, b, equal_nan=True) and a.tobytes() == b.tobytes())
        print(
            f"full fetch of {args.candidates} candidates ({service}, cache off), {args.requests} requests "
            f"each, alternating, Redis online store:"
        )
        for name, values in samples.items():
            print(f"  {name:<20} {_stack.summary(values)}")
        ratio = np.percentile(samples["redis-py + hiredis"], 50) / np.percentile(samples["numba RESP kernels"], 50)
        print(
            f"  redis-py + hiredis p50 / numba p50 = {ratio:.2f}; identical matrices on "
            f"{len(bodies) - mismatches} of {len(bodies)} requests"
        )
        ours.close()
        library.close()
    print(_stack.machine_speed())
    if mismatches:
        raise SystemExit(f"{mismatches} requests differ between the readers")


if __name__ == "__main__":
    main()
