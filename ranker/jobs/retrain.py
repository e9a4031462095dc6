"""The retrain pipeline, per surface: training set -> train -> evaluate -> publish -> gate -> staging
-> second gate -> production.

Each step calls the library function behind the matching `ranker` command (``ranker dataset build``,
``ranker train``, ``ranker evaluate``, ``ranker registry publish|promote``). Two gates:

* **staging**: the registry's gate (:func:`ranker.registry.gate.evaluate_gate`) against the
  production model on the challenger's holdout, with the staging policy (a non-inferiority margin
  by default: a staging model may be tried even if it is only as good as production).
* **production**: the same gate with the production policy (margin 0 by default: reliably not worse)
  plus two checks of its own: ``quality_bar`` (the evaluation beats every baseline) and
  ``registry_roundtrip`` (the copy the registry serves at staging, sha256-verified, predicts exactly
  what the evaluated model predicted on the holdout).

A refused gate is a decision, not an error: the step is ``blocked``, the later steps of that surface
are skipped and the run still succeeds (``--fail-on-blocked`` turns it into exit 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ranker.jobs.runs import PipelineError, Step, StepBlocked, StepContext, files_signature

PIPELINE = "retrain"
SURFACES = ("search", "recs")


@dataclass(frozen=True)
class RetrainOptions:
    surfaces: tuple[str, ...] = SURFACES
    start: str | None = None  # training-set window (UTC date or date-time), default all data
    end: str | None = None
    attribution_hours: float = 24.0
    seed: int = 42
    position_debias: bool = False
    bootstrap: int = 1000
    staging_margin: float = -0.01
    production_margin: float = 0.0
    slice_tolerance: float = 0.02
    predict_budget_ms: float = 5.0
    quality_bar: bool = True  # the production gate requires the evaluation to beat every baseline
    chunk_rows: int = 1_000_000

    def __post_init__(self) -> None:
        bad = [s for s in self.surfaces if s not in SURFACES]
        if not self.surfaces or bad:
            raise PipelineError(f"--surface must be one of {', '.join(SURFACES)}, got {', '.join(bad) or 'none'}")
        if self.staging_margin > self.production_margin:
            raise PipelineError("--staging-margin must not be stricter than --production-margin")

    def params(self) -> dict:
        out = asdict(self)
        out["surfaces"] = list(self.surfaces)
        return out


def _policy(params: dict, *, margin: float):
    from ranker.registry.gate import GatePolicy

    return GatePolicy(
        margin=margin, slice_tolerance=params["slice_tolerance"], predict_budget_ms=params["predict_budget_ms"]
    )


def _registry(ctx: StepContext):
    from ranker.registry import Registry

    return Registry.from_settings(ctx.settings, actor=f"pipeline:{PIPELINE}")


# ------------------------------------------------------------------------------------------ steps


def _dataset_step(surface: str) -> Step:
    def fingerprint(ctx: StepContext) -> dict:
        from ranker.jobs.daily import RAW_FILES

        s, p = ctx.settings, ctx.params
        return {
            "surface": surface,
            "start": p["start"],
            "end": p["end"],
            "attribution_hours": p["attribution_hours"],
            "tables": files_signature(s.features_dir.glob("*.parquet"), root=s.home),
            "events": files_signature([s.raw_dir / RAW_FILES[0]], root=s.home),
            "registry": s.feast_registry or files_signature([s.feast_dir / "registry.db"], root=s.home),
        }

    def run(ctx: StepContext) -> dict:
        from ranker.training.dataset import DatasetOptions, build_dataset, parse_utc

        p = ctx.params
        manifest = build_dataset(
            ctx.settings,
            DatasetOptions(
                surface=surface,
                start=parse_utc(p["start"], option="--start"),
                end=parse_utc(p["end"], option="--end"),
                attribution_hours=p["attribution_hours"],
                chunk_rows=p["chunk_rows"],
            ),
        )
        ctx.log(
            f"{manifest['rows']:,} rows, {manifest['groups']:,} requests, fingerprint {manifest['fingerprint'][:12]}"
        )
        return {k: manifest[k] for k in ("path", "fingerprint", "rows", "groups", "positives", "feature_service")}

    def still_valid(outputs: dict) -> bool:
        manifest = Path(outputs.get("path", "/nonexistent")).parent / "manifest.json"
        return manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") == outputs.get("fingerprint")

    return Step(
        f"dataset:{surface}",
        run,
        fingerprint=fingerprint,
        still_valid=still_valid,
        group=surface,
        description="point-in-time training set from Feast (ranker dataset build)",
    )


def _train_step(surface: str) -> Step:
    def run(ctx: StepContext) -> dict:
        from ranker.training.train import MODEL_NAMES, TrainOptions, train_model

        p = ctx.params
        fingerprint = ctx.outputs[f"dataset:{surface}"]["fingerprint"]
        options = TrainOptions(surface=surface, seed=p["seed"], position_debias=p["position_debias"])
        # Training is deterministic: a model already trained on this exact training set with these
        # options is the model this step would produce. Reuse it rather than mint a new version.
        wanted = {k: v for k, v in asdict(options).items() if k != "params"}
        for card_path in sorted(
            (ctx.settings.artifacts_dir / "models" / MODEL_NAMES[surface]).glob("*/card.json"), reverse=True
        ):
            card = json.loads(card_path.read_text())
            if card.get("dataset", {}).get("fingerprint") == fingerprint and card.get("options") == json.loads(
                json.dumps(wanted)
            ):
                ctx.log(f"reusing {card['version']}: trained on the same training set with the same options")
                return _model_outputs(card_path.parent, card, reused=True)
        out = train_model(ctx.settings, options)
        card = json.loads((out / "card.json").read_text())
        ctx.log(
            f"trained {card['version']}: best iteration {card['best_iteration']}, valid NDCG@10 "
            f"{card['valid_ndcg@10']:.4f}"
        )
        return _model_outputs(out, card, reused=False)

    return Step(f"train:{surface}", run, group=surface, description="LambdaRank model (ranker train)")


def _model_outputs(folder: Path, card: dict, *, reused: bool) -> dict:
    return {
        "model_dir": str(folder),
        "name": card["name"],
        "version": card["version"],
        "model_sha256": card["model_sha256"],
        "reused": reused,
    }


def _evaluate_step(surface: str) -> Step:
    def run(ctx: StepContext) -> dict:
        from ranker.training.evaluate import evaluate_model

        model_dir = Path(ctx.outputs[f"train:{surface}"]["model_dir"])
        card = json.loads((model_dir / "card.json").read_text())
        if not (card.get("metrics") or {}).get("test") or not (model_dir / "report.html").exists():
            metrics = evaluate_model(ctx.settings, model_dir, n_boot=ctx.params["bootstrap"])["metrics"]
        else:
            metrics = card["metrics"]
            ctx.log("already evaluated: metrics are in its card")
        test = metrics["test"]
        summary = {
            name: test[name]["ndcg@10"] for name in test if isinstance(test[name], dict) and "ndcg@10" in test[name]
        }
        ctx.log("test NDCG@10 " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if v is not None))
        return {
            "report": str(model_dir / "report.html"),
            "ndcg@10": summary,
            "quality_bar_failures": list(metrics.get("quality_bar_failures") or []),
        }

    return Step(f"evaluate:{surface}", run, group=surface, description="against the baselines (ranker evaluate)")


def _publish_step(surface: str) -> Step:
    def run(ctx: StepContext) -> dict:
        result = _registry(ctx).publish(ctx.outputs[f"train:{surface}"]["model_dir"])
        ctx.log(("published " if result.created else "already published ") + f"{result.name} {result.version}")
        return {"name": result.name, "version": result.version, "created": result.created, "location": result.location}

    return Step(
        f"publish:{surface}", run, group=surface, description="upload to the model registry (ranker registry publish)"
    )


def _contenders(ctx: StepContext, name: str, version: str):
    """The registry, the challenger (registry copy, sha256-verified) and the production model (or None)."""
    reg = _registry(ctx)
    challenger = reg.fetch(name, version=version)
    champion = reg.fetch(name, stage="production") if reg.pointer(name, "production") else None
    return reg, challenger, champion


def _gate(ctx: StepContext, challenger, champion, *, margin: float):
    """Challenger vs the current production model, on the challenger's holdout."""
    from ranker.registry.gate import evaluate_gate
    from ranker.registry.evidence import gate_evidence

    evidence = gate_evidence(
        ctx.settings, challenger_dir=challenger.path, champion_dir=champion.path if champion else None
    )
    return evaluate_gate(evidence, _policy(ctx.params, margin=margin))


