"""Keeping the index in step: the sensor, incremental runs, exact deletes, discovery changes."""

import logging
import subprocess
import time
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._daemon.monitoring.run_monitoring import check_run_timeout

from gitlab_es_pipeline.defs.sensors import COMMIT_TAG, SensorLimits
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.runs.leases import lease_seconds
from gitlab_es_pipeline_tests.corpus import expected_after_runs, expected_id
from gitlab_es_pipeline_tests.pipeline import INDEX, RUN_KEY_TAG, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.run_partition import run_killed
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

BINARY = b"\x00\x01binary\x00" * 20


def lines(n: int, tag: str = "line") -> str:
    return "".join(f"{tag} {i}\n" for i in range(1, n + 1))


class Fleet:
    """Two repositories; the test pushes to the first and checks both stay exact."""

    def __init__(self, pipeline: Pipeline, tmp_path: Path) -> None:
        self.pipeline = pipeline
        self.repo = init_repo(tmp_path / "app")
        self.quiet = init_repo(tmp_path / "quiet")
        first = commit_files(
            self.repo,
            {
                "a.py": lines(5, "a"),
                "b.txt": lines(10, "b"),
                "c.md": lines(3, "c"),
                "x.txt": lines(4, "x"),
                "bin.dat": BINARY,
                "toggle.dat": lines(4, "t"),
                "same/unchanged.py": lines(50, "u"),
            },
        )
        quiet_first = commit_files(self.quiet, {"q.txt": lines(3, "q")})
        self.app = pipeline.gitlab.add_project("team/app", str(self.repo))
        self.other = pipeline.gitlab.add_project("team/quiet", str(self.quiet))
        self.indexed = {"team/app": [first], "team/quiet": [quiet_first]}

    def push(self, files: dict, delete: tuple[str, ...] = ()) -> str:
        commit = commit_files(self.repo, files, delete=delete)
        self.app.record_push()
        return commit

    def sensor_round(self, limits: SensorLimits | None = None) -> list[str]:
        keys = self.pipeline.run_sensor_requests(limits)
        for key in keys:
            self.indexed[key].append(self.head(key))
        return keys

    def head(self, key: str) -> str:
        repo = self.repo if key == "team/app" else self.quiet
        return run_git(repo, "rev-parse", "HEAD").strip()

    def assert_exact(self) -> None:
        documents = self.pipeline.es.documents(INDEX)
        expected: dict = {}
        for key, project, repo in (
            ("team/app", self.app, self.repo),
            ("team/quiet", self.other, self.quiet),
        ):
            expected.update(
                expected_after_runs(
                    repo,
                    self.indexed[key],
                    project.id,
                    key,
                    project.default_branch_name,
                    f"{self.pipeline.gitlab.url}/{key}",
                    known_text={},
                ).documents
            )
        assert set(documents) == set(expected), set(documents) ^ set(expected)
        for doc_id, doc in expected.items():
            assert documents[doc_id] == doc, doc_id


# The whole incremental flow runs on the project's own dagster.yaml, on both storages.
pytestmark = pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def pipeline(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    project_instance: DagsterInstance,
    tmp_path: Path,
) -> Pipeline:
    return Pipeline(gitlab_server, es_server, project_instance, tmp_path / "parquet")


@pytest.fixture
def fleet(pipeline: Pipeline, tmp_path: Path) -> Fleet:
    fleet = Fleet(pipeline, tmp_path)
    pipeline.discover()
    assert sorted(fleet.sensor_round()) == ["team/app", "team/quiet"]  # never indexed
    fleet.assert_exact()
    return fleet


