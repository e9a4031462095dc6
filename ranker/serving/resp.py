"""Compiled (numba) kernels of the Redis fast path: RESP replies of pipelined ``HMGET`` parsed
straight off the receive buffer, and Feast ``Value`` protobufs decoded into float64, with no
Python object per cell.

A 200-listing request reads ~20,000 cells; making a ``bytes`` object of each (what hiredis or
redis-py do) and decoding them costs milliseconds in Python. Here the receive buffer is walked once
and every cell becomes an (offset, length) pair; numeric cells are then decoded into a float64
array, string cells into (offset, length) spans of their UTF-8 payload, which the caller slices.

Only the RESP2 shapes an ``HMGET`` pipeline answers with are accepted: an array (``*n``) of bulk
strings (``$len`` / ``$-1``); anything else (an error reply, a count that is not the fields asked
for) stops the parse with a status the caller turns into an error. The kernels are compiled once
per machine and cached next to this file (``cache=True``); :func:`warm_up` compiles them at
start-up so no request pays for it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NEED_MORE = 0  # parse_replies status: the buffer ends inside a reply; receive more and call again
DONE = 1
ERROR_REPLY = -1  # a "-ERR ..." reply (its text starts at state[0])
BAD_COUNT = -2  # an array of another length than the fields asked for
BAD_TYPE = -3  # neither an array nor a bulk string where one was due

_TAG_STRING, _TAG_INT32, _TAG_INT64, _TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x12, 0x18, 0x20, 0x29, 0x35, 0x38


@njit(cache=True, nogil=True)
def _line_int(buf, pos, end):
    """The signed integer at buf[pos:] up to "\\r\\n": (value, position after the CRLF), or
    (0, -1) when the buffer ends first."""
    neg = False
    if pos < end and buf[pos] == 45:  # '-'
        neg = True
        pos += 1
    value = 0
    while pos < end and buf[pos] != 13:
        value = value * 10 + (buf[pos] - 48)
        pos += 1
    if pos + 1 >= end:
        return 0, -1
    return (-value if neg else value), pos + 2


@njit(cache=True, nogil=True)
def _bulk(buf, p, end):
    """The bulk string at buf[p:]: (offset, length (-1: nil), position after it); position -1
    when the buffer ends first, -2 when it is not a bulk string."""
    if p >= end:
        return 0, 0, -1
    if buf[p] != 36:  # '$'
        return 0, 0, -2
    size, q = _line_int(buf, p + 1, end)
    if q < 0:
        return 0, 0, -1
    if size < 0:
        return q, -1, q
    if q + size + 2 > end:
        return 0, 0, -1
    return q, size, q + size + 2


@njit(cache=True, nogil=True)
def parse_replies(buf, end, widths, table_of, names, columns, off, ln, state):
    """Parse the complete replies in ``buf[state[0]:end]`` into cells.

    Reply r fills the ``widths[r]`` cells that follow those of the replies before it, in one of
    two shapes: ``table_of[r] == -1``: an ``HMGET`` reply, the array of exactly ``widths[r]`` bulk
    strings, in order; otherwise an ``HGETALL`` reply, an array of (field, value) pairs, where a
    field whose name is in the lookup table ``names[t]``/``columns[t]`` (``t = table_of[r]``;
    open addressing on the 4-byte name read as a little-endian uint32, -1 = free slot) fills its
    column and every other field is skipped. Cells no field fills keep the ``ln`` they came with
    (the caller sets -1, nil). ``off``/``ln``: per cell, offset and length of its bulk string.
    ``state`` = [position, replies done, cells done], advanced past each complete reply, so a call
    resumes where the previous one stopped. Returns DONE, NEED_MORE or a negative status."""
    pos, r, c = state[0], state[1], state[2]
    n_replies = widths.shape[0]
    while r < n_replies:
        if pos >= end:
            return NEED_MORE
        kind = buf[pos]
        if kind == 45:  # '-': an error reply
            return ERROR_REPLY
        if kind != 42:  # '*'
            return BAD_TYPE
        count, p = _line_int(buf, pos + 1, end)
        if p < 0:
            return NEED_MORE
        width = widths[r]
        t = table_of[r]
        if t < 0:
            if count != width:
                return BAD_COUNT
            for k in range(count):
                o, size, p = _bulk(buf, p, end)
                if p < 0:
                    return NEED_MORE if p == -1 else BAD_TYPE
                off[c + k] = o
                ln[c + k] = size
        else:
            if count < 0 or count % 2:
                return BAD_COUNT
            mask = names.shape[1] - 1
            for _ in range(count // 2):
                o, size, p = _bulk(buf, p, end)
                if p < 0:
                    return NEED_MORE if p == -1 else BAD_TYPE
                vo, vsize, p = _bulk(buf, p, end)
                if p < 0:
                    return NEED_MORE if p == -1 else BAD_TYPE
                if size != 4:
                    continue
                key = (
                    np.uint32(buf[o])
                    | (np.uint32(buf[o + 1]) << 8)
                    | (np.uint32(buf[o + 2]) << 16)
                    | (np.uint32(buf[o + 3]) << 24)
                )
                slot = np.int64(key & np.uint32(mask))
                while columns[t, slot] >= 0:
                    if names[t, slot] == key:
                        col = columns[t, slot]
                        off[c + col] = vo
                        ln[c + col] = vsize
                        break
                    slot = (slot + 1) & mask
        pos, r, c = p, r + 1, c + width
        state[0], state[1], state[2] = pos, r, c
    return DONE


def name_table(fields: list, size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The lookup table :func:`parse_replies` uses for ``HGETALL`` replies: 4-byte field names
    (Feast's murmur3 of ``view:feature``) -> column. Returns (names uint32, columns int64), one row
    of ``size`` slots (a power of two; default: the smallest at least twice the fields)."""
    if not size:
        size = 8
        while size < 2 * len(fields):
            size *= 2
    if size & (size - 1) or size < 2 * len(fields):
        raise ValueError(f"table size {size} must be a power of two >= {2 * len(fields)}")
    names = np.zeros((1, size), dtype=np.uint32)
    columns = np.full((1, size), -1, dtype=np.int64)
    for col, name in enumerate(fields):
        if len(name) != 4:
            raise ValueError(f"field name {name!r} is not 4 bytes")
        key = int.from_bytes(name, "little")
        slot = key & (size - 1)
        while columns[0, slot] >= 0:
            if names[0, slot] == key:
                raise ValueError(f"field name {name!r} listed twice")
            slot = (slot + 1) & (size - 1)
        names[0, slot] = key
        columns[0, slot] = col
    return names, columns


