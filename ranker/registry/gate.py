"""The promotion gate: may a challenger model replace the champion?

Pure functions over evidence computed elsewhere (``ranker.registry.evidence.gate_evidence`` scores
both models on the same holdout requests). Nothing here reads files except
:func:`measure_predict_ms`, which times a model the caller points at.

Checks, each reported with its figures so a refusal can be argued with:

``feature_service``   the card's Feast feature service is registered (serving can fetch its features)
``ndcg_vs_champion``  lower bound of the paired-bootstrap 95% CI of mean(challenger - champion)
                      NDCG@10 over the same requests is >= ``margin`` (negative = non-inferiority);
                      for logs without impressions the NDCG is per test user over the full
                      catalogue (``GateEvidence.basis``, see ``ranker.registry.evidence``)
``slice_regression``  no slice's NDCG@10 drops by more than ``slice_tolerance`` (absolute)
``predict_latency``   median Booster.predict time for 200 candidates is within ``predict_budget_ms``

With no champion (first production model) the two comparison checks pass, saying why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ranker.errors import RankerError
from ranker.training.metrics import paired_bootstrap_ci

CHECK_FEATURE_SERVICE = "feature_service"
CHECK_NDCG = "ndcg_vs_champion"
CHECK_SLICES = "slice_regression"
CHECK_LATENCY = "predict_latency"


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the gate. Defaults are the production policy; override per promotion."""

    margin: float = 0.0
    slice_tolerance: float = 0.02
    predict_budget_ms: float = 5.0
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin):
            raise RankerError(f"gate margin must be a finite number, got {self.margin!r}")
        if not (math.isfinite(self.slice_tolerance) and self.slice_tolerance >= 0):
            raise RankerError(f"gate slice_tolerance must be >= 0, got {self.slice_tolerance!r}")
        if not (math.isfinite(self.predict_budget_ms) and self.predict_budget_ms > 0):
            raise RankerError(f"gate predict_budget_ms must be > 0, got {self.predict_budget_ms!r}")
        if int(self.n_bootstrap) < 100:
            raise RankerError(f"gate n_bootstrap must be >= 100 for a stable 95% CI, got {self.n_bootstrap!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "margin": float(self.margin),
            "slice_tolerance": float(self.slice_tolerance),
            "predict_budget_ms": float(self.predict_budget_ms),
            "n_bootstrap": int(self.n_bootstrap),
            "seed": int(self.seed),
        }


@dataclass(frozen=True, eq=False)
class GateEvidence:
    """What the gate judges. Per-request arrays are aligned: element i of both is the same request.

    ``champion_ndcg``/``champion_slice_ndcg`` are None when there is no production model yet.
    """

    challenger_ndcg: np.ndarray
    champion_ndcg: np.ndarray | None
    challenger_slice_ndcg: Mapping[str, float]
    champion_slice_ndcg: Mapping[str, float] | None
    feature_service_exists: bool
    predict_ms: float
    feature_service: str = ""
    # what the NDCG arrays are over: "requests" (logged lists), "sampled" (sampled groups) or
    # "full_catalogue" (per test user over every live listing: logs without impressions)
    basis: str = "requests"

    def __post_init__(self) -> None:
        challenger = np.asarray(self.challenger_ndcg, dtype=np.float64).ravel()
        if challenger.size == 0:
            raise RankerError("gate evidence has no holdout requests (challenger_ndcg is empty)")
        if not np.all(np.isfinite(challenger)):
            raise RankerError("gate evidence: challenger_ndcg contains NaN/inf; drop requests without relevant items")
        object.__setattr__(self, "challenger_ndcg", challenger)
        if self.champion_ndcg is not None:
            champion = np.asarray(self.champion_ndcg, dtype=np.float64).ravel()
            if champion.shape != challenger.shape:
                raise RankerError(
                    f"gate evidence: champion has {champion.size} requests, challenger {challenger.size}; "
                    "both must be scored on the same requests in the same order"
                )
            if not np.all(np.isfinite(champion)):
                raise RankerError("gate evidence: champion_ndcg contains NaN/inf")
            object.__setattr__(self, "champion_ndcg", champion)
        object.__setattr__(self, "challenger_slice_ndcg", dict(self.challenger_slice_ndcg or {}))
        if self.champion_slice_ndcg is not None:
            object.__setattr__(self, "champion_slice_ndcg", dict(self.champion_slice_ndcg))
        if not math.isfinite(float(self.predict_ms)) or self.predict_ms < 0:
            raise RankerError(f"gate evidence: predict_ms must be a non-negative number, got {self.predict_ms!r}")


