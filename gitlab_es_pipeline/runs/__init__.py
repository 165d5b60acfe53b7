"""What runs share through Dagster's storage: leases and claims (one writer per
repository), the indexed state, and many repositories in one run (batches, ranges)."""