@njit(cache=True, nogil=True)
def decode_numbers(buf, off, ln, out, slow):
    """Numeric ``Value`` messages at (off, ln) (2-D, any layout) into ``out`` (float64, same
    shape): float_val, double_val, int64/int32_val (varint), bool_val; nil or empty -> NaN. Cells
    in any other form are left NaN with ``slow`` set (the caller decodes them with protobuf).
    Returns the number of slow cells."""
    n_slow = 0
    scratch = np.empty(8, dtype=np.uint8)
    f32 = scratch[:4].view(np.float32)
    f64 = scratch.view(np.float64)
    rows, cols = off.shape
    for i in range(rows):
        for j in range(cols):
            size = ln[i, j]
            slow[i, j] = False
            if size <= 0:
                out[i, j] = np.nan
                continue
            p = off[i, j]
            tag = buf[p]
            if tag == _TAG_FLOAT and size == 5:
                for k in range(4):
                    scratch[k] = buf[p + 1 + k]
                out[i, j] = f32[0]
            elif tag == _TAG_DOUBLE and size == 9:
                for k in range(8):
                    scratch[k] = buf[p + 1 + k]
                out[i, j] = f64[0]
            elif (tag == _TAG_INT64 or tag == _TAG_INT32) and 2 <= size <= 11 and buf[p + size - 1] < 0x80:
                value = np.uint64(0)
                ok = True
                for k in range(size - 1):
                    b = buf[p + 1 + k]
                    if k < size - 2 and b < 0x80:  # a varint byte before the last must continue
                        ok = False
                    value |= np.uint64(b & 0x7F) << np.uint64(7 * k)
                if ok:
                    out[i, j] = np.float64(np.int64(value))
                else:
                    out[i, j] = np.nan
                    slow[i, j] = True
                    n_slow += 1
            elif tag == _TAG_BOOL and size == 2 and buf[p + 1] < 2:
                out[i, j] = np.float64(buf[p + 1])
            else:
                out[i, j] = np.nan
                slow[i, j] = True
                n_slow += 1
    return n_slow


@njit(cache=True, nogil=True)
def string_spans(buf, off, ln, start, stop):
    """Spans of string ``Value`` messages (tag 0x12, varint length, UTF-8 text) at (off, ln),
    2-D: ``start``/``stop`` of the text; start -1: nil or empty message (None); start -2: any
    other form (the caller decodes it with protobuf)."""
    rows, cols = off.shape
    for i in range(rows):
        for j in range(cols):
            size = ln[i, j]
            if size <= 0:
                start[i, j] = -1
                stop[i, j] = -1
                continue
            p = off[i, j]
            end = p + size
            if buf[p] != _TAG_STRING:
                start[i, j] = -2
                stop[i, j] = -2
                continue
            q = p + 1
            length = 0
            shift = 0
            while q < end and buf[q] >= 0x80 and shift < 35:
                length |= (buf[q] & 0x7F) << shift
                shift += 7
                q += 1
            if q >= end:
                start[i, j] = -2
                stop[i, j] = -2
                continue
            length |= buf[q] << shift
            q += 1
            if q + length != end:
                start[i, j] = -2
                stop[i, j] = -2
                continue
            start[i, j] = q
            stop[i, j] = end


