"""core.reconcile: identity, the reconciliation round and orphans, without Dagster."""

from __future__ import annotations

import random

import pytest

from gitlab_es_pipeline.core.projects import Project
from gitlab_es_pipeline.core.reconcile import (
    GIVE_UP_AFTER_FAILURES,
    IndexedIdentity,
    Orphan,
    ReconcileSettings,
    RoundState,
    identity_changes,
    identity_reason,
    orphans,
    plan_round,
    replaced_projects,
    run_round,
    slice_size,
)

DAY = 86400.0
HOUR = 3600.0


def _project(key: str = "g/p", project_id: int = 1, **attrs: object) -> Project:
    values = {
        "project_id": project_id,
        "path_with_namespace": key,
        "default_branch": "main",
        "web_url": f"https://gitlab.example/{key}",
        "visibility": "private",
        "last_activity_at": None,
        **attrs,
    }
    return Project(**values)  # type: ignore[arg-type]


def _indexed(commit: str = "c1", project_id: int = 1, **attrs: object) -> IndexedIdentity:
    values = {
        "commit_sha": commit,
        "project_id": project_id,
        "branch": "main",
        "web_url": "https://gitlab.example/g/p",
        "visibility": "private",
        **attrs,
    }
    return IndexedIdentity(**values)  # type: ignore[arg-type]


# -- identity -----------------------------------------------------------------------------------
def test_each_changed_identity_field_is_named_with_both_values() -> None:
    assert identity_changes(_indexed(), _project()) == []
    assert identity_changes(_indexed(visibility="public"), _project()) == [
        "visibility public -> private"
    ]
    changed = _project(default_branch="develop", web_url="https://gitlab.example/h/p")
    assert identity_changes(_indexed(), changed) == [
        "branch main -> develop",
        "web_url https://gitlab.example/g/p -> https://gitlab.example/h/p",
    ]
    assert (
        identity_reason(["visibility public -> private"])
        == "identity changed: visibility public -> private"
    )


def test_an_unknown_visibility_is_no_change_and_a_missing_one_indexes_as_private() -> None:
    # Records from before visibility was recorded: unknown, left to the round.
    assert identity_changes(_indexed(visibility=None), _project(visibility="public")) == []
    assert not _indexed(visibility=None).identity_known
    # GitLab left it out: a run indexes "private" (indexing/read.py, snapshot_now), so no change.
    assert identity_changes(_indexed(), _project(visibility=None)) == []


def test_the_identity_reads_from_es_index_metadata_values() -> None:
    values = {
        "commit_sha": "abc",
        "project_id": 5,
        "branch": "main",
        "project": "https://gitlab.example/g/p",
        "visibility": "internal",
    }
    record = IndexedIdentity.from_metadata(values, storage_id=42)
    assert record == IndexedIdentity("abc", 5, "main", "https://gitlab.example/g/p", "internal", 42)
    older = IndexedIdentity.from_metadata({k: v for k, v in values.items() if k != "visibility"})
    assert older is not None and older.visibility is None and not older.identity_known
    assert IndexedIdentity.from_metadata({"project_id": 5}) is None


def test_a_path_that_names_another_project_is_replaced() -> None:
    indexed = {"g/a": _indexed(project_id=1), "g/b": _indexed(project_id=2)}
    indexed["g/c"] = _indexed(project_id=None)  # type: ignore[arg-type]
    assert replaced_projects({"g/a": 1, "g/b": 9, "g/c": 3}, indexed) == {"g/b": 2}
    assert replaced_projects({"g/a": 1}, indexed) == {}  # g/b gone: a removal, not this


