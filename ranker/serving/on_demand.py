"""On-demand views at serving time: the scorer runs the very function Feast stored for each view.

Feast keeps an on-demand view's function in its registry (serialised by value when
``feast apply`` runs ``feature_repo/on_demand.py``) and runs it for ``get_historical_features``
(training) and ``get_online_features``. The scorer takes the same object from the same registry
(:func:`stored_function`), so editing a function body in ``feature_repo/on_demand.py`` changes
training and serving together (``tests/test_online_features.py`` checks the identity for every view
and the served values after such an edit).

The functions of :mod:`ranker.features.transforms` (which the repository's views delegate to)
accept a dict of columns as well as a DataFrame, and skip pandas for a dict (no DataFrame built
per request). Whether a stored function may be called that way is decided once, when the plan is built,
by :func:`takes_mapping`: it is called on a small probe both ways and must give the same values bit
for bit; otherwise (a user-defined function written for DataFrames) it always gets the DataFrame
Feast would pass.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from ranker.serving.values import coerced

# Probe columns: missing values, zeros, negatives, large and non-ASCII values, the strings the
# repository's functions special-case ("one size"), and a request value repeated on every row.
_PROBE_NUMBERS = np.array([1.5, np.nan, 0.0, 250.0, -3.0, 1.0e9, 42.0])
_PROBE_TIMES = np.array([1.7e9, 1.7e9, 1.7e9 + 3600, 0.0, 1.8e9, 1.7e9, 1.7e9 - 86400])
_PROBE_TEXTS = ["m", None, "one size", "red velvet dress", "", "größe M", "m"]


def stored_function(odfv: Any) -> Callable:
    """The function Feast stored for an on-demand view (what its own online and offline paths run)."""
    return odfv.feature_transformation.udf


def frame_of(inputs: Mapping[str, Any]) -> pd.DataFrame:
    """The DataFrame Feast would pass: numbers as float64 with NaN, strings as objects with None."""
    return pd.DataFrame(
        {k: (np.array(v, dtype=object) if isinstance(v, list) else v) for k, v in inputs.items()}, copy=False
    )


def output_column(out: Any, name: str) -> np.ndarray:
    """One output of an on-demand function as float64, coerced as the matrix coerces it."""
    col = np.asarray(out[name])
    return col if col.dtype.kind == "f" else coerced(col)


def probe_inputs(kinds: Mapping[str, str]) -> dict:
    """A small input of the given columns (``"num"`` or ``"str"``), as the scorer builds them."""
    out: dict = {}
    for name, kind in kinds.items():
        if name == "request_ts":
            out[name] = _PROBE_TIMES.copy()
        elif name == "query_text":
            out[name] = ["red dress"] * len(_PROBE_TEXTS)  # one query per request
        elif kind == "num":
            out[name] = _PROBE_NUMBERS.copy()
        else:
            out[name] = list(_PROBE_TEXTS)
    return out


def takes_mapping(function: Callable, kinds: Mapping[str, str]) -> bool:
    """Whether ``function`` gives bit-identical outputs on a dict of columns and on the DataFrame
    Feast would pass (probed once, at plan time); False when the dict call fails."""
    inputs = probe_inputs(kinds)
    try:
        want = function(frame_of(inputs))
        names = list(want.columns)
    except Exception:  # noqa: BLE001 - a function that fails on the probe is left to its DataFrame path
        return False
    try:
        got = function(dict(inputs))
        for name in names:
            a, b = output_column(got, name), output_column(want, name)
            if a.shape != b.shape or a.tobytes() != b.tobytes():
                return False
    except Exception:  # noqa: BLE001 - a function written for DataFrames only
        return False
    return True