@dataclass(frozen=True)
class GateCheck:
    """One named check: did it pass, and the numbers it was decided on."""

    name: str
    passed: bool
    figures: dict[str, Any]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "figures": self.figures, "detail": self.detail}


@dataclass(frozen=True)
class GateResult:
    """All checks of one gate evaluation; passes iff every check passes."""

    checks: tuple[GateCheck, ...]
    policy: GatePolicy = field(default_factory=GatePolicy)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def check(self, name: str) -> GateCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": [check.name for check in self.failed],
            "policy": self.policy.to_dict(),
            "checks": [check.to_dict() for check in self.checks],
        }

    def summary(self) -> str:
        """One line naming the failed checks and their key figures (for error messages)."""
        if self.passed:
            return "gate passed"
        return "gate failed: " + "; ".join(f"{c.name} ({c.detail})" for c in self.failed)

    def format(self) -> str:
        """A human table: one row per check, failed ones marked FAIL with their figures."""
        header = (
            "gate: PASSED"
            if self.passed
            else (
                f"gate: FAILED ({len(self.failed)} of {len(self.checks)} checks failed: "
                f"{', '.join(c.name for c in self.failed)})"
            )
        )
        width = max([len("check")] + [len(c.name) for c in self.checks])
        lines = [header, f"  {'check'.ljust(width)}  result  figures"]
        for check in self.checks:
            mark = "pass" if check.passed else "FAIL"
            lines.append(f"  {check.name.ljust(width)}  {mark.ljust(6)}  {check.detail}")
        return "\n".join(lines)


def evaluate_gate(evidence: GateEvidence, policy: GatePolicy | None = None) -> GateResult:
    """Run every check of ``policy`` (default :class:`GatePolicy`) on ``evidence``; a failing check is
    reported in the result, never raised. Positional arguments are accepted as the contract spells them."""
    policy = policy or GatePolicy()
    checks = (
        _check_feature_service(evidence),
        _check_ndcg(evidence, policy),
        _check_slices(evidence, policy),
        _check_latency(evidence, policy),
    )
    return GateResult(checks=checks, policy=policy)


def _check_feature_service(evidence: GateEvidence) -> GateCheck:
    name = evidence.feature_service or "(card's feature service)"
    ok = bool(evidence.feature_service_exists)
    return GateCheck(
        name=CHECK_FEATURE_SERVICE,
        passed=ok,
        figures={"feature_service": evidence.feature_service, "exists": ok},
        detail=f"{name} {'is registered' if ok else 'is NOT registered in the Feast registry'}",
    )


def _check_ndcg(evidence: GateEvidence, policy: GatePolicy) -> GateCheck:
    challenger = evidence.challenger_ndcg
    if evidence.champion_ndcg is None:
        return GateCheck(
            name=CHECK_NDCG,
            passed=True,
            figures={
                "champion": None,
                "challenger_mean": float(challenger.mean()),
                "n_requests": int(challenger.size),
                "basis": evidence.basis,
            },
            detail=f"no champion; challenger NDCG@10={challenger.mean():.4f} over {challenger.size} {_unit(evidence)}",
        )
    champion = evidence.champion_ndcg
    diff = challenger - champion
    ci = paired_bootstrap_ci(challenger, champion, n_boot=policy.n_bootstrap, seed=policy.seed)
    low, high = ci["low"], ci["high"]
    ok = low >= policy.margin
    figures = {
        "challenger_mean": float(challenger.mean()),
        "champion_mean": float(champion.mean()),
        "mean_diff": float(diff.mean()),
        "ci95_low": low,
        "ci95_high": high,
        "margin": float(policy.margin),
        "n_requests": int(diff.size),
        "n_bootstrap": int(policy.n_bootstrap),
        "basis": evidence.basis,
    }
    detail = (
        ("full-catalogue " if evidence.basis == "full_catalogue" else "")
        + f"NDCG@10 challenger={figures['challenger_mean']:.4f} champion={figures['champion_mean']:.4f} "
        f"diff={figures['mean_diff']:+.4f} ci95=[{low:+.4f}, {high:+.4f}] "
        f"{'>=' if ok else '<'} margin {policy.margin:+.4f} (n={diff.size} {_unit(evidence)})"
    )
    return GateCheck(name=CHECK_NDCG, passed=ok, figures=figures, detail=detail)