# -- the round ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("partitions", "elapsed", "expected"),
    [
        (10_000, HOUR, 417),  # 10,000 / 24, rounded up
        (10_000, 2 * HOUR, 834),  # a discovery missed: the next one catches up
        (10_000, 3 * HOUR, 1000),  # capped
        (100_000, HOUR, 1000),  # a fleet the cap cannot cover in a day
        (23, HOUR, 1),
        (3, 5.0, 1),  # any time at all: at least one
        (3, 0.0, 0),
        (3, -10.0, 0),  # a clock that went back
        (3, 10 * DAY, 3),  # never more than the fleet
        (0, HOUR, 0),
    ],
)
def test_the_slice_is_the_fleets_share_of_the_period(
    partitions: int, elapsed: float, expected: int
) -> None:
    assert slice_size(partitions, elapsed, ReconcileSettings()) == expected


def test_the_round_goes_in_key_order_from_its_position_and_wraps() -> None:
    keys = ["a", "b", "c", "d", "e"]
    settings = ReconcileSettings(period_seconds=5 * HOUR)  # one key an hour
    plan = plan_round(keys, RoundState(), 0.0, settings)  # first round: an hour's share
    assert (plan.keys, plan.after) == (["a"], "a")
    plan = plan_round(keys, RoundState(after="d", at=0.0), 2 * HOUR, settings)
    assert (plan.fresh, plan.after) == (["e", "a"], "a")
    # The position is a key: partitions added or removed meanwhile do not shift it.
    plan = plan_round(["a", "b", "bb", "d"], RoundState(after="c", at=0.0), HOUR, settings)
    assert plan.fresh == ["d"]
    plan = plan_round(["a", "b"], RoundState(after="z", at=0.0), 10 * HOUR, settings)
    assert plan.fresh == ["a", "b"]  # never a key twice in one slice
    assert plan_round([], RoundState(after="c", at=0.0), HOUR, settings).after == "c"


def test_failed_lookups_come_first_and_count_against_the_cap() -> None:
    keys = [f"k{i:02d}" for i in range(20)]
    settings = ReconcileSettings(period_seconds=20 * HOUR, max_lookups=4)
    state = RoundState(after="k05", at=0.0, retry=("k01", "gone", "k01", "k09"))
    plan = plan_round(keys, state, 3 * HOUR, settings)
    # Retried first (once each; a partition no longer indexed is dropped), then the round.
    assert plan.retry == ["k01", "k09"] and plan.fresh == ["k06", "k07"]
    assert plan.after == "k07" and plan.size == 3
    # A retry list as long as the cap holds the round where it is: nothing is skipped.
    state = RoundState(after="k05", at=0.0, retry=("k01", "k02", "k03", "k04", "k08"))
    plan = plan_round(keys, state, 3 * HOUR, settings)
    assert plan.keys == ["k01", "k02", "k03", "k04"] and plan.after == "k05"


def test_every_repository_is_looked_at_within_a_period_however_discoveries_are_spaced() -> None:
    """Hourly discoveries that run late, early or not at all, over a changing fleet: each
    repository's looks are at most a period plus one discovery's gap apart."""
    rng = random.Random(25)
    settings = ReconcileSettings(period_seconds=DAY, max_lookups=1000)
    fleet = {f"g/p{i:05d}" for i in range(5000)}
    state, now, last_seen = RoundState(), 0.0, {}
    born = dict.fromkeys(fleet, 0.0)
    widest_gap = 0.0
    while now < 4 * DAY:
        gap = rng.choice([HOUR, HOUR, HOUR, 0.5 * HOUR, 1.5 * HOUR, 3 * HOUR])
        now += gap
        widest_gap = max(widest_gap, gap)
        for _ in range(rng.randint(0, 20)):  # projects come and go
            if rng.random() < 0.5 and fleet:
                fleet.discard(rng.choice(sorted(fleet)))
            else:
                key = f"g/n{rng.randint(0, 10**6):07d}"
                fleet.add(key)
                born.setdefault(key, now)
        plan = plan_round(fleet, state, now, settings)
        for key in plan.keys:
            last_seen[key] = now
        state = RoundState(after=plan.after, at=now)
        late = [k for k in fleet if now - last_seen.get(k, born[k]) > DAY + widest_gap]
        assert late == [], (now, late[:5])