def test_every_kind_of_change_is_applied_exactly_and_only_changed_files_are_sent(
    fleet: Fleet,
) -> None:
    es = fleet.pipeline.es
    assert fleet.sensor_round() == []  # nothing moved: nothing requested
    fleet.push(
        {
            "new.py": lines(2, "n"),  # added
            "a.py": lines(5, "A"),  # modified, same length
            "b.txt": lines(6, "b"),  # shortened: lines 7-10 must go
            "y.txt": lines(4, "x"),  # renamed from x.txt (same blob)
            "toggle.dat": BINARY,  # text -> binary: its 4 lines must go
            "bin.dat": lines(3, "was binary"),  # binary -> text
        },
        delete=("c.md", "x.txt"),
    )  # deleted
    es.bulk_actions.clear()
    fleet.pipeline.gitlab.requests.clear()
    assert fleet.sensor_round() == ["team/app"]
    fleet.assert_exact()
    # Sent: the lines of added/modified/renamed files only; deleted: exactly the stale ids.
    assert es.bulk_actions["index"] == 2 + 5 + 6 + 4 + 3
    assert es.bulk_actions["delete"] == 4 + 3 + 4 + 4  # b 7-10, c.md, x.txt, toggle.dat
    app_id = fleet.app.id
    assert expected_id(app_id, "same/unchanged.py", 1) in es.documents(INDEX)
    meta = fleet.pipeline.instance.get_latest_materialization_event(AssetKey("file_manifest"))
    values = {k: v.value for k, v in meta.asset_materialization.metadata.items()}
    assert (
        values["mode"],
        values["tree_entries_added"],
        values["tree_entries_modified"],
        values["tree_entries_deleted"],
        values["tree_entries_renamed"],
        values["tree_entries_unchanged"],
    ) == ("incremental", 1, 4, 1, 1, 1)
    # Read: only the six added/modified/renamed files (toggle.dat found binary), each with a
    # HEAD on the files API (blob id, size) and its raw blob; what changed came from one
    # comparison, not from listing the tree.
    assert values["files_read"] == 6
    gitlab = fleet.pipeline.gitlab
    counts = {
        kind: len(gitlab.requests_of_kind(kind))
        for kind in ("compare", "file", "tree", "archive", "raw_blob")
    }
    assert counts == {"compare": 1, "file": 6, "tree": 0, "archive": 0, "raw_blob": 6}
    assert {r.method for r in gitlab.requests_of_kind("file")} == {"HEAD"}

    # ... and back: binary -> text again, and a file grows.
    fleet.push({"toggle.dat": lines(2, "t"), "b.txt": lines(12, "b")})
    assert fleet.sensor_round() == ["team/app"]
    fleet.assert_exact()


def test_a_force_push_is_followed_by_comparing_trees(fleet: Fleet) -> None:
    first = fleet.indexed["team/app"][0]
    fleet.push({"a.py": lines(9, "later"), "later.txt": "later\n"})
    assert fleet.sensor_round() == ["team/app"]
    # Rewrite history: the indexed commit is no longer an ancestor of HEAD.
    run_git(fleet.repo, "reset", "-q", "--hard", first)
    fleet.push({"rewritten.txt": "new history\n", "b.txt": lines(2, "b")})
    ancestry = subprocess.run(
        [
            "git",
            "-C",
            str(fleet.repo),
            "merge-base",
            "--is-ancestor",
            fleet.indexed["team/app"][-1],
            "HEAD",
        ],
        check=False,
    )
    assert ancestry.returncode == 1  # the last indexed commit is not an ancestor any more
    assert fleet.sensor_round() == ["team/app"]
    fleet.assert_exact()
    assert not any(
        d["file_path"] == "later.txt" for d in fleet.pipeline.es.documents(INDEX).values()
    )


def test_a_full_refresh_rebuilds_and_removes_everything_stale(fleet: Fleet) -> None:
    es, pipeline = fleet.pipeline.es, fleet.pipeline
    fleet.push({"a.py": lines(7, "a2")})
    fleet.sensor_round()
    # Plant a stray document of this project that no manifest knows about.
    client = pipeline.resources()["elasticsearch"].client()
    stray = {
        **next(iter(es.documents(INDEX).values())),
        "file_path": "ghost.py",
        "project_id": fleet.app.id,
        "repository_name": "team/app",
        "commit_sha": "0" * 40,
    }
    client.index(index=INDEX, id="stray", document=stray)
    pipeline.index("team/app", full_refresh=True)
    fleet.indexed["team/app"] = [fleet.head("team/app")]
    fleet.assert_exact()
    meta = pipeline.instance.get_latest_materialization_event(
        AssetKey("es_index")
    ).asset_materialization
    assert meta.metadata["mode"].value == "full_refresh"