@njit(cache=True, nogil=True)
def group_spans(buf, start, stop, first):
    """For 1-D spans (from :func:`string_spans`): ``first[i]`` = the index of the first span with
    the same bytes as span i (i itself for the first of its kind), or start[i] when that is
    negative (nil / not a plain string). Exact: an open-addressing table on an FNV-1a hash, with
    the bytes compared on every hash match."""
    n = start.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    table = np.full(size, -1, dtype=np.int64)
    mask = size - 1
    for i in range(n):
        a, b = start[i], stop[i]
        if a < 0:
            first[i] = a
            continue
        h = np.uint64(14695981039346656037)
        for p in range(a, b):
            h = (h ^ np.uint64(buf[p])) * np.uint64(1099511628211)
        slot = np.int64(h & np.uint64(mask))
        while True:
            j = table[slot]
            if j < 0:
                table[slot] = i
                first[i] = i
                break
            ja, jb = start[j], stop[j]
            if jb - ja == b - a:
                same = True
                for k in range(b - a):
                    if buf[ja + k] != buf[a + k]:
                        same = False
                        break
                if same:
                    first[i] = j
                    break
            slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def gather_spans(buf, start, stop, out):
    """Copy the spans ``buf[start[i]:stop[i]]`` into ``out``, separated by one NUL byte, so one
    ``bytes.decode`` and one ``str.split("\\0")`` make all their strings. Returns the bytes written,
    or -1 when a span holds a NUL itself (the caller then decodes them one by one)."""
    p = 0
    for i in range(start.shape[0]):
        if i:
            out[p] = 0
            p += 1
        for k in range(start[i], stop[i]):
            b = buf[k]
            if b == 0:
                return -1
            out[p] = b
            p += 1
    return p


@njit(cache=True, nogil=True)
def _put(out, p, src, a, n):
    out[p : p + n] = src[a : a + n]
    return p + n


@njit(cache=True, nogil=True)
def _put_u32(out, p, value):
    for k in range(4):
        out[p + k] = (value >> (8 * k)) & 0xFF
    return p + 4


@njit(cache=True, nogil=True)
def encode_commands(data, lengths, columns, reads, frames, out):
    """A round's commands, written into ``out``: per read, per entity key, the read's command head,
    the key as a RESP bulk string, the command tail. The key is Feast's serialized entity key of
    string join keys plus the project (``ranker.features.feast_compat.string_entity_keys``): the
    read's prefix (key count and names), then per value the STRING type (2) and its length as
    little-endian uint32 and its UTF-8 bytes, then the suffix.

    ``reads`` (R, 11): keys, first column, columns, then (offset, length) in ``frames`` of the
    head, prefix, tail and suffix. ``columns`` (C, 3): the byte offset of the column's values in
    ``data``; the offset of their lengths in ``lengths`` (one per key, values back to back), or -1
    for one value every key of the read shares; that shared value's length. Returns the bytes
    written, or -1 (nothing written past ``out``) when ``out`` is smaller than
    :func:`commands_size` says it must be."""
    p = 0
    cursor = np.zeros(columns.shape[0], dtype=np.int64)  # byte offset of each column's next value
    for c in range(columns.shape[0]):
        cursor[c] = columns[c, 0]
    for r in range(reads.shape[0]):
        count, c0, nc = reads[r, 0], reads[r, 1], reads[r, 2]
        h0, hn, p0, pn, t0, tn, s0, sn = (
            reads[r, 3],
            reads[r, 4],
            reads[r, 5],
            reads[r, 6],
            reads[r, 7],
            reads[r, 8],
            reads[r, 9],
            reads[r, 10],
        )
        for i in range(count):
            size = pn + sn
            for c in range(c0, c0 + nc):
                size += 8 + (columns[c, 2] if columns[c, 1] < 0 else lengths[columns[c, 1] + i])
            digits, rest = 1, size
            while rest >= 10:
                rest //= 10
                digits += 1
            if p + hn + digits + size + 5 + tn > out.shape[0]:
                return -1  # never write past out (the caller sized it too small)
            p = _put(out, p, frames, h0, hn)
            out[p] = 36  # '$'
            rest = size
            for d in range(digits, 0, -1):
                out[p + d] = 48 + rest % 10
                rest //= 10
            p += digits + 1
            out[p], out[p + 1] = 13, 10
            p = _put(out, p + 2, frames, p0, pn)
            for c in range(c0, c0 + nc):
                if columns[c, 1] < 0:
                    n, a = columns[c, 2], columns[c, 0]
                else:
                    n, a = lengths[columns[c, 1] + i], cursor[c]
                    cursor[c] += n
                p = _put_u32(out, p, 2)
                p = _put_u32(out, p, n)
                p = _put(out, p, data, a, n)
            p = _put(out, p, frames, s0, sn)
            out[p], out[p + 1] = 13, 10
            p = _put(out, p + 2, frames, t0, tn)
    return p


