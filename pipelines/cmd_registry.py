"""`ranker registry ...`: publish model versions, inspect them, promote through the gate, roll back.

Logic lives in ``ranker.registry``; these commands parse options, call it and print.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ranker.errors import RankerError


def _registry(ctx: click.Context):
    from ranker.registry import Registry

    return Registry.from_settings(ctx.obj)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def register(cli: click.Group) -> None:
    from ranker.registry.gate import GatePolicy
    from ranker.registry.registry import STAGES

    defaults = GatePolicy()

    @cli.group()
    def registry() -> None:
        """Model registry: versions, stage pointers (staging, production), promotion gate, audit log.

        Location from RANKER_REGISTRY_URI: empty → $RANKER_HOME/artifacts/registry, file:///abs/path,
        or s3://bucket/prefix (endpoint and credentials from the standard AWS_* variables).
        """

    @registry.command("publish")
    @click.argument("model_dir", type=click.Path(path_type=Path))
    @click.pass_context
    def publish(ctx: click.Context, model_dir: Path) -> None:
        """Upload MODEL_DIR (model.txt + card.json) as an immutable version.

        Re-publishing the same folder is a no-op; different content under an existing version is refused.
        """
        result = _registry(ctx).publish(model_dir)
        verb = "published" if result.created else "already published (unchanged)"
        click.echo(f"{verb}: {result.name} {result.version} sha256={result.model_sha256} in {result.location}")

    @registry.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.pass_context
    def list_(ctx: click.Context, as_json: bool) -> None:
        """List every complete version of every model, with the stages pointing at it."""
        reg = _registry(ctx)
        rows = []
        for name in reg.list_models():
            stages = reg.stages(name)
            for info in reg.list_versions(name):
                row = info.to_dict()
                row["stages"] = [s for s, p in stages.items() if p.version == info.version]
                rows.append(row)
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            click.echo(f"no models in {reg.location}")
            return
        click.echo(f"{'name':<20} {'version':<34} {'created_at':<27} {'feature_service':<22} stages")
        for row in rows:
            click.echo(
                f"{row['name']:<20} {row['version']:<34} {row['created_at']:<27} {row['feature_service']:<22} "
                f"{','.join(row['stages'])}"
            )

    @registry.command("show")
    @click.argument("name")
    @click.option("--version", "version", default=None, help="Version to show.")
    @click.option("--stage", type=click.Choice(STAGES), default=None, help="Show the version a stage serves.")
    @click.option("--json", "as_json", is_flag=True, help="Print the card as JSON, exactly as published.")
    @click.pass_context
    def show(ctx: click.Context, name: str, version: str | None, stage: str | None, as_json: bool) -> None:
        """Print the model card of NAME (default: the production version, else the newest)."""
        if version and stage:
            raise RankerError("give --version or --stage, not both")
        reg = _registry(ctx)
        if version is None and stage is None:
            if reg.pointer(name, "production") is not None:
                stage = "production"
            else:
                versions = reg.require_model(name)
                version = versions[-1].version
        card = reg.card(name, version=version, stage=stage)
        if as_json:
            _echo_json(card)
            return
        stages = [s for s, p in reg.stages(name).items() if p.version == card["version"]]
        click.echo(f"{card['name']} {card['version']}" + (f"  [{', '.join(stages)}]" if stages else ""))
        for key in ("created_at", "feature_service", "model_sha256"):
            click.echo(f"  {key:<16} {card.get(key)}")
        click.echo(f"  {'features':<16} {len(card['features'])}: {', '.join(card['features'])}")
        for metric, value in sorted(card.get("metrics", {}).items()):
            click.echo(f"  metric {metric:<9} {json.dumps(value, sort_keys=True)}")

    @registry.command("promote")
    @click.argument("name")
    @click.argument("version")
    @click.option("--to", "stage", type=click.Choice(STAGES), required=True, help="Stage to point at VERSION.")
    @click.option("--force", is_flag=True, help="Promote even if the gate fails (needs --reason; audited).")
    @click.option("--reason", default=None, help="Why; required with --force, recorded in the audit log.")
    @click.option(
        "--margin",
        type=float,
        default=defaults.margin,
        show_default=True,
        help="Lower 95% CI bound of NDCG@10 gain must reach this (negative = non-inferiority).",
    )
    @click.option(
        "--slice-tolerance",
        type=float,
        default=defaults.slice_tolerance,
        show_default=True,
        help="Largest allowed NDCG@10 drop on any slice.",
    )
    @click.option(
        "--predict-budget-ms",
        type=float,
        default=defaults.predict_budget_ms,
        show_default=True,
        help="Largest median predict time for 200 candidates.",
    )
    @click.pass_context
    def promote(
        ctx: click.Context,
        name: str,
        version: str,
        stage: str,
        force: bool,
        reason: str | None,
        margin: float,
        slice_tolerance: float,
        predict_budget_ms: float,
    ) -> None:
        """Point stage --to at NAME VERSION after the gate compares it with the production model."""
        policy = GatePolicy(margin=margin, slice_tolerance=slice_tolerance, predict_budget_ms=predict_budget_ms)
        _promote_through_gate(ctx, name, version, stage=stage, policy=policy, force=force, reason=reason)

    @cli.command("deploy")
    @click.option("--surface", type=click.Choice(["search", "recs"]), required=True, help="Which ranker.")
    @click.option(
        "--model-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Model folder to publish first. Default: the newest under artifacts/models/NAME/.",
    )
    @click.option(
        "--margin",
        type=float,
        default=defaults.margin,
        show_default=True,
        help="Lower 95% CI bound of NDCG@10 gain must reach this (negative = non-inferiority).",
    )
    @click.option(
        "--slice-tolerance",
        type=float,
        default=defaults.slice_tolerance,
        show_default=True,
        help="Largest allowed NDCG@10 drop on any slice.",
    )
    @click.option(
        "--predict-budget-ms",
        type=float,
        default=defaults.predict_budget_ms,
        show_default=True,
        help="Largest median predict time for 200 candidates.",
    )
    @click.pass_context
    def deploy(
        ctx: click.Context,
        surface: str,
        model_dir: Path | None,
        margin: float,
        slice_tolerance: float,
        predict_budget_ms: float,
    ) -> None:
        """Publish the newest trained model of a surface, evaluate it against the production model on
        the same recent holdout, and promote it to production only if the gate passes (exit 1 if not)."""
        from ranker.training.train import MODEL_NAMES

        name = MODEL_NAMES[surface]
        if model_dir is None:
            candidates = sorted((ctx.obj.artifacts_dir / "models" / name).glob("*/card.json"))
            if not candidates:
                raise RankerError(
                    f"no trained {name} under {ctx.obj.artifacts_dir / 'models' / name}: run `ranker train "
                    f"--surface {surface}`"
                )
            model_dir = candidates[-1].parent
        published = _registry(ctx).publish(model_dir)
        click.echo(
            f"published {published.name} {published.version}" + ("" if published.created else " (already there)")
        )
        policy = GatePolicy(margin=margin, slice_tolerance=slice_tolerance, predict_budget_ms=predict_budget_ms)
        _promote_through_gate(ctx, name, published.version, stage="production", policy=policy, force=False, reason=None)

    @registry.command("rollback")
    @click.argument("name")
    @click.option("--stage", type=click.Choice(STAGES), default="production", show_default=True)
    @click.option("--reason", default=None, help="Why; recorded in the audit log.")
    @click.pass_context
    def rollback(ctx: click.Context, name: str, stage: str, reason: str | None) -> None:
        """Point --stage back at the version it served before the last promotion."""
        change = _registry(ctx).rollback(name, stage=stage, reason=reason)
        click.echo(f"{name} {stage}: {change.from_version} -> {change.to_version} (rolled back)")

    @registry.command("audit")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.pass_context
    def audit(ctx: click.Context, name: str, as_json: bool) -> None:
        """Print the audit log of NAME (publish, promote, force, rollback), oldest first."""
        events = _registry(ctx).audit_log(name)
        if as_json:
            _echo_json(events)
            return
        for e in events:
            gate = e.get("gate") or {}
            gate_note = (
                ""
                if not gate
                else (" gate=pass" if gate.get("passed") else f" gate=FAIL({','.join(gate.get('failed', []))})")
            )
            click.echo(
                f"{e['when']} {e['action']:<8} {e.get('stage') or '-':<10} {e.get('from') or '-'} -> "
                f"{e.get('to')} by {e['who']}{gate_note}" + (f" reason={e['reason']!r}" if e.get("reason") else "")
            )


def _promote_through_gate(
    ctx: click.Context, name: str, version: str, *, stage: str, policy, force: bool, reason: str | None
) -> None:
    """Evaluate VERSION against the production model on the same holdout, then move the pointer."""
    from ranker.registry.gate import evaluate_gate
    from ranker.registry.evidence import gate_evidence

    if force and not (reason or "").strip():
        raise RankerError("--force needs --reason: forced promotions are audited with a justification")
    reg = _registry(ctx)
    challenger = reg.fetch(name, version=version)
    champion = reg.fetch(name, stage="production") if reg.pointer(name, "production") else None
    if champion is not None and stage == "production" and champion.model_sha256 == challenger.model_sha256:
        click.echo(f"{name} production already serves this model ({champion.version}, same model.txt); nothing to do")
        return
    evidence = gate_evidence(ctx.obj, challenger_dir=challenger.path, champion_dir=champion.path if champion else None)
    result = evaluate_gate(evidence, policy)
    click.echo(f"challenger {name} {version} vs champion {champion.version if champion else '(none)'} for {stage}")
    click.echo(result.format())
    if not result.passed and not force:
        click.echo(f"error: not promoted: {result.summary()}", err=True)
        ctx.exit(1)
    change = reg.promote(name, version, stage=stage, gate=result, force=force, reason=reason)
    if not change.changed:
        click.echo(f"{name} {stage} already serves {version}; nothing changed")
    else:
        forced = " (FORCED, audited)" if force else ""
        click.echo(f"{name} {stage}: {change.from_version or '(none)'} -> {change.to_version}{forced}")
