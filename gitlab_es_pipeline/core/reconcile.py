"""Convergence: what discovery compares so that the index follows GitLab whatever happened.

Three comparisons, all pure (the asset reads Dagster and the services, then asks these):

- identity: a repository's path, default branch, web URL and visibility as discovery's own
  listing shows them, against those its last `es_index` record was written with;
- reconciliation (anti-entropy): a round-robin slice of the indexed repositories per
  discovery, sized so that each one's HEAD is looked up at least once a period, however few
  pushes the HEAD-commit sensor saw;
- orphans: the repositories the index holds documents of that are no partition.

docs/runs.md (*Convergence*) has the design and the cost.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gitlab_es_pipeline.core.projects import Project

RECONCILE_PERIOD_SECONDS = 86400.0  # every indexed repository is looked at once a day...
RECONCILE_MAX_LOOKUPS = 1000  # ...and one discovery makes at most this many HEAD lookups
# A first discovery (no previous round) looks at an hour's share.
FIRST_ROUND_SECONDS = 3600.0
# Consecutive failed lookups after which a round stops asking (GitLab is down or throttling:
# each failure already waited out python-gitlab's retries); the rest is kept for next time.
GIVE_UP_AFTER_FAILURES = 3

# What every document carries besides its lines: a change must reach every document.
_IDENTITY_FIELDS = ("branch", "web_url", "visibility")


@dataclass(frozen=True)
class ReconcileSettings:
    period_seconds: float = RECONCILE_PERIOD_SECONDS
    max_lookups: int = RECONCILE_MAX_LOOKUPS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReconcileSettings:
        period = float(environ.get("RECONCILE_PERIOD_SECONDS") or RECONCILE_PERIOD_SECONDS)
        lookups = int(environ.get("RECONCILE_MAX_LOOKUPS") or RECONCILE_MAX_LOOKUPS)
        if period <= 0 or lookups < 0:
            raise ValueError(
                "RECONCILE_PERIOD_SECONDS must be positive and RECONCILE_MAX_LOOKUPS at least 0 "
                f"(got {period} and {lookups})"
            )
        return cls(period, lookups)


@dataclass(frozen=True)
class IndexedIdentity:
    """What a repository's last `es_index` record says was indexed, and under which identity."""

    commit_sha: str
    project_id: int | None
    branch: str | None
    web_url: str | None
    visibility: str | None  # None: recorded before the visibility was (unknown)
    storage_id: int = 0

    @classmethod
    def from_metadata(
        cls, values: Mapping[str, Any], storage_id: int = 0
    ) -> IndexedIdentity | None:
        """From the record's metadata, as plain values (`project` is the web URL)."""
        commit = values.get("commit_sha")
        if commit is None:
            return None
        project_id = values.get("project_id")

        def text(name: str) -> str | None:
            value = values.get(name)
            return None if value is None else str(value)

        return cls(
            commit_sha=str(commit),
            project_id=int(project_id) if project_id is not None else None,
            branch=text("branch"),
            web_url=text("project"),
            visibility=text("visibility"),
            storage_id=storage_id,
        )

    @property
    def identity_known(self) -> bool:
        return self.visibility is not None


def current_identity(project: Project) -> dict[str, str | None]:
    """A project's identity as a run would index it now (indexing/read.py, snapshot_now)."""
    return {
        "branch": project.default_branch,
        "web_url": project.web_url,
        "visibility": project.visibility or "private",
    }


def identity_changes(indexed: IndexedIdentity, project: Project) -> list[str]:
    """Each field that differs, as `visibility public -> private`; a field the record does not
    hold (older records lack visibility) is not a change: it is unknown."""
    now = current_identity(project)
    was = {"branch": indexed.branch, "web_url": indexed.web_url, "visibility": indexed.visibility}
    return [
        f"{name} {was[name]} -> {now[name]}"
        for name in _IDENTITY_FIELDS
        if was[name] is not None and was[name] != now[name]
    ]


def identity_reason(changes: list[str]) -> str:
    return "identity changed: " + ", ".join(changes)


def replaced_projects(
    found: Mapping[str, int], indexed: Mapping[str, IndexedIdentity]
) -> dict[str, int]:
    """Partitions whose path now names another project (deleted and made again, or another
    moved into its place): partition -> the project id indexed before. Its documents are the
    old project's; it starts over as a removal and comeback do."""
    return {
        key: record.project_id
        for key, record in indexed.items()
        if key in found and record.project_id is not None and record.project_id != found[key]
    }