def _staging_step(surface: str) -> Step:
    def run(ctx: StepContext) -> dict:
        published = ctx.outputs[f"publish:{surface}"]
        name, version = published["name"], published["version"]
        reg, challenger, champion = _contenders(ctx, name, version)
        if champion is not None and champion.model_sha256 == challenger.model_sha256:
            raise StepBlocked(
                f"production already serves this model ({champion.version})",
                {"version": version, "champion": champion.version, "gate": None},
            )
        result = _gate(ctx, challenger, champion, margin=ctx.params["staging_margin"])
        outputs = {"version": version, "champion": champion.version if champion else None, "gate": result.to_dict()}
        ctx.log(result.format().replace("\n", "\n    "))
        if not result.passed:
            raise StepBlocked(f"staging gate refused {name} {version}: {result.summary()}", outputs)
        change = reg.promote(name, version, stage="staging", gate=result)
        ctx.log(f"{name} staging: {change.from_version or '(none)'} -> {change.to_version}")
        return {**outputs, "changed": change.changed}

    return Step(f"staging:{surface}", run, group=surface, description="gate vs production, promote to staging")


def _production_step(surface: str) -> Step:
    def run(ctx: StepContext) -> dict:
        from ranker.registry.gate import GateCheck, GateResult
        from ranker.training.evaluate import holdout_frame, load_model, predict

        name, version = ctx.outputs[f"publish:{surface}"]["name"], ctx.outputs[f"publish:{surface}"]["version"]
        reg, challenger, champion = _contenders(ctx, name, version)
        result = _gate(ctx, challenger, champion, margin=ctx.params["production_margin"])
        staged = reg.pointer(name, "staging")
        failures = ctx.outputs[f"evaluate:{surface}"]["quality_bar_failures"]
        required = ctx.params["quality_bar"]
        quality = GateCheck(
            "quality_bar",
            not failures or not required,
            {"failures": failures, "required": required},
            "beats every baseline"
            if not failures
            else ("; ".join(failures) + ("" if required else " (not required: --no-quality-bar)")),
        )
        local = load_model(Path(ctx.outputs[f"train:{surface}"]["model_dir"]))
        frame, _ = holdout_frame(ctx.settings, local)
        served = load_model(reg.fetch(name, stage="staging").path) if staged and staged.version == version else None
        diff = float(np.max(np.abs(predict(served, frame) - predict(local, frame)))) if served is not None else None
        roundtrip = GateCheck(
            "registry_roundtrip",
            diff == 0.0,
            {"staging": staged.version if staged else None, "rows": int(len(frame)), "max_abs_diff": diff},
            f"staging serves {staged.version if staged else '(none)'}; registry copy vs evaluated model on "
            f"{len(frame):,} holdout rows: max |diff| {diff}",
        )
        combined = GateResult(checks=(*result.checks, quality, roundtrip), policy=result.policy)
        ctx.log(combined.format().replace("\n", "\n    "))
        outputs = {"version": version, "champion": champion.version if champion else None, "gate": combined.to_dict()}
        if not combined.passed:
            raise StepBlocked(f"production gate refused {name} {version}: {combined.summary()}", outputs)
        change = reg.promote(name, version, stage="production", gate=combined)
        ctx.log(f"{name} production: {change.from_version or '(none)'} -> {change.to_version}")
        return {**outputs, "changed": change.changed}

    return Step(
        f"production:{surface}",
        run,
        group=surface,
        description="second gate (production policy, quality bar, registry round trip), promote to production",
    )