def test_a_round_compares_heads_and_wants_what_moved_or_is_unknown() -> None:
    indexed = {
        "g/same": _indexed("c1"),
        "g/moved": _indexed("c1"),
        "g/old": _indexed("c1", visibility=None),
    }
    heads = {"g/same": "c1", "g/moved": "c2" * 20}
    asked: list[str] = []

    def head(key: str) -> str | None:
        asked.append(key)
        return heads.get(key)

    outcome = run_round(["g/same", "g/moved", "g/old", "g/not-indexed"], indexed, head)
    assert asked == ["g/same", "g/moved"]  # the unknown identity is wanted without a request
    assert outcome.reconciled == 3 and outcome.lookups == 2 and outcome.failed == []
    assert outcome.wanted == {
        "g/moved": "reconciliation: HEAD c2c2c2c2c2c2 is not the indexed commit c1",
        "g/old": "identity unknown: indexed before its visibility was recorded (reconciliation)",
    }


def test_failed_lookups_are_kept_and_a_round_stops_asking_a_failing_gitlab() -> None:
    keys = [f"k{i}" for i in range(10)]
    indexed = {k: _indexed("c1") for k in keys}
    answers = {"k0": None, "k1": "c1", "k2": None, "k3": None, "k4": None}
    asked: list[str] = []

    def head(key: str) -> str | None:
        asked.append(key)
        return answers.get(key)

    outcome = run_round(keys, indexed, head)
    assert asked == ["k0", "k1", "k2", "k3", "k4"]  # three failures in a row: no more asks
    assert GIVE_UP_AFTER_FAILURES == 3
    assert outcome.failed == ["k0", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"]
    assert outcome.reconciled == 1 and outcome.lookups == 5 and outcome.wanted == {}


def test_the_round_state_reads_back_what_discovery_recorded() -> None:
    state = RoundState.from_metadata(
        {"reconcile_after": "g/p", "reconciled_at": 12.5, "reconcile_retry": ["g/a", "g/b"]}
    )
    assert state == RoundState("g/p", 12.5, ("g/a", "g/b"))
    assert RoundState.from_metadata({}) == RoundState("", None, ())  # before reconciliation


def test_the_settings_come_from_the_environment() -> None:
    assert ReconcileSettings.from_env({}) == ReconcileSettings(86400.0, 1000)
    assert ReconcileSettings.from_env(
        {"RECONCILE_PERIOD_SECONDS": "43200", "RECONCILE_MAX_LOOKUPS": "200"}
    ) == ReconcileSettings(43200.0, 200)
    with pytest.raises(ValueError, match="RECONCILE_PERIOD_SECONDS must be positive"):
        ReconcileSettings.from_env({"RECONCILE_PERIOD_SECONDS": "0"})


# -- orphans ------------------------------------------------------------------------------------
def test_orphans_are_pairs_no_partition_keeps_and_no_removal_takes() -> None:
    in_index = [
        ("g/a", 1, 10),  # a partition, its project: kept
        ("g/a", 9, 2),  # another project under a partition's path: orphan
        ("g/gone", 3, 5),  # removed now, project 3 known: the removal takes it
        ("g/gone", 4, 1),  # ...but not another project's documents under that path
        ("g/failed", 5, 7),  # removed now, never indexed (project unknown): taken by path
        ("g/renamed", 6, 3),  # replaced: its old project's documents go with the removal
        ("x/y", 8, 4),  # nothing at all: orphan
    ]
    partitions = {"g/a": 1, "g/renamed": 60, "g/new": 7}
    removing: dict[str, int | None] = {"g/gone": 3, "g/failed": None, "g/renamed": 6}
    assert orphans(in_index, partitions, removing) == [
        Orphan("g/a", 9, 2),
        Orphan("g/gone", 4, 1),
        Orphan("x/y", 8, 4),
    ]
    assert Orphan("x/y", 8, 4).label == "x/y (project 8, not a partition)"
    assert orphans([], partitions, removing) == []
