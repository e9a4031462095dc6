"""Redis Cluster hash slots of Feast's online keys, and the cluster's slot map.

A key's slot is CRC16 (XMODEM) of the key modulo 16384, over the hash tag (the bytes between the
first ``{`` and the next ``}``) when the key has a non-empty one: Redis's own rule. Feast's keys are
the serialized entity key + the project and carry no tag on purpose, but an item id holding braces
makes one by accident, so the rule is applied in full. The kernel computes the slots of a whole
batch of keys from one concatenated buffer (no Python work per key); ``tests/test_redis_cluster.py``
pins it to ``redis.crc.key_slot``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SLOTS = 16384


def _crc16_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint16)
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table[i] = crc & 0xFFFF
    return table


_TABLE = _crc16_table()


@njit(cache=True, nogil=True)
def _slots(buf, offsets, lengths, table, out):
    for k in range(len(offsets)):
        start, stop = offsets[k], offsets[k] + lengths[k]
        # Redis: hash only the tag between the first '{' and the next '}' when it is non-empty
        for i in range(start, stop):
            if buf[i] == 123:  # '{'
                for j in range(i + 1, stop):
                    if buf[j] == 125:  # '}'
                        if j > i + 1:
                            start, stop = i + 1, j
                        break
                break
        crc = 0
        for i in range(start, stop):
            crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ buf[i]) & 0xFF]
        out[k] = crc % 16384


def key_slots(keys: list[bytes]) -> np.ndarray:
    """The cluster hash slot of each key (int64), by Redis's rule (module doc)."""
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    offsets = np.zeros(len(keys), dtype=np.int64)
    if len(keys) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    out = np.empty(len(keys), dtype=np.int64)
    if keys:
        _slots(np.frombuffer(b"".join(keys), dtype=np.uint8), offsets, lengths, _TABLE, out)
    return out


def slot_map(replies: list) -> tuple[list[tuple[str, int]], np.ndarray]:
    """The masters and, per slot, the index of the master serving it (-1: no master) from a raw
    ``CLUSTER SLOTS`` reply (``[start, end, [host, port, id], replicas...]`` per range)."""
    nodes: list[tuple[str, int]] = []
    owner = np.full(SLOTS, -1, dtype=np.int64)
    for entry in replies:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        address = (host or "127.0.0.1", int(master[1]))
        if address not in nodes:
            nodes.append(address)
        owner[start : end + 1] = nodes.index(address)
    return nodes, owner