def _run_killed_inside_es_index(
    pipeline: Pipeline, partition: str, tags: dict[str, str] | None = None
) -> None:
    """Killed once its documents are written: at its first delete."""
    run_killed(pipeline, partition, "delete", tags)


@pytest.mark.faults
def test_a_run_killed_inside_es_index_leaves_the_old_commit_and_the_next_run_converges(
    fleet: Fleet,
) -> None:
    pipeline = fleet.pipeline
    indexed_before = fleet.indexed["team/app"][-1]
    written = fleet.push({"b.txt": lines(2, "b"), "new.txt": lines(3, "n")})
    _run_killed_inside_es_index(pipeline, "team/app")
    new_docs = {
        d["commit_sha"]
        for d in pipeline.es.documents(INDEX).values()
        if d["file_path"] == "new.txt"
    }
    assert new_docs == {written}  # written, but not recorded as indexed
    assert last_indexed(pipeline.instance, "team/app").commit_sha == indexed_before
    # The killed run's lease holds the repository until it expires (runs/leases.py).
    time.sleep(lease_seconds())

    # new.txt (added by the killed run's commit) is gone again at HEAD: a comparison with the
    # last recorded commit would not name it, so only a full rebuild removes its documents.
    fleet.push({"a.py": lines(6, "a4")}, delete=("new.txt",))
    assert fleet.sensor_round() == ["team/app"]
    fleet.indexed["team/app"] = [fleet.head("team/app")]
    fleet.assert_exact()
    state = last_indexed(pipeline.instance, "team/app")
    assert state is not None and state.commit_sha == fleet.head("team/app")
    meta = pipeline.instance.get_latest_materialization_event(
        AssetKey("es_index")
    ).asset_materialization
    assert meta.metadata["mode"].value == "full_refresh"
    fleet.push({"a.py": lines(2, "a5")})
    assert fleet.sensor_round() == ["team/app"]  # and incremental again from there
    fleet.assert_exact()


@pytest.mark.faults
def test_a_run_whose_process_died_is_failed_by_run_monitoring_and_retried_by_the_sensor(
    fleet: Fleet,
) -> None:
    """The local run launcher cannot see a dead run worker: run monitoring's max runtime
    marks the run failed (Dagster's own check, run here without the daemon), and the
    sensor asks for the repository again under a new run key."""
    pipeline = fleet.pipeline
    fleet.push({"b.txt": lines(2, "b"), "new.txt": lines(3, "n")})
    limits = SensorLimits(recheck_seconds=0, retry_seconds=0.5)
    (key, commit, run_key), *_ = pipeline.sensor_tick(limits)
    assert key == "team/app"
    _run_killed_inside_es_index(pipeline, key, {RUN_KEY_TAG: run_key, COMMIT_TAG: commit})
    (record,) = pipeline.instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: run_key}))
    assert record.dagster_run.status == DagsterRunStatus.STARTED  # nobody knows it died
    assert fleet.sensor_round(limits) == []  # its run key is taken, its lease still held
    check_run_timeout(pipeline.instance, record, logging.getLogger("test"), 0.001)
    ended = pipeline.instance.get_run_record_by_id(record.dagster_run.run_id)
    assert ended is not None and ended.dagster_run.status == DagsterRunStatus.FAILURE
    time.sleep(lease_seconds())  # the lease of the dead run expires
    assert fleet.sensor_round(limits) == ["team/app"]
    fleet.indexed["team/app"] = [fleet.head("team/app")]  # a full rebuild after a dead run
    fleet.assert_exact()


