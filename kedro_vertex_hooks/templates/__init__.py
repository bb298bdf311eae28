"""Templates the package ships for orchestrators' DAG generators.

``AIRFLOW_DAG`` is a kedro-airflow DAG template (``kedro airflow create -j``);
``python -m kedro_vertex_hooks.templates`` prints its path and nothing else, so that it can
stand in ``$(...)``: a ``kedro`` command cannot, Kedro logs to stdout before any command runs.
"""

from __future__ import annotations

from pathlib import Path

AIRFLOW_DAG = Path(__file__).with_name("airflow_dag.j2")
