"""64 steps started at the same moment into one run, on an MLflow server backed by PostgreSQL.

sqlite serialises writers, so the 16-step test in test_reliability.py cannot show races a
production store has: concurrent transactions on one run's params and tags, a run read by
one step while another writes it.

64 kedro processes fill a 2-core machine, so each step does the least that writes to the run
(one node logging 50 params) and runs on the client-only MLflow of a slim image
(.venv-skinny): it starts in about a third of the CPU time of the full MLflow with
kedro-mlflow's CLI plugin, and what is under test is the server's store, not the client.
"""

from __future__ import annotations

import pytest

from tests.support.generated_project import write_logging_config
from tests.support.mlflow_server import MlflowServer
from tests.support.parallel_steps import (
    NiceProject,
    assert_every_step_succeeded,
    assert_run_holds_every_step,
    parallel_steps_project,
    run_all_at_once,
)
from tests.support.project import SKINNY_PYTHON, base_env
from tests.support.proxy import MlflowProxy

STEPS = 64


def all_run_ids(client) -> set[str]:
    """Every run the server holds, in every experiment: a stray second run shows up here."""
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    return {run.info.run_id for run in client.search_runs(experiment_ids, max_results=1000)}


# On 2 idle cores: ~25 s to start PostgreSQL and MLflow, ~2 min for the steps. Generous:
# the other xdist worker's tests share the cores.
@pytest.mark.timeout(900)
def test_64_steps_started_together_on_postgres_lose_nothing(
    postgres_mlflow_server: MlflowServer, tmp_path
):
    from mlflow import MlflowClient

    assert SKINNY_PYTHON.exists(), "run scripts/bootstrap.sh to create .venv-skinny"
    client = MlflowClient(tracking_uri=postgres_mlflow_server.uri)
    generated = parallel_steps_project(tmp_path / "sixty-four", STEPS, metrics_and_tags=False)
    project = NiceProject(generated.root, python=SKINNY_PYTHON)
    runs_before = all_run_ids(client)
    run_id = client.create_run(client.create_experiment("sixty-four")).info.run_id
    logging_config = write_logging_config(tmp_path / "logging.yml")

    with MlflowProxy(postgres_mlflow_server.uri) as proxy:  # 25 ms a request: a remote server
        env = base_env(
            KEDRO_LOGGING_CONFIG=logging_config,
            MLFLOW_TRACKING_URI=proxy.uri,
            MLFLOW_RUN_ID=run_id,
        )
        results = run_all_at_once(project, STEPS, env, tags=False, timeout_s=600)

    # Late is fine (MLflow's default pool jams under 64 writers: see docs/reliability.md);
    # lost is not.
    assert_every_step_succeeded(results)
    assert_run_holds_every_step(client, run_id, results, metrics_and_tags=False)
    assert all_run_ids(client) == runs_before | {run_id}
