"""The compiled kernels of the Redis fast path (ranker.serving.resp): RESP replies parsed off a
buffer that arrives in arbitrary pieces, HGETALL replies matched by field name, and Feast ``Value``
messages decoded exactly as protobuf does."""

from __future__ import annotations

import numpy as np
import pytest

resp = pytest.importorskip("ranker.serving.resp")


def bulk(raw: bytes | None) -> bytes:
    return b"$-1\r\n" if raw is None else b"$%d\r\n%s\r\n" % (len(raw), raw)


def hmget_reply(cells: list) -> bytes:
    return b"*%d\r\n" % len(cells) + b"".join(bulk(c) for c in cells)


def hgetall_reply(pairs: dict) -> bytes:
    return b"*%d\r\n" % (2 * len(pairs)) + b"".join(bulk(k) + bulk(v) for k, v in pairs.items())


def parse(stream: bytes, widths, table_of, names=None, columns=None, pieces=None):
    """Feed ``stream`` in the given piece sizes (all at once by default); return (status, off, ln)."""
    if names is None:
        names, columns = resp.name_table([b"none"])
    widths = np.asarray(widths, dtype=np.int64)
    table_of = np.asarray(table_of, dtype=np.int64)
    off = np.zeros(int(widths.sum()), dtype=np.int64)
    ln = np.full(int(widths.sum()), -1, dtype=np.int64)
    state = np.zeros(3, dtype=np.int64)
    buf = np.frombuffer(stream, dtype=np.uint8)
    ends = np.cumsum(pieces) if pieces is not None else [len(stream)]
    status = resp.NEED_MORE
    for end in ends:
        status = resp.parse_replies(buf, int(min(end, len(stream))), widths, table_of, names, columns, off, ln, state)
        if status != resp.NEED_MORE:
            break
    return status, off, ln


def cells_of(stream: bytes, off, ln) -> list:
    return [None if n < 0 else stream[o : o + n] for o, n in zip(off.tolist(), ln.tolist(), strict=False)]


def test_hmget_replies_survive_any_split():
    rng = np.random.default_rng(3)
    replies = [
        [
            bytes(rng.integers(0, 256, rng.integers(0, 40)).astype(np.uint8)) if rng.random() > 0.2 else None
            for _ in range(4)
        ]
        for _ in range(30)
    ]
    replies[5][1] = b"\r\n$-1\r\n*4\r\n"  # protocol bytes inside a value are just bytes
    stream = b"".join(hmget_reply(r) for r in replies)
    want = [c for r in replies for c in r]
    for pieces in ([len(stream)], [1] * len(stream), list(rng.integers(1, 50, len(stream)))):
        status, off, ln = parse(stream, [4] * 30, [-1] * 30, pieces=pieces)
        assert status == resp.DONE
        assert cells_of(stream, off, ln) == want


def test_incomplete_stream_asks_for_more():
    stream = hmget_reply([b"abc", None]) * 2
    status, _off, _ln = parse(stream[:-3], [2, 2], [-1, -1])
    assert status == resp.NEED_MORE


def test_hgetall_picks_fields_by_name_and_leaves_absent_ones_nil():
    names, columns = resp.name_table([b"aaaa", b"bbbb", b"cccc"])
    stream = (
        hgetall_reply({b"_ts:listing_fv": b"\x08\x01", b"cccc": b"C", b"zzzz": b"other view", b"aaaa": b"A"})
        + hgetall_reply({})  # a hash that does not exist
        + hmget_reply([b"x"])
    )
    status, off, ln = parse(stream, [3, 3, 1], [0, 0, -1], names, columns, pieces=[7] * 40)
    assert status == resp.DONE
    assert cells_of(stream, off, ln) == [b"A", None, b"C", None, None, None, b"x"]


