"""What the per-repository work needs of the step it runs in (its own run's, a batch's or a
range's), and the names it reports under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dagster import DagsterInstance

from gitlab_es_pipeline.runs.leases import Lease

FAILURES_SHOWN = 20  # repositories or files a failure's message lists, at most


class StepLog(Protocol):
    """What the per-repository work says: the step's logger, or a batch's gathering of it."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...

    def error(self, msg: str) -> None: ...


@dataclass(frozen=True)
class Step:
    """What the per-repository work needs of the step it runs in."""

    log: StepLog  # DagsterLogManager is one
    instance: DagsterInstance
    run_id: str
    lease: Lease | None = None  # the repository's, once taken (runs/claims.py)
