"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from sample_project.pipelines.training import create_pipeline


def register_pipelines() -> dict[str, Pipeline]:
    training = create_pipeline()
    return {"__default__": training, "training": training}
