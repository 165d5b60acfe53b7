"""The read plan, decided from values alone (core/read_plan.py): each case the pipeline meets,
without a server. What each plan then reads is tested against the stand-ins (test_incremental,
test_budget, test_as_committed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gitlab_es_pipeline.core.documents import RepositorySnapshot
from gitlab_es_pipeline.core.manifest import BuildMode, ManifestHeader
from gitlab_es_pipeline.core.read_plan import (
    Comparison,
    Indexed,
    Note,
    Reading,
    ReadPlan,
    plan_read,
    with_comparison,
)

KEY = "team/app"
OLD, NEW = "a" * 40, "b" * 40
NOW = RepositorySnapshot(7, KEY, "main", NEW, "https://gitlab.example.com/team/app", "internal")
SETTINGS = "settings-v1"
STORED = ManifestHeader(replace(NOW, commit_sha=OLD), BuildMode.INCREMENTAL, None, SETTINGS)
INDEXED = Indexed(OLD, 7)


def _plan(
    snapshot: RepositorySnapshot = NOW,
    settings: str = SETTINGS,
    indexed: Indexed | None = INDEXED,
    stored: ManifestHeader | None = STORED,
    writer: str = KEY,
    full_refresh: bool = False,
    leftovers: bool = False,
) -> ReadPlan:
    return plan_read(
        KEY,
        snapshot,
        settings,
        indexed,
        stored,
        writer,
        full_refresh=full_refresh,
        leftovers=leftovers,
    )


def test_an_indexed_repository_is_read_against_its_tree() -> None:
    plan = _plan()
    assert (plan.mode, plan.reading, plan.base) == (BuildMode.INCREMENTAL, Reading.TREE, STORED)
    assert plan.notes == ()
    # Nobody has written the project yet (recorded before writers were): the same.
    assert _plan(writer="").reading is Reading.TREE


@pytest.mark.parametrize(
    ("full_refresh", "leftovers", "mode"),
    [
        (False, False, BuildMode.FULL),
        (True, False, BuildMode.FULL_REFRESH),
        (False, True, BuildMode.FULL_REFRESH),  # a first load that died may have left some
        (True, True, BuildMode.FULL_REFRESH),
    ],
)
def test_a_never_indexed_repository_is_read_whole(
    full_refresh: bool, leftovers: bool, mode: BuildMode
) -> None:
    plan = _plan(indexed=None, stored=None, full_refresh=full_refresh, leftovers=leftovers)
    assert (plan.mode, plan.reading, plan.base) == (mode, Reading.EVERYTHING, None)
    if leftovers and not full_refresh:
        assert plan.notes == (
            Note(
                f"{KEY}: never indexed, but an earlier run set out to; "
                "rebuilding as a full refresh to sweep what it may have left"
            ),
        )  # said at info: nothing is wrong
    else:
        assert plan.notes == ()


def test_a_path_that_names_another_project_now_is_read_from_nothing() -> None:
    plan = _plan(indexed=Indexed(OLD, 6))
    assert (plan.mode, plan.reading, plan.base) == (
        BuildMode.FULL_REFRESH,
        Reading.EVERYTHING,
        None,  # the old project's manifest is no base: document ids carry the project id
    )
    assert plan.notes == (
        Note(
            f"{KEY}: the path now names project 7, not 6, which was indexed here; "
            "indexing it from scratch",
            warning=True,
        ),
    )
    # Recorded before states carried the project id: taken as the same project.
    assert _plan(indexed=Indexed(OLD, None)).reading is Reading.TREE


@pytest.mark.parametrize(
    "stored", [None, replace(STORED, snapshot=replace(STORED.snapshot, commit_sha="c" * 40))]
)
def test_without_the_indexed_commits_manifest_everything_is_rebuilt(
    stored: ManifestHeader | None,
) -> None:
    plan = _plan(stored=stored)
    assert (plan.mode, plan.reading, plan.base) == (
        BuildMode.FULL_REFRESH,
        Reading.EVERYTHING,
        stored,
    )
    assert plan.notes == (
        Note(
            f"{KEY}: no stored manifest for indexed commit {OLD} (an earlier run stopped "
            "while writing to Elasticsearch?); rebuilding in full",
            warning=True,
        ),
    )


def test_a_project_written_under_another_path_since_is_rebuilt() -> None:
    plan = _plan(writer="team/renamed")
    assert (plan.mode, plan.reading) == (BuildMode.FULL_REFRESH, Reading.EVERYTHING)
    assert plan.notes == (
        Note(
            f"{KEY}: project 7 was written under team/renamed since it was indexed here; "
            "rebuilding in full",
            warning=True,
        ),
    )
    # Asked for a full refresh anyway: nothing to warn about.
    asked = _plan(writer="team/renamed", full_refresh=True)
    assert (asked.mode, asked.reading, asked.notes) == (
        BuildMode.FULL_REFRESH,
        Reading.EVERYTHING,
        (),
    )


def test_a_full_refresh_asked_for_reads_everything_against_the_indexed_manifest() -> None:
    plan = _plan(full_refresh=True)
    assert (plan.mode, plan.reading, plan.base) == (
        BuildMode.FULL_REFRESH,
        Reading.EVERYTHING,
        STORED,
    )


@pytest.mark.parametrize(
    "now",
    [
        replace(NOW, repository_name="team/app2"),
        replace(NOW, branch="develop"),
        replace(NOW, web_url="https://gitlab.example.com/team/app2"),
        replace(NOW, visibility="public"),
    ],
    ids=["renamed", "branch", "url", "visibility"],
)
def test_what_every_document_carries_changed_so_every_file_is_read(
    now: RepositorySnapshot,
) -> None:
    plan = _plan(snapshot=now)
    assert (plan.mode, plan.reading, plan.base) == (
        BuildMode.INCREMENTAL,
        Reading.EVERYTHING,
        STORED,
    )


def test_settings_that_shape_documents_changed_so_every_file_is_read() -> None:
    plan = _plan(settings="settings-v2")
    assert (plan.mode, plan.reading, plan.base) == (
        BuildMode.INCREMENTAL,
        Reading.EVERYTHING,
        STORED,
    )


DIFF = {"old_path": "a.py", "new_path": "a.py", "deleted_file": False, "renamed_file": False}


def _compared(comparison: Comparison, most: int = 100, alone: int = 10) -> ReadPlan:
    return with_comparison(
        _plan(), comparison, compare_max_files=most, max_files_fetched_alone=alone
    )


def test_a_comparison_of_a_few_files_is_read_without_listing_the_tree() -> None:
    diffs = (DIFF,) * 3
    plan = _compared(Comparison(diffs))
    assert (plan.mode, plan.reading, plan.diffs) == (BuildMode.INCREMENTAL, Reading.COMPARED, diffs)
    assert plan.notes == ()
    # Nothing changed in the files (a merge of nothing, a tag): still compared, nothing read.
    assert _compared(Comparison(())).reading is Reading.COMPARED
    # As many as are fetched alone at most: still compared.
    assert _compared(Comparison((DIFF,) * 10), alone=10).reading is Reading.COMPARED


@pytest.mark.parametrize(
    ("comparison", "said", "warning"),
    [
        (
            Comparison(failed="GitLab refused compare: HTTP 404"),
            f"{KEY}: GitLab refused compare: HTTP 404; listing the tree instead",
            True,
        ),
        (
            Comparison((DIFF,), timed_out=True),
            f"{KEY}: comparison cut off; listing the tree",
            False,
        ),
        # at GitLab's diff limit
        (Comparison((DIFF,) * 100), f"{KEY}: comparison cut off; listing the tree", False),
        (Comparison((DIFF,) * 11), None, False),  # more than fetching alone pays for
    ],
    ids=["failed", "timed-out", "at-the-limit", "many"],
)
def test_a_comparison_that_cannot_be_trusted_or_is_large_lists_the_tree(
    comparison: Comparison, said: str | None, warning: bool
) -> None:
    plan = _compared(comparison)
    assert (plan.reading, plan.diffs) == (Reading.TREE, ())
    assert plan.notes == ((Note(said, warning),) if said is not None else ())


def test_only_a_tree_read_is_changed_by_a_comparison() -> None:
    whole = _plan(full_refresh=True)
    assert with_comparison(whole, Comparison((DIFF,)), 100, 10) == whole
