"""How to read a repository this run, decided from values alone: what Dagster recorded as
indexed, the manifest stored with it, the snapshot GitLab gives now, the settings, and
GitLab's comparison of the two commits when there is one.

A read is one of three: everything (the archive beside the whole tree listing), against the
listed tree (every path classified against the indexed manifest, only changed files read), or
against GitLab's comparison (the indexed manifest plus the paths GitLab says changed, no
listing). The build mode says what the manifest is: from nothing, incremental, or a full
refresh that also removes every stale document. Each decision says why, for the run log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from gitlab_es_pipeline.core.documents import RepositorySnapshot
from gitlab_es_pipeline.core.manifest import BuildMode, ManifestHeader


class Reading(str, Enum):
    EVERYTHING = "everything"  # the archive beside the tree listing: every file
    TREE = "tree"  # the listed tree against the base: added, modified and renamed files
    COMPARED = "compared"  # the base plus GitLab's changed paths: no tree listing


@dataclass(frozen=True)
class Indexed:
    """What the index holds for the partition, as Dagster recorded it."""

    commit_sha: str
    project_id: int | None  # None: recorded before the project id was


@dataclass(frozen=True)
class Comparison:
    """GitLab's comparison of the indexed commit with HEAD, or why there is none."""

    diffs: tuple[dict[str, Any], ...] = ()
    timed_out: bool = False  # GitLab's compare_timeout: the list may be cut short
    failed: str | None = None  # the request failed (the old commit is gone, say)


@dataclass(frozen=True)
class Note:
    """A line for the run log: why the plan is what it is."""

    text: str
    warning: bool = False


@dataclass(frozen=True)
class ReadPlan:
    mode: BuildMode
    reading: Reading
    # The manifest read against: its entries classify the tree (and, on a full refresh, say
    # what may be stale). None: nothing to read against.
    base: ManifestHeader | None
    notes: tuple[Note, ...] = ()
    diffs: tuple[dict[str, Any], ...] = ()  # GitLab's changed paths, for a compared read

    def noted(self, text: str, warning: bool = False) -> ReadPlan:
        return replace(self, notes=(*self.notes, Note(text, warning)))


def _identity(snapshot: RepositorySnapshot) -> tuple[str, str, str, str]:
    """What every document carries besides its file: when it changes, every one is rewritten."""
    return (snapshot.repository_name, snapshot.branch, snapshot.web_url, snapshot.visibility)


def plan_read(
    key: str,
    snapshot: RepositorySnapshot,
    settings: str,
    indexed: Indexed | None,
    stored: ManifestHeader | None,
    writer: str,
    full_refresh: bool = False,
    leftovers: bool = False,
) -> ReadPlan:
    """The read before any comparison: everything, or against the listed tree.

    settings: the fingerprint of the settings that shape documents; writer: the partition
    that last wrote the project ("" if none); leftovers: a write began under this
    repository's lease and no state was recorded since (a first load that died).
    """
    name = snapshot.repository_name
    if indexed is not None and indexed.project_id not in (None, snapshot.project_id):
        # The path names another project now (deleted and made again, another one moved in)
        # and discovery has not seen it yet: the old project's manifest is no base for this
        # one (document ids carry the project id). Discovery removes the old one's documents.
        return ReadPlan(BuildMode.FULL_REFRESH, Reading.EVERYTHING, None).noted(
            f"{name}: the path now names project {snapshot.project_id}, "
            f"not {indexed.project_id}, which was indexed here; indexing it from scratch",
            warning=True,
        )
    if indexed is None:
        # Never indexed. A first load that failed or was killed may have left documents that
        # no manifest describes (of files gone since): a full refresh sweeps them.
        plan = ReadPlan(
            BuildMode.FULL_REFRESH if full_refresh or leftovers else BuildMode.FULL,
            Reading.EVERYTHING,
            None,
        )
        if leftovers and not full_refresh:
            plan = plan.noted(
                f"{name}: never indexed, but an earlier run set out to; "
                "rebuilding as a full refresh to sweep what it may have left"
            )
        return plan
    if stored is None or stored.snapshot.commit_sha != indexed.commit_sha:
        # The indexed manifest is missing (es_index withdraws it before writing, so a run that
        # died or failed while writing leaves none) or is not the one Dagster recorded: only a
        # full rebuild is sure to leave nothing stale behind.
        return ReadPlan(BuildMode.FULL_REFRESH, Reading.EVERYTHING, stored).noted(
            f"{name}: no stored manifest for indexed commit "
            f"{indexed.commit_sha} (an earlier run stopped while writing to Elasticsearch?); "
            "rebuilding in full",
            warning=True,
        )
    if writer not in ("", key) and not full_refresh:
        # Renamed away and back before discovery saw it: the run of the other path rewrote the
        # project's documents (another name, another commit) since this manifest was indexed.
        return ReadPlan(BuildMode.FULL_REFRESH, Reading.EVERYTHING, stored).noted(
            f"{key}: project {snapshot.project_id} was written under {writer} since it was "
            "indexed here; rebuilding in full",
            warning=True,
        )
    if full_refresh:
        return ReadPlan(BuildMode.FULL_REFRESH, Reading.EVERYTHING, stored)
    if _identity(stored.snapshot) != _identity(snapshot) or stored.settings != settings:
        # Every document carries these (or is shaped by them): every file is read again.
        return ReadPlan(BuildMode.INCREMENTAL, Reading.EVERYTHING, stored)
    return ReadPlan(BuildMode.INCREMENTAL, Reading.TREE, stored)


def with_comparison(
    plan: ReadPlan, comparison: Comparison, compare_max_files: int, max_files_fetched_alone: int
) -> ReadPlan:
    """A read against the listed tree, made a read of GitLab's changed paths when the
    comparison can be trusted whole and its files are few enough to fetch one by one (more
    are cheaper from one archive)."""
    if plan.reading is not Reading.TREE or plan.base is None:
        return plan
    name = plan.base.snapshot.repository_name
    if comparison.failed is not None:
        return plan.noted(f"{name}: {comparison.failed}; listing the tree instead", warning=True)
    if comparison.timed_out or len(comparison.diffs) >= compare_max_files:
        return plan.noted(f"{name}: comparison cut off; listing the tree")
    if len(comparison.diffs) > max_files_fetched_alone:
        return plan
    return replace(plan, reading=Reading.COMPARED, diffs=comparison.diffs)
