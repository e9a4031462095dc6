"""Model registry: immutable model versions, stage pointers with rollback, verified loading, and the
promotion gate. Backends: a local folder (default) or S3, chosen by ``Settings.registry_uri``.

Typical use::

    registry = Registry.from_settings(settings)
    registry.publish(model_dir)
    result = evaluate_gate(evidence, GatePolicy())
    registry.promote("search_ranker", version, stage="production", gate=result)
    model = registry.fetch("search_ranker", stage="production")   # verified LoadedModel
    booster = model.booster()
"""

from ranker.registry.gate import (
    GateCheck,
    GateEvidence,
    GatePolicy,
    GateResult,
    evaluate_gate,
    measure_predict_ms,
)
from ranker.registry.registry import (
    STAGES,
    GateFailed,
    LoadedModel,
    PointerChange,
    PublishResult,
    Registry,
    StagePointer,
    VersionInfo,
)
from ranker.registry.store import LocalStore, ObjectStore, PreconditionFailed, S3Store, store_from_uri

__all__ = [
    "STAGES",
    "GateCheck",
    "GateEvidence",
    "GateFailed",
    "GatePolicy",
    "GateResult",
    "LoadedModel",
    "LocalStore",
    "ObjectStore",
    "PointerChange",
    "PreconditionFailed",
    "PublishResult",
    "Registry",
    "S3Store",
    "StagePointer",
    "VersionInfo",
    "evaluate_gate",
    "measure_predict_ms",
    "store_from_uri",
]
