"""Hourly discovery of the fleet."""

import os

from dagster import DefaultScheduleStatus, ScheduleDefinition

from gitlab_es_pipeline.defs.jobs import discover_repositories_job

hourly_discovery = ScheduleDefinition(
    name="hourly_discovery",
    job=discover_repositories_job,
    cron_schedule=os.environ.get("DISCOVERY_CRON", "0 * * * *"),
    default_status=DefaultScheduleStatus.RUNNING,
    description="Materializes `repositories`: new projects become partitions, gone ones are "
    "removed with their documents.",
)
