"""Where a dagster.yaml copied before 2026-12-05 looks for the storage (`gitlab-es-pipeline
dev` copies the project's into DAGSTER_HOME once and never overwrites it): the same class,
now in instance/storage.py. Kept so that such an instance still loads; new ones name
`gitlab_es_pipeline.instance.storage`."""

from gitlab_es_pipeline.instance.storage import EnvironmentSelectedStorage

__all__ = ["EnvironmentSelectedStorage"]
