"""One dynamic partition per GitLab repository, keyed by its path_with_namespace."""

import os
import warnings
from collections.abc import Mapping

from dagster import BackfillPolicy, BetaWarning, DynamicPartitionsDefinition

REPOSITORIES_PARTITION = "repositories"
# Dagster's tag of a run's partition: the repository a run indexes.
PARTITION_TAG = "dagster/partition"
# Dagster's tags of a partition-range run (a backfill's run of many partitions); it has no
# PARTITION_TAG.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

repository_partitions = DynamicPartitionsDefinition(name=REPOSITORIES_PARTITION)


# Dagster 1.13 calls the assets' `backfill_policy` parameter beta and says so in every process
# that loads the definitions (each run's too); it asks nothing of the user. Only that message.
warnings.filterwarnings(
    "ignore", message=r"Parameter `backfill_policy` of function", category=BetaWarning
)


def repository_backfill_policy() -> BackfillPolicy:
    """A backfill's runs: up to BACKFILL_PARTITIONS_PER_RUN repositories each (1: a run per
    repository), indexed one after the other by the range's step (runs/many.py, index_range)."""
    return BackfillPolicy.multi_run(int(os.environ.get("BACKFILL_PARTITIONS_PER_RUN", 50)))


def is_range_run(tags: Mapping[str, str]) -> bool:
    """A run of a partition range (a backfill's run of many partitions), not of one."""
    return RANGE_START_TAG in tags and PARTITION_TAG not in tags