@pytest.mark.parametrize(
    ("stream", "status"),
    [
        (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", resp.ERROR_REPLY),
        (hmget_reply([b"a", b"b", b"c"]), resp.BAD_COUNT),
        (b":12\r\n", resp.BAD_TYPE),
        (b"*2\r\n:1\r\n$1\r\na\r\n", resp.BAD_TYPE),
    ],
)
def test_unexpected_replies_are_reported(stream, status):
    assert parse(stream, [2], [-1])[0] == status


def test_an_odd_hgetall_reply_is_reported():
    names, columns = resp.name_table([b"aaaa"])
    assert parse(b"*3\r\n" + bulk(b"aaaa") * 3, [1], [0], names, columns)[0] == resp.BAD_COUNT


def test_name_table_rejects_what_it_cannot_match():
    with pytest.raises(ValueError, match="4 bytes"):
        resp.name_table([b"_ts:fv"])
    with pytest.raises(ValueError, match="twice"):
        resp.name_table([b"aaaa", b"aaaa"])


def _random_values(rng, n: int):
    from feast.protos.feast.types.Value_pb2 import Value

    out = []
    for _ in range(n):
        kind = rng.integers(0, 9)
        if kind == 0:
            out.append(Value(float_val=float(np.float32(rng.normal() * 10.0 ** rng.integers(-5, 8)))))
        elif kind == 1:
            out.append(Value(double_val=float(rng.normal() * 1e12)))
        elif kind == 2:
            out.append(Value(int64_val=int(rng.integers(-(2**63), 2**63 - 1))))
        elif kind == 3:
            out.append(Value(int64_val=int(rng.integers(0, 300))))
        elif kind == 4:
            out.append(Value(int32_val=int(rng.integers(-(2**31), 2**31 - 1))))
        elif kind == 5:
            out.append(Value(bool_val=bool(rng.integers(0, 2))))
        elif kind == 6:
            out.append(Value())
        elif kind == 7:
            out.append(Value(string_val="12.5"))  # not a plain number: left to protobuf (slow path)
        else:
            out.append(None)  # field or hash missing
    return out


def test_numbers_decode_like_protobuf():
    rng = np.random.default_rng(11)
    values = _random_values(rng, 3000)
    stream = hmget_reply([None if v is None else v.SerializeToString() for v in values])
    status, off, ln = parse(stream, [len(values)], [-1])
    assert status == resp.DONE
    buf = np.frombuffer(stream, dtype=np.uint8)
    out = np.empty((len(values) // 3, 3))
    slow = np.empty(out.shape, dtype=np.bool_)
    grid = (off.reshape(-1, 3), ln.reshape(-1, 3))
    n_slow = resp.decode_numbers(buf, grid[0], grid[1], out, slow)
    assert n_slow == int(slow.sum()) > 0
    for v, got, is_slow in zip(values, out.ravel(), slow.ravel(), strict=False):
        kind = None if v is None else v.WhichOneof("val")
        if kind == "string_val":
            assert is_slow and np.isnan(got)
        else:
            assert not is_slow
            np.testing.assert_equal(got, np.nan if kind is None else float(getattr(v, kind)))
    # A strided block (some columns of a wider grid) decodes the same as the contiguous one.
    part = np.empty((out.shape[0], 2))
    resp.decode_numbers(buf, grid[0][:, 1:], grid[1][:, 1:], part, np.empty(part.shape, dtype=np.bool_))
    np.testing.assert_array_equal(part, out[:, 1:])


def test_sqlite_path_decodes_like_protobuf():
    """The sqlite store's cells (bytes objects) go through numpy decoding, not the kernels: the
    same values, and a number stored as a string is coerced like feature_matrix does."""
    from feast.protos.feast.types.Value_pb2 import Value

    from ranker.serving.values import decode_numbers, decode_strings

    values = _random_values(np.random.default_rng(1), 2000)
    got = decode_numbers([None if v is None else v.SerializeToString() for v in values])
    for v, g in zip(values, got, strict=False):
        kind = None if v is None else v.WhichOneof("val")
        np.testing.assert_equal(
            g, 12.5 if kind == "string_val" else np.nan if kind is None else float(getattr(v, kind))
        )
    words = ["", "dresses", "s00001", "größe M", "x" * 200, None]
    assert decode_strings([b"" if w is None else Value(string_val=w).SerializeToString() for w in words]) == words
    coerced = decode_numbers([Value(string_val="abc").SerializeToString()])
    np.testing.assert_equal(coerced, [np.nan])


def test_strings_span_and_group_exactly():
    from feast.protos.feast.types.Value_pb2 import Value

    words = ["", "dresses", "größe M", "x" * 300, None, "dresses", "größe M", "x" * 299 + "y", "x" * 300]
    cells = [None if w is None else Value(string_val=w).SerializeToString() for w in words]
    cells.append(b"")  # an empty message: missing
    cells.append(Value(int64_val=3).SerializeToString())  # not a string: left to protobuf
    stream = hmget_reply(cells)
    status, off, ln = parse(stream, [len(cells)], [-1])
    assert status == resp.DONE
    buf = np.frombuffer(stream, dtype=np.uint8)
    start = np.empty((1, len(cells)), dtype=np.int64)
    stop = np.empty_like(start)
    resp.string_spans(buf, off.reshape(1, -1), ln.reshape(1, -1), start, stop)
    start, stop = start.ravel(), stop.ravel()
    got = [stream[a:b].decode() if a >= 0 else None for a, b in zip(start.tolist(), stop.tolist(), strict=False)]
    assert got[: len(words)] == words
    assert start[-2] == -1 and start[-1] == -2
    first = np.empty(len(cells), dtype=np.int64)
    resp.group_spans(buf, start, stop, first)
    assert first.tolist() == [0, 1, 2, 3, -1, 1, 2, 7, 3, -1, -2]
    # all texts in one decode: NUL-separated; a text holding a NUL makes the caller go one by one
    valid = np.flatnonzero(start >= 0)
    out = np.empty(int((stop[valid] - start[valid]).sum()) + len(valid), dtype=np.uint8)
    n = resp.gather_spans(buf, start[valid], stop[valid], out)
    assert out[:n].tobytes().decode().split("\x00") == [w for w in words if w is not None]
    nul = hmget_reply([Value(string_val="a\x00b").SerializeToString()])
    _status, o, ln = parse(nul, [1], [-1])
    a, b = np.empty((1, 1), dtype=np.int64), np.empty((1, 1), dtype=np.int64)
    nul_buf = np.frombuffer(nul, dtype=np.uint8)
    resp.string_spans(nul_buf, o.reshape(1, 1), ln.reshape(1, 1), a, b)
    assert resp.gather_spans(nul_buf, a.ravel(), b.ravel(), np.empty(8, dtype=np.uint8)) == -1


def test_warm_up_compiles_every_kernel():
    resp.warm_up()
    assert resp.parse_replies.signatures and resp.decode_numbers.signatures
    assert resp.string_spans.signatures and resp.group_spans.signatures and resp.gather_spans.signatures


@pytest.mark.parametrize("seed", range(4))
def test_commands_carry_feast_serialized_keys(seed):
    """The Redis path writes a round's commands with one kernel call (no Python object per key);
    every command must carry exactly the key Feast's serialization gives (the reference
    implementation, ``feast_compat.string_entity_keys`` + project), whatever the values: non-ASCII, empty,
    long, and a request value shared by every key of a read (user, query), written once per key."""
    from ranker.serving.plan import FieldSet as _FieldSet
    from ranker.serving.reads import EntityKeys as _EntityKeys
    from ranker.serving.redis_reader import RedisReader as _RedisBackend

    rng = np.random.default_rng(seed)
    alphabet = list("abcxyz019 _-") + ["é", "ß", "日", "\U0001f457"]

    def text(longest):
        return "".join(rng.choice(alphabet, size=int(rng.integers(0, longest + 1))))

    backend = _RedisBackend(
        "redis://127.0.0.1:1/0", 1.0, np.zeros((1, 8), np.uint32), np.full((1, 8), -1), key_suffix=b"fashion_ranking"
    )
    hmget = _FieldSet.build(
        [("v", "a", "Int64"), ("v", "b", "Int64")],
        [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"],
        {"v": "t"},
        hash_fields=3,
    )
    hgetall = _FieldSet.build(
        [("v", f"f{i}", "Int64") for i in range(6)], [bytes([i]) * 4 for i in range(6)], {"v": "t"}, hash_fields=7
    )
    reads = []
    for fs in (hmget, hgetall):
        for join_keys in (("item_id",), ("category", "user_id"), ("category", "query"), ("user_id",)):
            count = 1 if join_keys == ("user_id",) else int(rng.integers(0, 60))
            columns = tuple(
                text(5000)
                if name == "query"
                else ("u-" + text(8))
                if name == "user_id"
                else [text(40) for _ in range(count)]
                for name in join_keys
            )
            reads.append((_EntityKeys(join_keys, columns, count), fs))
    rng.shuffle(reads)
    for n in (1, 2, len(reads)):  # one read, and several in one round
        want = b"".join(
            fs.head + b"$%d\r\n%s\r\n" % (len(k), k) + fs.tail
            for keys, fs in reads[:n]
            for k in keys.serialized(b"fashion_ranking")
        )
        got = backend._payload(reads[:n])
        assert (b"" if got is None else bytes(got)) == want


def test_the_key_kernel_never_writes_past_its_buffer():
    from ranker.serving import resp

    data = np.frombuffer(b"abcdefghijkl", dtype=np.uint8)
    lengths = np.array([6, 6], dtype=np.int64)
    columns = np.array([[0, 0, 0]], dtype=np.int64)
    frames = np.frombuffer(b"HEAD", dtype=np.uint8)
    reads = np.array([[2, 0, 1, 0, 4, 0, 4, 0, 4, 0, 4]], dtype=np.int64)
    n = resp.encode_commands(data, lengths, columns, reads, frames, np.empty(resp.commands_size(reads, 12), np.uint8))
    assert n > 0
    for size in (0, 3, n // 2, n - 1):
        out = np.zeros(size + 8, dtype=np.uint8)
        assert resp.encode_commands(data, lengths, columns, reads, frames, out[:size]) == -1
        assert not out[size:].any()  # the 8 bytes after the slice are untouched
    assert resp.encode_commands(data, lengths, columns, reads, frames, np.empty(n, np.uint8)) == n


def test_string_cells_decode_exactly_also_off_the_fast_path():
    """A block's string cells: plain texts decoded in one go, a text holding a NUL and a value
    that is not a plain string message one by one, straight from the receive buffer."""
    from feast.protos.feast.types.Value_pb2 import Value

    from ranker.serving.plan import FieldSet as _FieldSet
    from ranker.serving.redis_reader import RedisReader as _RedisBackend
    from ranker.serving.values import slow_string as _slow_string

    cells = [
        Value(string_val="a\x00b").SerializeToString(),
        Value(string_val="größe M").SerializeToString(),
        None,
        Value(int64_val=3).SerializeToString(),
        Value(string_val="dress").SerializeToString(),
    ]
    stream = hmget_reply(cells)
    status, off, ln = parse(stream, [len(cells)], [-1])
    assert status == resp.DONE
    fs = _FieldSet.build(
        [("v", f"s{i}", "String") for i in range(len(cells))],
        [bytes([i]) * 4 for i in range(len(cells))],
        {"v": "t"},
        hash_fields=len(cells) + 1,
    )
    backend = _RedisBackend(
        "redis://127.0.0.1:1/0", 1.0, np.zeros((1, 8), np.uint32), np.full((1, 8), -1), key_suffix=b"p"
    )
    buf = np.frombuffer(bytearray(stream), dtype=np.uint8)  # writable, as the receive buffer is
    block = backend._block(buf, off.reshape(1, -1), ln.reshape(1, -1), fs)
    assert block.text.tolist() == [[_slow_string(c) for c in cells]] == [["a\x00b", "größe M", None, 3, "dress"]]
