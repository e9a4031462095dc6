"""Airflow DAGs for teams that run Airflow: the same `ranker pipeline` commands as cron or the model
workflow, one Airflow task per pipeline step.

Every task of one schedule date runs ``ranker pipeline NAME --run-id NAME-{{ ds_nodash }} --step STEP``:
all tasks write to the same run record (artifacts/runs/NAME/NAME-YYYYMMDD.json), a retried task continues
that run, a step whose inputs did not change is skipped, and a blocked gate skips the rest of its surface
(the task still succeeds). Put this file in the DAGs folder of workers that have the `ranker` command and
the platform's environment (RANKER_HOME, RANKER_ONLINE_STORE, REDIS_URL, RANKER_FEAST_REGISTRY,
RANKER_REGISTRY_URI, AWS_*): e.g. the jobs image with the KubernetesPodOperator, or a BashOperator on a
worker where the package is installed, as here.

Works with Airflow 2.7+ and 3.x. Without Airflow installed, importing it only builds :data:`TASKS` (the
commands), which the tests check against the real `ranker` CLI.
"""

from __future__ import annotations

from datetime import datetime, timedelta

RANKER = "ranker"
DAILY_STEPS = ("ingest", "features", "apply", "materialize")
RETRAIN_STEPS = ("dataset", "train", "evaluate", "publish", "staging", "production")
SURFACES = ("search", "recs")


def daily_tasks() -> list[tuple[str, list[str]]]:
    """(task id, argv) per step of the daily pipeline, in order."""
    run = "daily-{{ ds_nodash }}"
    return [(step, [RANKER, "pipeline", "daily", "--run-id", run, "--step", step]) for step in DAILY_STEPS]


def retrain_tasks() -> list[tuple[str, list[str]]]:
    """(task id, argv) per surface and step; one run per surface and date, surfaces one after the other
    (a pipeline runs one process at a time)."""
    tasks = []
    for surface in SURFACES:
        run = f"retrain-{surface}-{{{{ ds_nodash }}}}"
        for step in RETRAIN_STEPS:
            tasks.append(
                (
                    f"{surface}_{step}",
                    [
                        RANKER,
                        "pipeline",
                        "retrain",
                        "--surface",
                        surface,
                        "--run-id",
                        run,
                        "--step",
                        f"{step}:{surface}",
                    ],
                )
            )
    return tasks


TASKS = {"ranker_daily": daily_tasks(), "ranker_retrain": retrain_tasks()}

DEFAULT_ARGS = {
    "owner": "ranking",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=2),
}

try:  # Airflow 3 moved the operator to the standard provider
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    try:
        from airflow.operators.bash import BashOperator
    except ImportError:  # no Airflow here: TASKS is all this module offers
        BashOperator = None

if BashOperator is not None:
    import shlex

    from airflow import DAG

    def _build(dag_id: str, *, schedule: str, description: str) -> DAG:
        with DAG(
            dag_id=dag_id,
            schedule=schedule,
            start_date=datetime(2026, 11, 1),
            catchup=False,
            max_active_runs=1,
            default_args=DEFAULT_ARGS,
            description=description,
            tags=["ranking"],
        ) as dag:
            previous = None
            for task_id, argv in TASKS[dag_id]:
                task = BashOperator(
                    task_id=task_id, bash_command=" ".join(shlex.quote(a) if "{{" not in a else a for a in argv)
                )
                if previous is not None:
                    previous >> task
                previous = task
        return dag

    ranker_daily = _build(
        "ranker_daily",
        schedule="15 1 * * *",
        description="ingest -> feature tables -> feast apply -> materialize (ranker pipeline daily)",
    )
    ranker_retrain = _build(
        "ranker_retrain",
        schedule="0 4 * * 1",
        description="training set -> train -> evaluate -> publish -> gates -> staging/production",
    )
