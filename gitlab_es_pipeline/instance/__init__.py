"""What dagster.yaml names of the project: the storage, the format of the run logs."""
