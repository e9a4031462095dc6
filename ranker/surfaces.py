"""The ranking surfaces and the registered model name of each (shared by training, the registry,
serving and the scorer, so none of them imports another for a name)."""

MODEL_NAMES = {"search": "search_ranker", "recs": "recs_ranker"}
