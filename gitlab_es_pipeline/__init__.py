"""Every line of every GitLab repository searchable in Elasticsearch, as Dagster assets."""

from gitlab_es_pipeline.memory import keep_pandas_unloaded, prefer_returning_allocators

prefer_returning_allocators()
keep_pandas_unloaded()