def retrain_steps(surfaces: tuple[str, ...] = SURFACES) -> list[Step]:
    steps: list[Step] = []
    for surface in surfaces:
        steps += [
            _dataset_step(surface),
            _train_step(surface),
            _evaluate_step(surface),
            _publish_step(surface),
            _staging_step(surface),
            _production_step(surface),
        ]
    return steps


def outcome(record: dict) -> dict[str, str]:
    """Per surface, one line: what production serves after the run and why."""
    out = {}
    for surface in record["params"]["surfaces"]:
        steps = {s["name"]: s for s in record["steps"] if s.get("group") == surface}
        prod, staging = steps.get(f"production:{surface}", {}), steps.get(f"staging:{surface}", {})
        version = (steps.get(f"publish:{surface}", {}).get("outputs") or {}).get("version")
        if prod.get("status") == "succeeded":
            out[surface] = f"promoted {version} to production"
        elif staging.get("status") == "blocked":
            out[surface] = f"kept production: {staging.get('reason')}"
        elif prod.get("status") == "blocked":
            out[surface] = f"{version} in staging only: {prod.get('reason')}"
        else:
            failed = [s for s in steps.values() if s.get("status") == "failed"]
            out[surface] = f"failed at {failed[0]['name']}: {failed[0].get('error')}" if failed else "not run"
    return out
