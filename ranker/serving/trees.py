"""Compiled (numba) evaluation of a LightGBM model's trees: the raw scores of
``Booster.predict(X, raw_score=True)``, bit for bit, several times faster for the 50-1000 rows a
request ranks (``benchmarks/predict_latency.py`` measures both).

Exactness. LightGBM's dense-matrix predictor turns each value into a double and drops those with
``|v| <= kZeroThreshold`` (they read as 0.0). At a split, NaN becomes 0.0 unless the split's
``missing_type`` is NaN; a NaN (type NaN) or a zero (type Zero) takes the split's default
direction; any other value goes left when ``v <= threshold``. Thresholds can be infinite (a
``<= inf`` split separates NaN from everything else). A row's score is 0.0 plus each tree's leaf
value, in tree order, in double. This module reproduces those decisions and that order, and
:meth:`CompiledTrees.verify` checks the result against LightGBM itself before a compiled model is
ever used.

Design (measured on this machine; ``benchmarks/predict_latency.py``):

* Missing values are resolved once per input value, not at every split. A split reads an *input
  column*: its feature with NaN (and for type Zero, zeros) replaced by -inf when the default goes
  left, by NaN when it goes right (type None: NaN reads as 0.0, as in LightGBM). The split is then
  the bare test ``not v <= threshold`` for "go right": -inf is at or below every threshold, NaN at
  or below none. A feature gets one column per treatment its splits use, usually one or two.
  Columns keep the input's dtype (float32 holds every value exactly); each value is widened to
  double for the comparison, as LightGBM does.
* Rows are walked 16 at a time in lock step, so 16 independent walks hide each other's load
  latency; a step has no branch (the comparison indexes the child), leaves point to themselves and
  every walk takes the tree's full depth (~10 steps where the average path is ~6, still cheaper
  than branches that depend on the data). On the 300-tree model at 200 rows: a numba per-row walk
  with branches (LightGBM's way) took 2.8 ms against LightGBM's 4.0 ms; 16 lanes took 0.38 ms,
  8 lanes 0.51 ms, 24 lanes no less; reading the missing-value rules at every split instead of the
  prepared columns took ~1.8x as long.
* A node is one 32-byte record (threshold or leaf value, input column, left, right). Trees are
  processed in tiles of about a thousand nodes, so a tile stays in cache while every block of rows
  walks it; a block's 16 sums stay in registers across the tile.

Kept against lleaves (``benchmarks/trees_vs_lleaves.py``, 2026-12-02, 300 trees x 30 features,
1 thread, two interleaved rounds; lleaves 1.3.0 in its own virtualenv since it needs llvmlite 0.44
and numba 0.68 cannot share it): at 200 rows these trees took 0.07-0.09x Booster.predict's time
(0.76-0.85 ms), lleaves 0.19-0.38x (1.9-5.5 ms); at 50 rows 0.20-0.28x against 0.35-0.40x, at 1000
rows 0.09-0.14x against 0.31-0.34x. These are bit-identical to LightGBM; lleaves differed by up to
1.1e-14 and compiles for 30-50 s at load.

Unsupported (raise :class:`UnsupportedModel`; the caller keeps ``Booster.predict``): categorical
splits, linear trees, several outputs per iteration (multiclass), averaged outputs (random forest).

The kernels are compiled once per machine and cached next to this file (``cache=True``);
:func:`warm_up` compiles them at start-up so no request pays for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from ranker.errors import RankerError

# LightGBM's kZeroThreshold is declared `const double kZeroThreshold = 1e-35f`: a float literal
# widened to double, 1.0000000180025095e-35, not the double 1e-35.
ZERO_THRESHOLD = float(np.float32(1e-35))
LANES = 16  # rows walked in lock step; _predict is unrolled for exactly this many
NODE_WORDS = 4  # a node record: threshold (leaf: value) bits, input column * LANES, left, right
TILE_NODES = 1024  # nodes per tile of trees (32 KiB of records)
DUMP_LIMIT = 1e300  # dump_model writes thresholds beyond +-1e300 as +-1e300 (Common::AvoidInf)

_U1 = np.uint64(1)
_U2 = np.uint64(2)

# How a split treats missing values -> (what NaN becomes, what a zero becomes) in its input column.
# -inf is at or below every threshold (goes left), NaN at or below none (goes right).
_FILLS = {
    "nan_as_zero": (0.0, 0.0),  # missing_type None: NaN reads as 0.0
    "nan_left": (-math.inf, 0.0),  # missing_type NaN, default left
    "nan_right": (math.nan, 0.0),
    "zero_left": (-math.inf, -math.inf),  # missing_type Zero: NaN and zeros take the default
    "zero_right": (math.nan, math.nan),
}


class UnsupportedModel(RankerError):
    """The model cannot be compiled exactly; keep ``Booster.predict`` for it."""


@dataclass(frozen=True, eq=False)
class CompiledTrees:
    """A LightGBM model's trees flattened into arrays for the numba kernel.

    ``nodes`` holds one record of :data:`NODE_WORDS` uint64 words per node, each tree in
    pre-order: the threshold (a leaf: its value) as float64 bits, also readable through ``values``
    (a float64 view of the same memory); the node's input column times :data:`LANES`; the word
    offsets of its left and right children (a leaf: its own, twice). Input column ``c`` is feature
    ``column_feature[c]`` with NaN replaced by ``column_nan[c]`` and values with
    ``|v| <= kZeroThreshold`` by ``column_zero[c]``.
    """

    nodes: np.ndarray = field(repr=False)  # uint64 (n_nodes * NODE_WORDS,)
    values: np.ndarray = field(repr=False)  # float64 view of nodes
    roots: np.ndarray = field(repr=False)  # uint64 word offset of each tree's root
    depths: np.ndarray = field(repr=False)  # int64 depth of each tree: the steps every walk takes
    tiles: np.ndarray = field(repr=False)  # int64 first tree of each tile, then the tree count
    column_feature: np.ndarray = field(repr=False)  # int64
    column_nan: np.ndarray = field(repr=False)  # float64
    column_zero: np.ndarray = field(repr=False)  # float64
    num_features: int
    num_trees: int
    objective: str

    @classmethod
    def from_booster(cls, booster: Any) -> "CompiledTrees":
        """Compile the trees ``booster.predict`` uses by default: up to ``best_iteration`` when it
        is set (> 0), else all. The tree shapes come from ``dump_model()``, the thresholds from the
        model text (``dump_model`` clamps infinite ones). Raises :class:`UnsupportedModel` for a
        model this module cannot reproduce exactly."""
        return cls.from_dump(booster.dump_model(), model_text=booster.model_to_string())

    @classmethod
    def from_dump(cls, dump: dict, *, model_text: str | None = None) -> "CompiledTrees":
        """Compile a ``Booster.dump_model()`` dictionary. Without ``model_text`` (the matching
        ``model_to_string()``), a model with a threshold clamped to +-1e300 is refused."""
        _check_model(dump)
        text_thresholds = _text_thresholds(model_text) if model_text is not None else None
        builder = _Builder(dump.get("feature_names") or [])
        for info in dump["tree_info"]:
            index = int(info.get("tree_index", len(builder.roots)))
            exact = text_thresholds.get(index, []) if text_thresholds is not None else None
            builder.add_tree(info["tree_structure"], index, exact)
        return builder.build(num_features=int(dump["max_feature_idx"]) + 1, objective=str(dump.get("objective", "")))

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Raw scores, float64, one per row of ``matrix`` (n, num_features), float32 or float64;
        another dtype is converted to float32 first, as ``Booster.predict`` does."""
        if matrix.ndim != 2 or matrix.shape[1] != self.num_features:
            raise ValueError(f"expected a 2-D matrix with {self.num_features} columns, got shape {matrix.shape}")
        if matrix.dtype != np.float32 and matrix.dtype != np.float64:
            matrix = matrix.astype(np.float32)
        if not matrix.flags.c_contiguous:
            matrix = np.ascontiguousarray(matrix)
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return _predict(
            matrix,
            self.nodes,
            self.values,
            self.roots,
            self.depths,
            self.tiles,
            self.column_feature,
            self.column_nan,
            self.column_zero,
        )

    def verify(self, booster: Any, probe: np.ndarray | None = None) -> None:
        """Raise :class:`UnsupportedModel` unless :meth:`predict` equals LightGBM bit for bit on
        ``probe`` (default: :func:`boundary_probe` of this model; every bit, so 0.0 is not -0.0), as
        float64 and as float32, both
        against ``booster.predict(..., raw_score=True)`` and against the plain
        ``booster.predict(...)`` the scorer calls (they differ when the objective transforms scores,
        e.g. binary). Call it at model load: a compiled model that does not match is never used."""
        if probe is None:
            probe = boundary_probe(self)
        with np.errstate(over="ignore"):  # doubles beyond float32 become +-inf, as LightGBM's would
            as_float32 = np.asarray(probe, dtype=np.float32)
        for matrix in (np.asarray(probe, dtype=np.float64), as_float32):
            mine = self.predict(matrix)
            for raw in (True, False):
                theirs = booster.predict(matrix, raw_score=raw, num_threads=1)
                if theirs.shape != mine.shape or not np.array_equal(mine.view(np.uint64), theirs.view(np.uint64)):
                    what = "raw scores" if raw else f"default output (objective '{self.objective}')"
                    raise UnsupportedModel(_mismatch(mine, theirs, what, matrix.dtype))