# -- reconciliation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundState:
    """Where the round stands, kept in the `repositories` materialization's metadata."""

    after: str = ""  # the last partition looked at ("" before the first)
    at: float | None = None  # when the last discovery reconciled
    retry: tuple[str, ...] = ()  # lookups that failed: first next time

    @classmethod
    def from_metadata(cls, values: Mapping[str, Any]) -> RoundState:
        at = values.get("reconciled_at")
        retry = values.get("reconcile_retry") or []
        return cls(
            after=str(values.get("reconcile_after") or ""),
            at=float(at) if at is not None else None,
            retry=tuple(str(k) for k in retry),
        )


def slice_size(partitions: int, elapsed_seconds: float, settings: ReconcileSettings) -> int:
    """ceil(N * elapsed / period), at most max_lookups and N: every repository once a period
    (as long as N * discovery interval / period stays under max_lookups)."""
    share = partitions * max(elapsed_seconds, 0.0) / settings.period_seconds
    return min(math.ceil(share), settings.max_lookups, partitions)


@dataclass(frozen=True)
class RoundPlan:
    retry: list[str]  # failed last time, looked at again first
    fresh: list[str]  # the next slice of the round
    after: str  # the round's position once this slice is done
    size: int  # the slice the elapsed time called for

    @property
    def keys(self) -> list[str]:
        return [*self.retry, *self.fresh]


def plan_round(
    indexed: Iterable[str], state: RoundState, now: float, settings: ReconcileSettings
) -> RoundPlan:
    """The slice this discovery looks at: the failed lookups of last time, then the next keys
    after the round's position (in key order, wrapping), max_lookups in all."""
    keys = sorted(set(indexed))
    live = set(keys)
    retry = list(dict.fromkeys(k for k in state.retry if k in live))[: settings.max_lookups]
    elapsed = now - state.at if state.at is not None else FIRST_ROUND_SECONDS
    size = slice_size(len(keys), elapsed, settings)
    room = max(0, min(size, settings.max_lookups - len(retry)))
    start = bisect_right(keys, state.after) if state.after else 0
    fresh: list[str] = []
    taken = set(retry)
    for i in range(len(keys)):
        if len(fresh) >= room:
            break
        key = keys[(start + i) % len(keys)]
        if key not in taken:
            fresh.append(key)
    return RoundPlan(retry, fresh, fresh[-1] if fresh else state.after, size)


@dataclass
class RoundOutcome:
    reconciled: int = 0  # repositories looked at (HEAD compared, or identity unknown)
    lookups: int = 0  # HEAD requests made
    wanted: dict[str, str] = field(default_factory=dict)  # partition -> why
    failed: list[str] = field(default_factory=list)  # not looked at: first next time


def run_round(
    keys: list[str],
    indexed: Mapping[str, IndexedIdentity],
    head: Callable[[str], str | None],
    give_up_after: int = GIVE_UP_AFTER_FAILURES,
) -> RoundOutcome:
    """HEAD of each repository against its indexed commit (`head` returns None when the lookup
    failed). A record without a known identity is wanted without a lookup: its run records it.
    After `give_up_after` failures in a row the rest is kept for next time, not looked up."""
    outcome = RoundOutcome()
    failures_in_a_row = 0
    for key in keys:
        record = indexed.get(key)
        if record is None:
            continue
        if not record.identity_known:
            outcome.reconciled += 1
            outcome.wanted[key] = (
                "identity unknown: indexed before its visibility was recorded (reconciliation)"
            )
            continue
        if failures_in_a_row >= give_up_after:
            outcome.failed.append(key)
            continue
        outcome.lookups += 1
        commit = head(key)
        if commit is None:
            failures_in_a_row += 1
            outcome.failed.append(key)
            continue
        failures_in_a_row = 0
        outcome.reconciled += 1
        if commit != record.commit_sha:
            outcome.wanted[key] = (
                f"reconciliation: HEAD {commit[:12]} is not the indexed commit "
                f"{record.commit_sha[:12]}"
            )
    return outcome


# -- orphans -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Orphan:
    repository_name: str
    project_id: int
    documents: int

    @property
    def label(self) -> str:
        return f"{self.repository_name} (project {self.project_id}, not a partition)"


def orphans(
    in_index: Iterable[tuple[str, int, int]],
    partitions: Mapping[str, int],
    removing: Mapping[str, int | None],
) -> list[Orphan]:
    """The (repository_name, project_id, documents) the index holds that belong to no
    partition after this discovery: not a partition's path with its project id, and not what
    the partitions being removed (or replaced) take with them (their path with the project id
    removed, any project id when that is unknown)."""
    out = []
    for name, project_id, documents in in_index:
        if partitions.get(name) == project_id:
            continue
        if name in removing and removing[name] in (None, project_id):
            continue
        out.append(Orphan(name, project_id, documents))
    return sorted(out, key=lambda o: (o.repository_name, o.project_id))
