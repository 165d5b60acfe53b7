"""Every line of every GitLab repository searchable in Elasticsearch, as Dagster assets."""
