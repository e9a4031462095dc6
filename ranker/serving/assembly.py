"""One request's feature matrix, assembled from the groups' values as the read rounds bring them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from ranker.serving.on_demand import frame_of, output_column
from ranker.serving.values import coerced

if TYPE_CHECKING:
    import pandas as pd

    from ranker.serving.plan import Plan


class Assembly:
    """One request's matrix (unique-item rows, float64), filled group by group as the rounds bring
    them: a group's columns once its values are in, an on-demand view once every group it reads is
    (round 1's while Redis answers round 2), then defaults and the float32 cast, exactly as
    :func:`ranker.features.matrix.feature_matrix` applies them to Feast's output."""

    def __init__(self, plan: Plan, u: int, query: str, request_ts: int) -> None:
        self.plan = plan
        self.m = np.empty((u, plan.n_features), dtype=np.float64)
        self.placed: set = set()  # groups whose columns are in
        self.done: set = set()  # on-demand views computed (indices into plan.odfvs)
        self.inputs: dict = {}  # on-demand inputs available so far, as the transforms take them
        if "request_ts" in plan.request_fields:
            self.inputs["request_ts"] = np.full(u, float(request_ts))  # float64, as _num makes of int64
        if "query_text" in plan.request_fields:
            self.inputs["query_text"] = [query] * u

    def add(self, num: list, strs: list, ready: Iterable[int]) -> None:
        """Place the groups of ``ready`` (indices of groups whose rows are all in ``num``/``strs``)
        not placed yet, and run the on-demand views they complete."""
        plan, m = self.plan, self.m
        new = set(ready) - self.placed
        if not new:
            return
        self.placed |= new
        for g, js, ks in plan.columns:
            if g in new:
                m[:, js] = num[g][:, ks]
        for j, g, k in plan.string_columns:
            if g in new:
                m[:, j] = coerced(strs[g][:, k])
        inputs = self.inputs
        for name, (g, kind, k) in plan.odfv_inputs:
            if g in new:
                inputs[name] = num[g][:, k] if kind == "num" else strs[g][:, k].tolist()
        frame: pd.DataFrame | None = None
        for i, view in enumerate(plan.odfvs):
            if i in self.done or not view.groups <= self.placed:
                continue
            self.done.add(i)
            if view.takes_mapping:  # verified at plan time: the same values without a DataFrame
                out = view.function(dict(inputs))
            else:  # the DataFrame Feast would pass
                if frame is None:
                    frame = frame_of(inputs)
                out = view.function(frame)
            for j, name in view.outputs:
                m[:, j] = output_column(out, name)

    def matrix(self) -> np.ndarray:
        """The float32 matrix, defaults applied where a value is missing."""
        plan, m = self.plan, self.m
        if plan.has_default.any():
            m = np.where(np.isnan(m) & plan.has_default, plan.defaults, m)
        return m.astype(np.float32)
