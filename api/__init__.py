"""The Flask scorer: ``create_app`` (api.app), request schemas, the model holder with hot reload,
metrics, the OpenAPI document and the gunicorn settings used by ``ranker serve``.

Kept import-light (gunicorn's master imports ``api.gunicorn_conf``): ``create_app`` is resolved lazily.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
