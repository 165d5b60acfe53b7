"""What Dagster does when a repository's step fails.

A transient fault that outlasted the clients' own retries (GitLab or Elasticsearch down for
minutes) fails the step, and Dagster runs it again later with exponential backoff. Without
jitter: Dagster's jitter spreads a retry by a whole delay either way, so a first retry could
come at once, when the service has had no time to come back; a fleet's retries are spread by
when each run failed, and the concurrency pools limit how many meet the service at once. A
permanent one (a revoked
token, a deleted project, documents Elasticsearch refuses, an index with the wrong mapping)
fails at once: trying again would only repeat it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster import Backoff, Failure, RetryPolicy

STEP_RETRIES_ENV = "INDEX_STEP_RETRIES"
STEP_RETRY_DELAY_ENV = "INDEX_STEP_RETRY_DELAY_SECONDS"


def step_retry_policy() -> RetryPolicy:
    """3 retries from a 60 s delay; the environment may change both numbers. Dagster waits
    (2^n - 1) x delay before the n-th retry: 60 s, 180 s and 420 s by default
    (docs/operations.md, Faults)."""
    return RetryPolicy(
        max_retries=int(os.environ.get(STEP_RETRIES_ENV, "3")),
        delay=float(os.environ.get(STEP_RETRY_DELAY_ENV, "60")),
        backoff=Backoff.EXPONENTIAL,
        jitter=None,
    )


def step_failure(
    description: str, *, permanent: bool, metadata: Mapping[str, Any] | None = None
) -> Failure:
    """A failure that names the repository; only a transient one is retried."""
    return Failure(description=description, metadata=metadata, allow_retries=not permanent)
