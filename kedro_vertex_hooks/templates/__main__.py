"""``python -m kedro_vertex_hooks.templates``: the kedro-airflow DAG template's path."""

from kedro_vertex_hooks.templates import AIRFLOW_DAG

print(AIRFLOW_DAG)