def commands_size(reads, value_bytes: int) -> int:
    """An upper bound of what :func:`encode_commands` writes for ``reads`` (its rows, as sequences
    of ints), ``value_bytes`` being the bytes of every key's values (a shared value counted once per
    key): per key its frames, 8 bytes per value, "$", up to 20 digits and two CRLF."""
    return sum(int(r[0]) * (int(r[4] + r[6] + r[8] + r[10]) + 8 * int(r[2]) + 25) for r in reads) + value_bytes


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for the argument types the scorer passes: a
    writable buffer (numba types a read-only one apart, and would compile again on the first
    request), contiguous and strided 2-D cell grids (a column block of a wider grid is strided)."""
    one, text = b"$5\r\n\x35\x00\x00\x80\x3f\r\n", b"$3\r\n\x12\x01a\r\n"  # float_val 1.0, string_val "a"
    hmget = b"*2\r\n" + one + text
    hgetall = b"*6\r\n$4\r\nname\r\n" + text + b"$6\r\n_ts:fv\r\n$-1\r\n$4\r\nnum_\r\n" + one
    buf = np.frombuffer(bytearray(hmget + hgetall), dtype=np.uint8)  # writable, as the receive buffer is
    off = np.zeros(4, dtype=np.int64)
    ln = np.full(4, -1, dtype=np.int64)
    state = np.zeros(3, dtype=np.int64)
    names, columns = name_table([b"num_", b"name"])
    if (
        parse_replies(
            buf,
            buf.size,
            np.full(2, 2, dtype=np.int64),
            np.array([-1, 0], dtype=np.int64),
            names,
            columns,
            off,
            ln,
            state,
        )
        != DONE
        or not (ln == [5, 3, 5, 3]).all()
    ):
        raise AssertionError("RESP kernel self-test failed")
    o2, l2 = off.reshape(2, 2), ln.reshape(2, 2)
    for cols in (slice(0, 1), slice(0, 2)):  # strided, contiguous
        out = np.empty((2, cols.stop))
        decode_numbers(buf, o2[:, cols], l2[:, cols], out, np.empty(out.shape, dtype=np.bool_))
        if out[0, 0] != 1.0:
            raise AssertionError("Value kernel self-test failed")
    for cols in (slice(1, 2), slice(0, 2)):
        a = np.empty((2, cols.stop - cols.start), dtype=np.int64)
        b = np.empty_like(a)
        string_spans(buf, o2[:, cols], l2[:, cols], a, b)
        first = np.empty(a.size, dtype=np.int64)
        group_spans(buf, a.ravel(), b.ravel(), first)
    if bytes(buf[a[0, 1] : b[0, 1]]) != b"a" or first[3] != 1:
        raise AssertionError("string kernel self-test failed")
    gathered = np.empty(16, dtype=np.uint8)
    n = gather_spans(buf, a.ravel(), b.ravel(), gathered)
    if bytes(gathered[:n]) != b"\x00a\x00\x00a":
        raise AssertionError("gather kernel self-test failed")
    data = np.frombuffer(b"ab", dtype=np.uint8)  # read-only, as the joined values and frames are
    frames = np.frombuffer(b"HPTS", dtype=np.uint8)
    reads = np.array([[1, 0, 2, 0, 1, 1, 1, 2, 1, 3, 1]], dtype=np.int64)
    columns = np.array([[0, 0, 0], [1, -1, 1]], dtype=np.int64)
    encoded = np.empty(commands_size(reads, 3), dtype=np.uint8)
    n = encode_commands(data, np.array([1], dtype=np.int64), columns, reads, frames, encoded)
    if bytes(encoded[:n]) != b"H$20\r\nP\x02\x00\x00\x00\x01\x00\x00\x00a\x02\x00\x00\x00\x01\x00\x00\x00bS\r\nT":
        raise AssertionError("key kernel self-test failed")