def test_the_asset_check_fails_when_the_index_disagrees_with_the_manifest(fleet: Fleet) -> None:
    pipeline = fleet.pipeline
    check = AssetCheckKey(AssetKey("es_index"), "document_count_matches_manifest")
    assert (
        pipeline.instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[
            check
        ].status.value
        == "SUCCEEDED"
    )
    client = pipeline.resources()["elasticsearch"].client()
    extra = {
        **next(iter(pipeline.es.documents(INDEX).values())),
        "file_path": "extra.py",
        "project_id": fleet.app.id,
        "repository_name": "team/app",
    }
    client.index(index=INDEX, id="extra", document=extra)
    fleet.push({"a.py": lines(6, "a3")})
    fleet.sensor_round()
    evaluation = pipeline.latest_count_check()
    assert evaluation.passed is False
    assert (
        evaluation.metadata["documents_in_index"].value
        == evaluation.metadata["lines_in_manifest"].value + 1
    )


def test_discovery_follows_additions_deletions_archiving_renames_and_branches(
    fleet: Fleet, tmp_path: Path
) -> None:
    pipeline, gitlab, es = fleet.pipeline, fleet.pipeline.gitlab, fleet.pipeline.es

    def docs_of(name: str) -> int:
        return sum(1 for d in es.documents(INDEX).values() if d["repository_name"] == name)

    # Added.
    extra_repo = init_repo(tmp_path / "extra")
    commit_files(extra_repo, {"e.txt": lines(2)})
    extra = gitlab.add_project("team/extra", str(extra_repo))
    pipeline.discover()
    assert "team/extra" in pipeline.partitions()
    assert fleet.pipeline.run_sensor_requests() == ["team/extra"]
    assert docs_of("team/extra") == 2

    # Archived: partition and documents go.
    extra.archived = True
    pipeline.discover()
    assert "team/extra" not in pipeline.partitions() and docs_of("team/extra") == 0
    assert last_indexed(pipeline.instance, "team/extra") is None
    # ... and come back in full when it is unarchived.
    extra.archived = False
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["team/extra"]
    assert docs_of("team/extra") == 2

    # Deleted.
    del gitlab.projects[extra.id]
    pipeline.discover()
    assert "team/extra" not in pipeline.partitions() and docs_of("team/extra") == 0

    # Renamed: the same project id, documents under the new path only.
    before = docs_of("team/app")
    fleet.app.path_with_namespace = "team/app-renamed"
    # A run of the old partition before discovery noticed: GitLab answers the old path with
    # the project (its redirect route); a clear failure naming the new path, nothing touched.
    stale_run = pipeline.index("team/app", raise_on_error=False)
    assert not stale_run.success
    message = stale_run.get_step_failure_events()[0].step_failure_data.error.message
    assert "team/app: GitLab has this project at team/app-renamed" in message
    assert docs_of("team/app") == before
    pipeline.discover()
    assert "team/app" not in pipeline.partitions() and "team/app-renamed" in pipeline.partitions()
    assert pipeline.run_sensor_requests() == ["team/app-renamed"]
    assert docs_of("team/app") == 0 and docs_of("team/app-renamed") == before
    assert all(
        d["project_id"] == fleet.app.id
        for d in es.documents(INDEX).values()
        if d["repository_name"] == "team/app-renamed"
    )

    # Default branch changed: followed, every document on the new branch.
    run_git(fleet.quiet, "checkout", "-q", "-b", "develop")
    develop = commit_files(fleet.quiet, {"dev.txt": lines(3, "dev")})
    fleet.other.default_branch_name = "develop"
    fleet.other.record_push(throttle_seconds=0)
    assert pipeline.run_sensor_requests() == ["team/quiet"]
    quiet_docs = [d for d in es.documents(INDEX).values() if d["repository_name"] == "team/quiet"]
    assert len(quiet_docs) == 6 and {d["branch"] for d in quiet_docs} == {"develop"}
    assert {d["commit_sha"] for d in quiet_docs} == {develop}
