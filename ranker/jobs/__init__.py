"""Scheduled jobs: the daily and retrain pipelines as ordered, resumable steps with a run record per
run (``artifacts/runs/PIPELINE/RUN_ID.json``). The steps call the same library functions as the
`ranker` commands; ``ranker pipeline daily|retrain`` runs them, and so does the Airflow DAG in infra/."""