def _check_slices(evidence: GateEvidence, policy: GatePolicy) -> GateCheck:
    if evidence.champion_slice_ndcg is None:
        return GateCheck(name=CHECK_SLICES, passed=True, figures={"champion": None}, detail="no champion")
    deltas: dict[str, float | None] = {}
    regressed: list[str] = []
    missing: list[str] = []
    for slice_name, champ_value in sorted(evidence.champion_slice_ndcg.items()):
        champ = _finite_or_none(champ_value)
        if champ is None:
            continue  # the champion has no score on this slice (no requests): nothing to regress from
        chall = _finite_or_none(evidence.challenger_slice_ndcg.get(slice_name))
        if chall is None:
            missing.append(slice_name)
            deltas[slice_name] = None
            continue
        deltas[slice_name] = chall - champ
        # A drop of exactly the tolerance is allowed; the epsilon absorbs float noise in the subtraction.
        if chall - champ < -policy.slice_tolerance - 1e-12:
            regressed.append(slice_name)
    scored = {k: v for k, v in deltas.items() if v is not None}
    worst = min(scored, key=lambda k: scored[k]) if scored else None
    ok = not regressed and not missing
    figures = {
        "tolerance": float(policy.slice_tolerance),
        "deltas": deltas,
        "regressed": regressed,
        "missing": missing,
        "worst_slice": worst,
        "worst_delta": scored[worst] if worst is not None else None,
    }
    if ok:
        detail = (
            f"{len(scored)} slices, worst {worst} {scored[worst]:+.4f} >= -{policy.slice_tolerance:.4f}"
            if worst is not None
            else "no slices to compare"
        )
    else:
        parts = [
            f"{s} {evidence.champion_slice_ndcg[s]:.4f}->{evidence.challenger_slice_ndcg[s]:.4f} ({deltas[s]:+.4f})"
            for s in regressed
        ]
        parts += [f"{s} missing for challenger" for s in missing]
        detail = f"drop beyond -{policy.slice_tolerance:.4f}: " + ", ".join(parts)
    return GateCheck(name=CHECK_SLICES, passed=ok, figures=figures, detail=detail)


def _check_latency(evidence: GateEvidence, policy: GatePolicy) -> GateCheck:
    ms = float(evidence.predict_ms)
    ok = ms <= policy.predict_budget_ms
    return GateCheck(
        name=CHECK_LATENCY,
        passed=ok,
        figures={"predict_ms": ms, "budget_ms": float(policy.predict_budget_ms)},
        detail=f"predict {ms:.3f} ms {'<=' if ok else '>'} budget {policy.predict_budget_ms:.3f} ms (200 candidates)",
    )


def _unit(evidence: GateEvidence) -> str:
    return "users" if evidence.basis == "full_catalogue" else "requests"


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def measure_predict_ms(
    model_txt_path: Path | str, *, n_candidates: int = 200, repeats: int = 50, seed: int = 0
) -> float:
    """Median wall time (ms) of ``lightgbm.Booster.predict`` on ``n_candidates`` random float32 rows
    with the model's feature count, single-threaded (the scorer predicts one request per thread)."""
    import time

    import lightgbm  # lazy: importing lightgbm costs ~0.2 s and most callers only need the checks

    path = Path(model_txt_path)
    if not path.is_file():
        raise RankerError(f"cannot time predictions: {path} does not exist")
    booster = lightgbm.Booster(model_file=str(path))
    rows = np.random.default_rng(seed).random((int(n_candidates), booster.num_feature()), dtype=np.float32)
    for _ in range(3):  # warm-up: first calls pay for allocation and lazy initialisation
        booster.predict(rows, num_threads=1)
    timings = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        booster.predict(rows, num_threads=1)
        timings.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(timings))
