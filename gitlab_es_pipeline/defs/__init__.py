"""What Dagster loads: the assets, jobs, sensors, schedules, partitions, pools, retries,
resources and the IO manager; definitions.py puts them together."""
