"""The scorer's compiled trees (ranker.serving.trees, numba) against lleaves (LLVM-compiled LightGBM
trees), each with LightGBM's Booster.predict as the anchor in the same process.

lleaves 1.3.0 needs llvmlite 0.44 (it breaks on >= 0.45), which numba 0.68 (the scorer's) cannot
use: the two cannot share one environment. So lleaves runs in a separate virtualenv
(``--lleaves-python``, e.g. one made with ``python -m venv /tmp/lleaves && /tmp/lleaves/bin/pip
install lleaves==1.3.0 'llvmlite<0.45' lightgbm==4.7.0``) on the same model file and the same
matrices; the two processes alternate (ours, lleaves, ours, lleaves...) and each reports its median
per call next to Booster.predict's (1 thread) of the same process, so the comparison is a ratio
within each process plus medians from interleaved rounds.

    .venv/bin/python benchmarks/trees_vs_lleaves.py --lleaves-python /tmp/lleaves/bin/python [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import _stack

CHILD = r"""
import json, sys, time
import numpy as np
import lightgbm as lgb
import lleaves

model_file, matrices_file, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
booster = lgb.Booster(model_file=model_file)
t0 = time.perf_counter()
model = lleaves.Model(model_file=model_file)
model.compile()
compile_s = time.perf_counter() - t0
out = {"compile_s": compile_s, "sizes": {}}
matrices = np.load(matrices_file)
for key in matrices.files:
    X = matrices[key]
    want = booster.predict(X, raw_score=True, num_threads=1)
    got = model.predict(X, n_jobs=1)
    lib, ll = [], []
    for i in range(calls + 20):
        t = time.perf_counter(); booster.predict(X, raw_score=True, num_threads=1); a = time.perf_counter() - t
        t = time.perf_counter(); model.predict(X, n_jobs=1); b = time.perf_counter() - t
        if i >= 20:
            lib.append(a * 1e3); ll.append(b * 1e3)
    out["sizes"][key] = {"booster_ms": float(np.median(lib)), "lleaves_ms": float(np.median(ll)),
                         "max_abs_diff": float(np.max(np.abs(got - want))),
                         "bit_identical": bool(np.array_equal(got.view(np.uint64), want.view(np.uint64)))}
print(json.dumps(out))
"""


def _ours(booster, compiled, matrices: dict, calls: int) -> dict:
    out = {}
    for key, X in matrices.items():
        lib, ours = [], []
        for i in range(calls + 20):
            t = time.perf_counter()
            booster.predict(X, raw_score=True, num_threads=1)
            a = time.perf_counter() - t
            t = time.perf_counter()
            compiled.predict(X)
            b = time.perf_counter() - t
            if i >= 20:
                lib.append(a * 1e3)
                ours.append(b * 1e3)
        exact = np.array_equal(
            compiled.predict(X).view(np.uint64), booster.predict(X, raw_score=True, num_threads=1).view(np.uint64)
        )
        out[key] = {"booster_ms": float(np.median(lib)), "numba_ms": float(np.median(ours)), "bit_identical": exact}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lleaves-python", required=True, help="python of a virtualenv with lleaves installed")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 1000])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from predict_latency import features, synthetic_model

    from ranker.serving.trees import CompiledTrees, warm_up

    print(_stack.machine_speed())
    warm_up()
    booster = synthetic_model()
    compiled = CompiledTrees.from_booster(booster)
    compiled.verify(booster)
    rng = np.random.default_rng(1)
    matrices = {str(n): features(rng, n, compiled.num_features) for n in args.sizes}
    with tempfile.TemporaryDirectory(prefix="trees-bench-") as tmp:
        model_file, matrices_file = Path(tmp) / "model.txt", Path(tmp) / "matrices.npz"
        booster.save_model(str(model_file))
        np.savez(matrices_file, **matrices)
        print(
            f"synthetic lambdarank: {compiled.num_trees} trees, {compiled.num_features} features; "
            f"float32 matrices; medians of {args.calls} calls, 1 thread"
        )
        for r in range(args.rounds):
            ours = _ours(booster, compiled, matrices, args.calls)
            child = subprocess.run(
                [args.lleaves_python, "-c", CHILD, str(model_file), str(matrices_file), str(args.calls)],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                raise SystemExit(f"lleaves failed in {args.lleaves_python}:\n{child.stderr.strip()[-2000:]}")
            theirs = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"round {r + 1} (lleaves compile {theirs['compile_s']:.1f} s):")
            for key in matrices:
                a, b = ours[key], theirs["sizes"][key]
                print(
                    f"  {key:>5} rows  numba {a['numba_ms']:.3f} ms = {a['numba_ms'] / a['booster_ms']:.2f} x Booster "
                    f"({a['booster_ms']:.3f} ms; bit-identical {a['bit_identical']})   "
                    f"lleaves {b['lleaves_ms']:.3f} ms = {b['lleaves_ms'] / b['booster_ms']:.2f} x Booster "
                    f"({b['booster_ms']:.3f} ms; bit-identical {b['bit_identical']}, max |diff| "
                    f"{b['max_abs_diff']:.1e})"
                )
    print(_stack.machine_speed())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
