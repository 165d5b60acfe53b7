"""The Dagster concurrency pools of the steps that call each service."""

from dagster import DagsterInstance

GITLAB_POOL = "gitlab"
ELASTICSEARCH_POOL = "elasticsearch"
POOLS = (GITLAB_POOL, ELASTICSEARCH_POOL)


def ensure_pools(instance: DagsterInstance) -> None:
    """Create the pools' limit rows (dagster.yaml's default_limit) before runs claim slots.

    Otherwise two runs starting at once both create the row on their first claim, and on
    PostgreSQL the loser's transaction is aborted and the run fails (a race in Dagster 1.13's
    initialize_concurrency_limit_to_default). The sensor and discovery call this; they run
    before the runs they cause. A race here is harmless: the row exists afterwards.
    """
    events = instance.event_log_storage
    try:
        missing = [pool for pool in POOLS if pool not in events.get_concurrency_keys()]
        for pool in missing:
            events.initialize_concurrency_limit_to_default(pool)
    except Exception:
        return