def compile_verified(booster: Any, probe: np.ndarray | None = None) -> CompiledTrees:
    """:meth:`CompiledTrees.from_booster` then :meth:`CompiledTrees.verify`: a compiled model that
    is exact on ``probe`` and on the model's own decision boundaries, or :class:`UnsupportedModel`."""
    compiled = CompiledTrees.from_booster(booster)
    compiled.verify(booster)
    if probe is not None:
        compiled.verify(booster, probe)
    return compiled


def boundary_probe(compiled: CompiledTrees, *, seed: int = 0) -> np.ndarray:
    """A float64 matrix (num_features columns) that reaches every decision boundary of the model:
    each column cycles through its feature's thresholds and their neighbours (the next doubles,
    the float32 values around them), NaN, +-0, +-kZeroThreshold and its neighbours, a subnormal,
    +-inf and +-float32 max, shuffled per column so rows mix them."""
    rng = np.random.default_rng(seed)
    records = compiled.nodes.reshape(-1, NODE_WORDS)
    internal = records[:, 2] != np.arange(records.shape[0], dtype=np.uint64) * np.uint64(NODE_WORDS)
    split_feature = np.full(records.shape[0], -1, dtype=np.int64)
    split_feature[internal] = compiled.column_feature[(records[internal, 1] // np.uint64(LANES)).astype(np.int64)]
    thresholds = compiled.values[0::NODE_WORDS]
    f32 = np.float32
    tiny, largest = f32(ZERO_THRESHOLD), float(np.finfo(f32).max)
    near_zero = [
        ZERO_THRESHOLD,
        np.nextafter(ZERO_THRESHOLD, 1.0),
        np.nextafter(ZERO_THRESHOLD, 0.0),
        np.nextafter(tiny, f32(1)),
        np.nextafter(tiny, f32(0)),
        1e-40,
    ]
    special = [np.nan, 0.0, -0.0, np.inf, -np.inf, largest, -largest] + [
        s * float(z) for z in near_zero for s in (1, -1)
    ]
    columns = []
    for feature in range(compiled.num_features):
        t = np.unique(thresholds[split_feature == feature])
        with np.errstate(over="ignore"):
            t32 = t.astype(f32)
        columns.append(
            np.concatenate(
                [
                    t,
                    np.nextafter(t, -np.inf),
                    np.nextafter(t, np.inf),
                    t32,
                    np.nextafter(t32, f32(-np.inf)),
                    np.nextafter(t32, f32(np.inf)),
                    special,
                ]
            ).astype(np.float64)
        )
    rows = max((c.size for c in columns), default=1)
    probe = np.empty((rows, compiled.num_features))
    for feature, values in enumerate(columns):
        values = np.resize(values, rows)
        rng.shuffle(values)
        probe[:, feature] = values
    return probe


def _mismatch(mine: np.ndarray, theirs: np.ndarray, what: str, dtype: np.dtype) -> str:
    if mine.shape != theirs.shape:
        return f"compiled trees give shape {mine.shape}, LightGBM {theirs.shape} ({what}); keeping LightGBM"
    differ = np.flatnonzero(mine.view(np.uint64) != theirs.view(np.uint64))
    with np.errstate(invalid="ignore"):
        worst = float(np.max(np.abs(mine[differ] - theirs[differ])))
    return (
        f"compiled trees differ from LightGBM's {what} on {differ.size} of {mine.size} {np.dtype(dtype).name} "
        f"probe rows (first: row {differ[0]}, largest difference {worst:.3g}); keeping LightGBM"
    )


def _check_model(dump: dict) -> None:
    """Refuse, with the reason, the model kinds the kernel does not compute."""
    classes, per_iteration = int(dump.get("num_class", 1)), int(dump.get("num_tree_per_iteration", 1))
    if classes != 1 or per_iteration != 1:
        raise UnsupportedModel(
            f"model has {classes} classes and {per_iteration} trees per iteration: only "
            "single-output models are compiled; keeping LightGBM"
        )
    if dump.get("average_output"):
        raise UnsupportedModel(
            "model averages its trees (random forest): only summed trees are compiled; keeping LightGBM"
        )


def _text_thresholds(model_text: str) -> dict[int, list[float]]:
    """Each tree's ``threshold=`` line of a LightGBM model text, by tree index (written with full
    precision, infinities as ``inf``)."""
    thresholds: dict[int, list[float]] = {}
    tree = None
    for line in model_text.splitlines():
        if line.startswith("Tree="):
            tree = int(line[5:])
        elif tree is not None and line.startswith("threshold="):
            thresholds[tree] = [float(v) for v in line[10:].split()]
        elif line.startswith("end of trees"):
            break
    return thresholds


class _Builder:
    """Accumulates trees in pre-order and the input columns their splits read."""

    def __init__(self, feature_names: list) -> None:
        self.feature_names = feature_names
        self.columns: dict[tuple[int, str], int] = {}  # (feature, treatment in _FILLS) -> column
        self.values: list[float] = []  # per node: threshold, or leaf value
        self.node_columns: list[int] = []
        self.lefts: list[int] = []
        self.rights: list[int] = []
        self.roots: list[int] = []
        self.depths: list[int] = []

    def add_tree(self, root: dict, tree: int, exact_thresholds: list[float] | None) -> None:
        """Append one tree (iteratively: a leaf-wise tree can be deeper than Python's recursion limit)."""
        base = len(self.values)
        order: list[dict] = []
        depth = 0
        stack = [(root, 0)]
        while stack:
            node, level = stack.pop()
            order.append(node)
            depth = max(depth, level)
            if "split_index" in node:
                stack.append((node["right_child"], level + 1))
                stack.append((node["left_child"], level + 1))
        position = {id(node): base + i for i, node in enumerate(order)}
        for node in order:
            here = position[id(node)]
            if "split_index" in node:
                self._add_split(node, tree, exact_thresholds)
                self.lefts.append(position[id(node["left_child"])])
                self.rights.append(position[id(node["right_child"])])
            else:
                self._add_leaf(node, tree)
                self.lefts.append(here)
                self.rights.append(here)
        self.roots.append(base)
        self.depths.append(depth)

    def _add_leaf(self, node: dict, tree: int) -> None:
        if "leaf_coeff" in node:
            raise UnsupportedModel(f"tree {tree} has linear leaves (linear_tree): not compiled; keeping LightGBM")
        value = float(node["leaf_value"])
        if not math.isfinite(value):
            raise UnsupportedModel(f"tree {tree} leaf {node.get('leaf_index')} has value {value}; keeping LightGBM")
        self.values.append(value)
        self.node_columns.append(-1)

    def _add_split(self, node: dict, tree: int, exact_thresholds: list[float] | None) -> None:
        feature = int(node["split_feature"])
        name = self.feature_names[feature] if feature < len(self.feature_names) else feature
        where = f"tree {tree} split {node['split_index']} (feature {name})"
        if node.get("decision_type") != "<=":
            raise UnsupportedModel(
                f"{where} is categorical ('{node.get('decision_type')}'): not compiled; keeping LightGBM"
            )
        threshold = _exact_threshold(node, where, exact_thresholds)
        missing, side = node.get("missing_type"), "left" if node.get("default_left") else "right"
        if missing == "NaN":
            treatment = f"nan_{side}"
        elif missing == "Zero":
            treatment = f"zero_{side}"
        elif missing == "None":
            treatment = "nan_as_zero"
        else:
            raise UnsupportedModel(f"{where} has missing_type {missing!r}; keeping LightGBM")
        column = self.columns.setdefault((feature, treatment), len(self.columns))
        self.values.append(threshold)
        self.node_columns.append(column)

    def build(self, *, num_features: int, objective: str) -> CompiledTrees:
        # Columns in feature order, so a block's reads go forward through memory.
        order = sorted(self.columns)
        renumber = np.zeros(len(self.columns) + 1, dtype=np.uint64)  # index -1 (leaves) -> column 0
        for new, key in enumerate(order):
            renumber[self.columns[key]] = new
        nodes = np.zeros(len(self.values) * NODE_WORDS, dtype=np.uint64)
        records = nodes.reshape(-1, NODE_WORDS)
        values = nodes.view(np.float64)
        values[0::NODE_WORDS] = self.values
        records[:, 1] = renumber[np.asarray(self.node_columns, dtype=np.int64)] * np.uint64(LANES)
        records[:, 2] = np.asarray(self.lefts, dtype=np.uint64) * np.uint64(NODE_WORDS)
        records[:, 3] = np.asarray(self.rights, dtype=np.uint64) * np.uint64(NODE_WORDS)

        tiles, count = [0], 0
        sizes = np.diff(np.asarray(self.roots + [len(self.values)], dtype=np.int64))
        for tree, size in enumerate(sizes.tolist()):
            if count and count + size > TILE_NODES:
                tiles.append(tree)
                count = 0
            count += size
        if self.roots:
            tiles.append(len(self.roots))
        return CompiledTrees(
            nodes=nodes,
            values=values,
            roots=np.asarray(self.roots, dtype=np.uint64) * np.uint64(NODE_WORDS),
            depths=np.asarray(self.depths, dtype=np.int64),
            tiles=np.asarray(tiles, dtype=np.int64),
            column_feature=np.asarray([key[0] for key in order], dtype=np.int64),
            column_nan=np.asarray([_FILLS[treatment][0] for _, treatment in order], dtype=np.float64),
            column_zero=np.asarray([_FILLS[treatment][1] for _, treatment in order], dtype=np.float64),
            num_features=num_features,
            num_trees=len(self.roots),
            objective=objective,
        )


def _exact_threshold(node: dict, where: str, exact_thresholds: list[float] | None) -> float:
    """The split's threshold: the model text's value (exact, infinities included), which must
    agree with the dump's wherever the dump does not clamp it."""
    dumped = node["threshold"]
    if not isinstance(dumped, (int, float)) or math.isnan(dumped):
        raise UnsupportedModel(f"{where} has threshold {dumped!r}; keeping LightGBM")
    clamped = abs(dumped) >= DUMP_LIMIT
    if exact_thresholds is None:
        if clamped:
            raise UnsupportedModel(
                f"{where} has threshold {dumped!r}, clamped by dump_model: compile from the booster "
                "(it reads the model text); keeping LightGBM"
            )
        return float(dumped)
    index = int(node["split_index"])
    exact = exact_thresholds[index] if index < len(exact_thresholds) else math.nan
    if clamped:
        agrees = abs(exact) >= DUMP_LIMIT and math.copysign(1.0, exact) == math.copysign(1.0, dumped)
    else:
        agrees = exact == dumped
    if not agrees:
        raise UnsupportedModel(
            f"{where}: threshold {dumped!r} in dump_model but {exact!r} in the model text; keeping LightGBM"
        )
    return exact


@njit(cache=True, nogil=True)
def _columns(matrix, column_feature, column_nan, column_zero):
    """The input columns of ``matrix`` in blocks of LANES rows, column-major inside a block: value
    (block, column, lane) at ``(block * n_columns + column) * LANES + lane``. Lanes past the last
    row read 0.0 (walked, then discarded)."""
    n = matrix.shape[0]
    n_columns = column_feature.shape[0]
    blocks = (n + LANES - 1) // LANES
    x = np.empty(blocks * n_columns * LANES, dtype=matrix.dtype)
    for block in range(blocks):
        first = block * LANES
        rows = min(LANES, n - first)
        for c in range(n_columns):
            feature, nan, zero = column_feature[c], column_nan[c], column_zero[c]
            at = (block * n_columns + c) * LANES
            for lane in range(rows):
                v = matrix[first + lane, feature]
                v = zero if abs(v) <= ZERO_THRESHOLD else v
                x[at + lane] = nan if v != v else v
            for lane in range(rows, LANES):
                x[at + lane] = 0.0
    return x, blocks


@njit(cache=True, nogil=True, inline="always")
def _step(nodes, values, x, offset, lane, node):
    """One level down for one lane: "not v <= threshold" picks the right child word, no branch."""
    v = np.float64(x[offset + nodes[node + _U1] + np.uint64(lane)])
    return nodes[node + _U2 + np.uint64(not v <= values[node])]


@njit(cache=True, nogil=True)
def _predict(matrix, nodes, values, roots, depths, tiles, column_feature, column_nan, column_zero):
    """Raw scores of ``matrix`` (see :class:`CompiledTrees` for the arrays). Per row, the trees'
    values are added in tree order to a sum that starts at 0.0, as LightGBM does."""
    n = matrix.shape[0]
    x, blocks = _columns(matrix, column_feature, column_nan, column_zero)
    width = np.uint64(column_feature.shape[0] * LANES)
    out = np.zeros(blocks * LANES)
    for tile in range(tiles.shape[0] - 1):
        first, stop = tiles[tile], tiles[tile + 1]
        for block in range(blocks):
            o = np.uint64(block) * width
            r = block * LANES
            s0, s1, s2, s3 = out[r], out[r + 1], out[r + 2], out[r + 3]
            s4, s5, s6, s7 = out[r + 4], out[r + 5], out[r + 6], out[r + 7]
            s8, s9, s10, s11 = out[r + 8], out[r + 9], out[r + 10], out[r + 11]
            s12, s13, s14, s15 = out[r + 12], out[r + 13], out[r + 14], out[r + 15]
            for t in range(first, stop):
                p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = roots[t]
                p8 = p9 = p10 = p11 = p12 = p13 = p14 = p15 = roots[t]
                for _ in range(depths[t]):
                    p0 = _step(nodes, values, x, o, 0, p0)
                    p1 = _step(nodes, values, x, o, 1, p1)
                    p2 = _step(nodes, values, x, o, 2, p2)
                    p3 = _step(nodes, values, x, o, 3, p3)
                    p4 = _step(nodes, values, x, o, 4, p4)
                    p5 = _step(nodes, values, x, o, 5, p5)
                    p6 = _step(nodes, values, x, o, 6, p6)
                    p7 = _step(nodes, values, x, o, 7, p7)
                    p8 = _step(nodes, values, x, o, 8, p8)
                    p9 = _step(nodes, values, x, o, 9, p9)
                    p10 = _step(nodes, values, x, o, 10, p10)
                    p11 = _step(nodes, values, x, o, 11, p11)
                    p12 = _step(nodes, values, x, o, 12, p12)
                    p13 = _step(nodes, values, x, o, 13, p13)
                    p14 = _step(nodes, values, x, o, 14, p14)
                    p15 = _step(nodes, values, x, o, 15, p15)
                s0 += values[p0]
                s1 += values[p1]
                s2 += values[p2]
                s3 += values[p3]
                s4 += values[p4]
                s5 += values[p5]
                s6 += values[p6]
                s7 += values[p7]
                s8 += values[p8]
                s9 += values[p9]
                s10 += values[p10]
                s11 += values[p11]
                s12 += values[p12]
                s13 += values[p13]
                s14 += values[p14]
                s15 += values[p15]
            out[r], out[r + 1], out[r + 2], out[r + 3] = s0, s1, s2, s3
            out[r + 4], out[r + 5], out[r + 6], out[r + 7] = s4, s5, s6, s7
            out[r + 8], out[r + 9], out[r + 10], out[r + 11] = s8, s9, s10, s11
            out[r + 12], out[r + 13], out[r + 14], out[r + 15] = s12, s13, s14, s15
    return out[:n]


def _warm_up_dump() -> dict:
    """A two-tree model in ``dump_model`` form: one split per missing-value treatment, then a
    single-leaf tree."""

    def split(index, feature, threshold, missing, default_left, left, right):
        return {
            "split_index": index,
            "split_feature": feature,
            "threshold": threshold,
            "decision_type": "<=",
            "missing_type": missing,
            "default_left": default_left,
            "left_child": left,
            "right_child": right,
        }

    def leaf(value):
        return {"leaf_value": value}

    tree = split(
        0,
        0,
        0.5,
        "NaN",
        False,
        split(1, 1, -1.0, "Zero", False, leaf(1.0), leaf(2.0)),
        split(2, 1, 3.0, "None", False, leaf(4.0), leaf(8.0)),
    )
    return {
        "num_class": 1,
        "num_tree_per_iteration": 1,
        "max_feature_idx": 1,
        "objective": "regression",
        "tree_info": [{"tree_structure": tree}, {"tree_structure": leaf(16.0)}],
    }


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for float32 and float64 C-contiguous
    matrices, writable or read-only, and check them on a hand-made model."""
    compiled = CompiledTrees.from_dump(_warm_up_dump())
    # NaN goes right by default, then reads as 0.0; a zero goes right by default; plain values
    matrix = np.array([[np.nan, np.nan], [0.25, 0.0], [0.5, -2.0], [0.75, 5.0]])
    expected = np.array([20.0, 18.0, 17.0, 24.0])
    for dtype in (np.float64, np.float32):
        for writeable in (True, False):
            typed = matrix.astype(dtype)
            typed.flags.writeable = writeable
            if not np.array_equal(compiled.predict(typed), expected):
                raise AssertionError("compiled trees self-test failed")
