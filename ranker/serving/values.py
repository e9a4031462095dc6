"""Decoding Feast's serialized ``Value`` protobufs into float64 columns and Python strings.

Vectorised over a read's cells: the usual messages (float_val, double_val, int64/int32_val,
bool_val, a short string_val) are sliced out of one buffer with numpy; anything unusual goes
through the protobuf parser. Numbers stored as strings are coerced as
:func:`ranker.features.matrix.feature_matrix` coerces Feast's output.
"""

from __future__ import annotations

import math
from operator import length_hint
from typing import Any

import numpy as np
import pandas as pd

# Tags of the Value protobuf oneof members (field number << 3 | wire type).
_TAG_STRING, _TAG_INT32, _TAG_INT64, _TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x12, 0x18, 0x20, 0x29, 0x35, 0x38
_NUMERIC_ONEOF = ("float_val", "double_val", "int64_val", "int32_val", "bool_val")
_R4 = np.arange(1, 5)
_R8 = np.arange(1, 9)
_VARINT_POS = np.arange(10)
_VARINT_SHIFT = (7 * _VARINT_POS).astype(np.uint64)


def data_of(buf: np.ndarray, offset: int, length: int) -> bytes:
    """The bytes of one cell of a receive buffer (b"" for nil)."""
    return bytes(buf[offset : offset + length]) if length > 0 else b""


def slow_number(raw: bytes) -> float:
    """One numeric cell through the protobuf parser (the unusual encodings); NaN when not a number."""
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    kind = value.WhichOneof("val")
    if kind in _NUMERIC_ONEOF:
        return float(getattr(value, kind))
    if kind == "string_val":  # feature_matrix coerces strings (pd.to_numeric, errors="coerce")
        return float(coerced([value.string_val])[0])
    return math.nan


def slow_string(raw: bytes) -> Any:
    """One string cell through the protobuf parser; None for an empty message or missing cell."""
    if not raw:
        return None
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    kind = value.WhichOneof("val")
    return None if kind is None else getattr(value, kind)


def _lengths_and_bytes(cells: list) -> tuple[np.ndarray, bytes]:
    """Length of each cell (None counts as empty) and all cells concatenated, both at C speed."""
    lens = np.fromiter(map(length_hint, cells), dtype=np.intp, count=len(cells))  # length_hint(None) == 0
    return lens, b"".join(filter(None, cells))


def decode_numbers(cells: list) -> np.ndarray:
    """float64 values of serialized Feast ``Value`` messages; empty message or None -> NaN.

    Vectorised over the concatenated bytes: float_val (tag 0x35 + 4 bytes), double_val (0x29 + 8),
    int64/int32_val (0x20/0x18 + varint), bool_val (0x38 + 1); anything else is parsed by protobuf."""
    m = len(cells)
    lens, data = _lengths_and_bytes(cells)
    out = np.full(m, np.nan)
    buf = np.frombuffer(data, dtype=np.uint8)
    if not buf.size:
        return out
    ends = np.cumsum(lens)
    starts = ends - lens
    nonempty = lens > 0
    tag = np.zeros(m, dtype=np.uint8)
    tag[nonempty] = buf[starts[nonempty]]
    done = ~nonempty
    sel = (tag == _TAG_FLOAT) & (lens == 5)
    if sel.any():
        out[sel] = np.ascontiguousarray(buf[starts[sel, None] + _R4]).view("<f4")[:, 0]
        done |= sel
    sel = (tag == _TAG_DOUBLE) & (lens == 9)
    if sel.any():
        out[sel] = np.ascontiguousarray(buf[starts[sel, None] + _R8]).view("<f8")[:, 0]
        done |= sel
    sel = ((tag == _TAG_INT64) | (tag == _TAG_INT32)) & (lens >= 2) & (lens <= 11)
    if sel.any():
        s, n = starts[sel], lens[sel] - 1
        sel[sel] = buf[s + n] < 0x80  # the varint ends exactly at the end of the message
        s, n = starts[sel], lens[sel] - 1
        if (n == 1).all():
            out[sel] = buf[s + 1]
        else:
            idx = np.minimum(s[:, None] + 1 + _VARINT_POS, buf.size - 1)
            raw = np.where(_VARINT_POS < n[:, None], buf[idx], 0).astype(np.uint64)
            value = np.bitwise_or.reduce((raw & np.uint64(0x7F)) << _VARINT_SHIFT, axis=1)
            out[sel] = value.view(np.int64)
        done |= sel
    sel = (tag == _TAG_BOOL) & (lens == 2)
    if sel.any():
        b = buf[starts[sel] + 1]
        ok = b < 2
        sel[sel] = ok
        out[sel] = b[ok]
        done |= sel
    if not done.all():
        for i in np.flatnonzero(~done):
            out[i] = slow_number(cells[i])
    return out


def decode_strings(cells: list) -> list:
    """Python values of serialized Feast ``Value`` messages holding strings; missing -> None.

    The usual message (tag 0x12, one length byte, ASCII text) is sliced out of one decoded buffer;
    anything else goes through the protobuf parser."""
    m = len(cells)
    out: list = [None] * m
    if not m:
        return out
    lens, data = _lengths_and_bytes(cells)
    if not data:
        return out
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens
    ok = lens >= 2
    s = starts[ok]
    ok[ok] = (buf[s] == _TAG_STRING) & (buf[s + 1] == lens[ok] - 2)
    fast = np.flatnonzero(ok)
    if data.isascii():  # byte offsets are character offsets
        text = data.decode("ascii")
        values = [text[a:b] for a, b in zip((starts[fast] + 2).tolist(), ends[fast].tolist(), strict=True)]
    else:
        values = [data[a:b].decode() for a, b in zip((starts[fast] + 2).tolist(), ends[fast].tolist(), strict=True)]
    if len(fast) == m:
        return values
    for i, v in zip(fast.tolist(), values, strict=True):
        out[i] = v
    for i in np.flatnonzero(~ok & (lens > 0)).tolist():
        out[i] = slow_string(cells[i])
    return out


def coerced(values: Any) -> np.ndarray:
    """float64 of a column, as :func:`ranker.training.dataset.feature_matrix` coerces Feast's output."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64, na_value=np.nan)
