"""One dynamic partition per GitLab repository, keyed by its path_with_namespace."""

from dagster import DynamicPartitionsDefinition

REPOSITORIES_PARTITION = "repositories"

repository_partitions = DynamicPartitionsDefinition(name=REPOSITORIES_PARTITION)
