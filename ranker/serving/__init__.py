"""Serving-time code: the online feature path the scorer calls per request."""

from ranker.serving.features import FeatureRows, OnlineFeatures, OnlineStoreUnavailable

__all__ = ["FeatureRows", "OnlineFeatures", "OnlineStoreUnavailable"]
