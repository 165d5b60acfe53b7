"""Every line of every GitLab repository searchable in Elasticsearch, as Dagster assets."""

from gitlab_es_pipeline.memory import prefer_returning_allocators

prefer_returning_allocators()
