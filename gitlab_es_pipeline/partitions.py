"""One dynamic partition per GitLab repository, keyed by its path_with_namespace."""

from dagster import DynamicPartitionsDefinition

REPOSITORIES_PARTITION = "repositories"
# Dagster's tag of a run's partition: the repository a run indexes.
PARTITION_TAG = "dagster/partition"

repository_partitions = DynamicPartitionsDefinition(name=REPOSITORIES_PARTITION)
