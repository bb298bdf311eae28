from sample_project.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
