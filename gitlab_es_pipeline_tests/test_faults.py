"""Faults in GitLab, Elasticsearch and the pipeline: whatever happens, the index stays right.

Every case ends by comparing the index with what git says it must hold: nothing lost,
nothing duplicated, nothing stale. Run the suite alone with `pytest -m faults` (the killed-run
cases live in test_incremental.py, the archive, tree and rejection cases in test_pipeline.py,
with the same mark).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterEventType,
    ExecuteInProcessResult,
)

from gitlab_es_pipeline.defs.sensors import SensorLimits
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.processes import free_port
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.gitlab import RecordedRequest
from gitlab_es_pipeline_tests.standins.http import Request, Response, StandInServer

pytestmark = pytest.mark.faults

APP, OTHER = "team/app", "team/other"


def _file(key: str, number: int, lines: int = 20, tag: str = "v1") -> str:
    return "".join(f'{key} file {number} line {n} {tag} = "x\\t{n}"\n' for n in range(lines))


class Fleet:
    """Two repositories: faults hit `team/app`; `team/other` must not care."""

    def __init__(self, pipeline: Pipeline, tmp_path: Path) -> None:
        self.pipeline = pipeline
        self.repos: dict[str, Path] = {}
        self.indexed: dict[str, list[str]] = {}
        for key, files in ((APP, 30), (OTHER, 5)):
            repo = init_repo(tmp_path / key.replace("/", "_"))
            commit_files(repo, {f"src/m{i}.py": _file(key, i) for i in range(files)})
            self.repos[key] = repo
        self.projects = {
            key: pipeline.gitlab.add_project(key, str(r)) for key, r in self.repos.items()
        }
        pipeline.discover()

    def head(self, key: str) -> str:
        return run_git(self.repos[key], "rev-parse", "HEAD").strip()

    def index(self, key: str) -> ExecuteInProcessResult:
        result = self.pipeline.index(key, raise_on_error=False)
        if result.success:
            mode = self.pipeline.latest_metadata("file_manifest", key)["mode"]
            # A full read rewrites every line at HEAD; an incremental one only what changed.
            runs = self.indexed.get(key, []) if mode == "incremental" else []
            self.indexed[key] = [*runs, self.head(key)]
        return result

    def sensor_round(self, limits: SensorLimits) -> list[str]:
        """A sensor tick and the runs the daemon would launch for it; returns those launched."""
        launched = self.pipeline.run_sensor_requests(limits, raise_on_error=False)
        for key in launched:
            state = last_indexed(self.pipeline.instance, key)
            if state is not None and state.commit_sha == self.head(key):
                mode = self.pipeline.latest_metadata("file_manifest", key)["mode"]
                runs = self.indexed.get(key, []) if mode == "incremental" else []
                self.indexed[key] = [*runs, self.head(key)]
        return launched

    def assert_still_at_the_last_indexed_commit(self, key: str) -> None:
        """A failed run recorded nothing: Dagster's storage still names the commit before."""
        state = last_indexed(self.pipeline.instance, key)
        assert state is not None and state.commit_sha == self.indexed[key][-1]

    def push(self, key: str, files: dict[str, str]) -> None:
        commit_files(self.repos[key], files)
        self.projects[key].record_push()

    def assert_exact(self) -> None:
        expected: dict = {}
        for key, commits in self.indexed.items():
            project = self.projects[key]
            url = f"{self.pipeline.gitlab.url}/{key}"
            expected.update(
                expected_after_runs(
                    self.repos[key], commits, project.id, key, "main", url, known_text={}
                ).documents
            )
        documents = self.pipeline.es.documents(INDEX)
        assert set(documents) == set(expected), set(documents) ^ set(expected)
        for doc_id, doc in expected.items():
            assert documents[doc_id] == doc, doc_id


def _failure_message(result: ExecuteInProcessResult) -> str:
    """What the UI shows as the step's failure: our Failure's description."""
    data = result.get_step_failure_events()[0].step_failure_data
    assert data.user_failure_data is not None and data.user_failure_data.description
    return data.user_failure_data.description


def _step_attempts(result: ExecuteInProcessResult, step: str) -> int:
    return sum(
        1
        for event in result.all_events
        if event.step_key == step and event.event_type == DagsterEventType.STEP_START
    ) + sum(
        1
        for event in result.all_events
        if event.step_key == step and event.event_type == DagsterEventType.STEP_RESTARTED
    )


def _requests(pipeline: Pipeline, key: str, kind: str) -> list[RecordedRequest]:
    project_id = str(pipeline.gitlab._find_project(key).id)
    return [
        r
        for r in pipeline.gitlab.requests_of_kind(kind)
        if r.path.startswith((f"/projects/{project_id}/", f"/projects/{key}"))
    ]


@pytest.fixture
def fleet(pipeline: Pipeline, tmp_path: Path) -> Fleet:
    return Fleet(pipeline, tmp_path)


def _refuse(
    times: int, where: str, answer: Callable[[], Response]
) -> Callable[[Request, str], Response | None]:
    """A GitLab fault: the first `times` requests whose path contains `where` get `answer()`."""
    left = [times]

    def fault(request: Request, path: str) -> Response | None:
        if where in path and left[0] > 0:
            left[0] -= 1
            return answer()
        return None

    return fault


# -- GitLab --------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", ["none", "retry_after", "ratelimit_reset"])
def test_a_burst_of_429s_is_waited_out(fleet: Fleet, headers: str) -> None:
    """gitlab.com often sends 429 with no headers at all; when it says how long, we wait."""

    def too_many() -> Response:
        answer = Response(429, {"message": "429 Too Many Requests"})
        answer.bare = True
        if headers == "retry_after":
            answer.headers["Retry-After"] = "1"
        elif headers == "ratelimit_reset":
            answer.headers["RateLimit-Reset"] = str(int(time.time()) + 2)
        return answer

    fleet.pipeline.gitlab.faults.append(_refuse(3, "/repository/tree", too_many))
    assert fleet.index(APP).success and fleet.index(OTHER).success
    tree = _requests(fleet.pipeline, APP, "tree")
    assert [r.status for r in tree] == [429, 429, 429, 200]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tree)]
    if headers == "retry_after":
        assert all(gap >= 0.95 for gap in gaps), gaps
    elif headers == "ratelimit_reset":
        assert sum(gaps) >= 0.95, gaps  # waited until the announced reset
    else:
        assert 0.05 < gaps[0] < gaps[1] < gaps[2] < 5, gaps  # backing off by itself
    fleet.assert_exact()


def _bare(status: int) -> Response:
    """An error from in front of GitLab (load balancer, proxy): none of GitLab's headers.

    (With RateLimit-Reset on it, python-gitlab would wait until the rate window resets.)
    """
    answer = Response(status, {"message": f"{status} from the load balancer"})
    answer.bare = True
    return answer


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(fleet: Fleet, status: int) -> None:
    fleet.pipeline.gitlab.faults.append(_refuse(2, "/repository/archive", lambda: _bare(status)))
    assert fleet.index(APP).success
    archive = _requests(fleet.pipeline, APP, "archive")
    assert [r.status for r in archive] == [status, status, 200]
    fleet.assert_exact()


@pytest.mark.parametrize("fault", ["reset", "timeout"])
def test_connection_resets_and_timeouts_are_retried(fleet: Fleet, fault: str) -> None:
    fleet.pipeline.gitlab_options["request_timeout_seconds"] = 1.0
    broken_at: list[float] = []

    def answer() -> Response:
        broken_at.append(time.monotonic())
        if fault == "reset":
            return Response.connection_reset()
        time.sleep(1.5)  # the client has given up by now
        return _bare(504)

    fleet.pipeline.gitlab.faults.append(_refuse(1, "/repository/branches/", answer))
    assert fleet.index(APP).success
    # The broken request (recorded by the stand-in only once its handler is done) and the
    # client's retry, which came after it gave up on the first.
    answered = [r for r in _requests(fleet.pipeline, APP, "branch") if r.status == 200]
    assert len(broken_at) == 1 and len(answered) == 1
    waited = answered[0].at - broken_at[0]
    # The timeout first (1 s), then python-gitlab's first back-off (0.1 s) in both cases.
    assert waited >= (1.0 if fault == "timeout" else 0.0) + 0.09, waited
    fleet.assert_exact()


def test_a_raw_file_cut_off_mid_body_is_fetched_again(fleet: Fleet) -> None:
    assert fleet.index(APP).success
    fleet.push(APP, {"src/m3.py": _file(APP, 3, tag="v2")})

    def cut() -> Response:
        def body() -> Iterator[bytes]:  # half a file, then the connection goes
            yield b"half a file\n"
            raise StandInServer.BrokenStream()

        return Response(200, stream=body(), content_type="text/plain")

    fleet.pipeline.gitlab.faults.append(_refuse(1, "/raw", cut))
    assert fleet.index(APP).success
    assert fleet.pipeline.latest_metadata("file_manifest", APP)["mode"] == "incremental"
    assert len(_requests(fleet.pipeline, APP, "raw_blob")) == 2
    fleet.assert_exact()


def test_a_project_deleted_after_discovery_fails_its_run_and_the_others_go_on(
    fleet: Fleet,
) -> None:
    project = fleet.pipeline.gitlab._find_project(APP)
    assert project is not None
    del fleet.pipeline.gitlab.projects[project.id]
    result = fleet.index(APP)
    assert not result.success
    message = _failure_message(result)
    assert message.startswith(f"{APP}: GitLab refused") and "HTTP 404" in message
    assert "discovery will replace this partition" in message
    # Permanent: not retried by Dagster (one attempt of the step).
    assert _step_attempts(result, "manifest_and_line_documents") == 1
    assert fleet.index(OTHER).success
    fleet.assert_exact()
    # The next discovery drops the partition.
    fleet.pipeline.discover()
    assert APP not in fleet.pipeline.partitions()


@pytest.mark.parametrize(("status", "hint"), [(401, "check GITLAB_TOKEN"), (403, "read_api")])
def test_a_revoked_token_fails_at_once_and_says_what_to_do(
    fleet: Fleet, status: int, hint: str
) -> None:
    assert fleet.index(APP).success
    fleet.push(APP, {"src/new.py": _file(APP, 99)})
    fleet.pipeline.gitlab.faults.append(
        lambda request, path: Response(status, {"message": f"{status} refused"})
    )
    result = fleet.index(APP)
    assert not result.success
    message = _failure_message(result)
    assert message.startswith(APP) and f"HTTP {status}" in message and hint in message
    assert fleet.pipeline.gitlab.token not in message
    assert _step_attempts(result, "manifest_and_line_documents") == 1
    fleet.assert_still_at_the_last_indexed_commit(APP)
    fleet.assert_exact()  # still the commit indexed before


def test_a_repository_that_keeps_failing_is_counted_and_does_not_block_the_rest(
    fleet: Fleet,
) -> None:
    app_id = fleet.projects[APP].id

    def app_forbidden(request: Request, path: str) -> Response | None:
        if path.startswith((f"/api/v4/projects/{app_id}/", "/api/v4/projects/team%2Fapp")):
            return Response(403, {"message": "403 Forbidden"})
        return None

    fleet.pipeline.gitlab.faults.append(app_forbidden)
    assert not fleet.index(APP).success
    assert fleet.index(OTHER).success
    fleet.pipeline.discover()
    meta = fleet.pipeline.latest_metadata("repositories")
    assert meta["repositories_failing"] == 1 and APP in meta["failing"]
    fleet.pipeline.gitlab.faults.clear()
    assert fleet.index(APP).success
    fleet.pipeline.discover()
    assert fleet.pipeline.latest_metadata("repositories")["repositories_failing"] == 0
    fleet.assert_exact()


# -- Elasticsearch -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_a_refused_bulk_request_is_sent_again(fleet: Fleet, status: int) -> None:
    fleet.pipeline.es_options["bulk_initial_backoff_seconds"] = 0.05
    refused = [0]

    def overloaded(request: Request) -> Response | None:
        # 4 in a row: more than the client's own 3 quick retries, so ours must act too.
        if request.raw_path.endswith("/_bulk") and refused[0] < 4:
            refused[0] += 1
            return Response(status, {"error": {"type": "es_rejected_execution_exception"}})
        return None

    fleet.pipeline.es.faults.append(overloaded)
    result = fleet.index(APP)
    assert result.success and refused[0] == 4
    fleet.assert_exact()


def test_elasticsearch_down_for_a_whole_run_keeps_the_old_commit_and_the_next_run_converges(
    fleet: Fleet,
) -> None:
    fleet.pipeline.es_options.update(bulk_initial_backoff_seconds=0.05, bulk_max_retries=2)
    assert fleet.index(APP).success
    fleet.push(APP, {"src/m1.py": _file(APP, 1, tag="v2"), "src/added.py": _file(APP, 77)})
    fleet.pipeline.es.faults.append(lambda request: Response.connection_reset())
    result = fleet.index(APP)
    assert not result.success
    assert _step_attempts(result, "es_index") == 2  # transient: retried once (tests' policy)
    fleet.assert_still_at_the_last_indexed_commit(APP)
    fleet.pipeline.es.faults.clear()
    assert fleet.index(APP).success
    fleet.assert_exact()


def test_a_cluster_that_does_not_answer_is_named_with_its_url_in_the_runs_log(
    fleet: Fleet,
) -> None:
    """The log of a run that cannot reach the cluster says which service and where (as the
    command line does), never the credentials in its URL; the read goes on, and the write is
    retried."""
    closed = free_port()  # nothing listens there: connection refused, as a cluster that is down
    fleet.pipeline.es_options.update(url=f"http://elastic:hunter2@127.0.0.1:{closed}")
    result = fleet.index(APP)
    assert not result.success
    assert _step_attempts(result, "es_index") == 2  # transient: retried (tests' policy: once)
    said = (
        f"cannot reach the cluster at http://***@127.0.0.1:{closed}: [Errno 111] Connection refused"
    )
    retried = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    failed = result.get_step_failure_events()
    assert [e.step_key for e in [*retried, *failed]] == ["es_index", "es_index"]
    for event in [*retried, *failed]:
        assert f"{APP}: {said}" in str(event.event_specific_data), event
    # The read step said it too, and read: its manifest is stored for the write's retry.
    logs = fleet.pipeline.instance.all_logs(result.run_id)
    told = [r.user_message for r in logs if isinstance(r.level, int) and r.level >= logging.WARNING]
    assert any(m.startswith(f"{APP}: {said}; reading anyway") for m in told), told
    assert all("hunter2" not in r.message for r in logs)
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {AssetKey("file_manifest"), AssetKey("line_documents")}


def test_elasticsearch_going_down_mid_write_leaves_nothing_stale_after_the_next_run(
    fleet: Fleet,
) -> None:
    fleet.pipeline.es_options.update(bulk_initial_backoff_seconds=0.05, bulk_max_retries=1)
    assert fleet.index(APP).success
    fleet.push(APP, {f"src/m{i}.py": _file(APP, i, lines=25, tag="v2") for i in range(0, 30, 2)})
    bulks = [0]

    def down_after_two_bulks(request: Request) -> Response | None:
        if request.raw_path.endswith("/_bulk"):
            bulks[0] += 1
            if bulks[0] > 2:
                return Response.connection_reset()
        return None

    fleet.pipeline.es.faults.append(down_after_two_bulks)
    failed = fleet.index(APP)
    assert not failed.success
    # One line naming the cluster, not the client's chain of wrapped exceptions.
    (message,) = [
        str(e.step_failure_data.user_failure_data.description)
        for e in failed.get_step_failure_events()
    ]
    said = re.fullmatch(
        rf"{APP}: cannot reach the cluster at {re.escape(fleet.pipeline.es.url)}: (.*)", message
    )
    assert said and len(said[1]) < 60 and "(" not in said[1], message
    # Half the new commit is in the index, none of it marked indexed.
    fleet.assert_still_at_the_last_indexed_commit(APP)
    fleet.pipeline.es.faults.clear()
    assert fleet.index(APP).success
    assert fleet.pipeline.latest_metadata("file_manifest", APP)["mode"] == "full_refresh"
    fleet.assert_exact()


def test_a_failed_run_is_asked_for_again_by_the_sensor_later_under_a_new_run_key(
    fleet: Fleet,
) -> None:
    """Dagster never launches a run key twice: a retry needs a new one, and waits first."""
    limits = SensorLimits(recheck_seconds=0, retry_seconds=1.5)
    assert sorted(fleet.sensor_round(limits)) == [APP, OTHER]
    fleet.push(APP, {"src/m2.py": _file(APP, 2, tag="v2")})
    fleet.pipeline.es.faults.append(lambda request: Response.connection_reset())
    assert fleet.sensor_round(limits) == [APP]  # launched, and failed
    assert last_indexed(fleet.pipeline.instance, APP).commit_sha != fleet.head(APP)
    fleet.pipeline.es.faults.clear()
    # At once: the same commit's run key again, which Dagster skips.
    assert fleet.sensor_round(limits) == []
    time.sleep(1.6)
    assert fleet.sensor_round(limits) == [APP]  # the retry, with a run key of its own
    run_keys = sorted(
        record.dagster_run.tags["dagster/run_key"]
        for record in fleet.pipeline.instance.get_run_records()
        if record.dagster_run.tags.get("dagster/partition") == APP
    )
    head = fleet.head(APP)
    assert [k for k in run_keys if head in k] == [f"{APP}@{head}", f"{APP}@{head}~1"]
    assert fleet.sensor_round(limits) == []  # indexed now: nothing more to retry
    fleet.assert_exact()


def test_documents_refused_for_good_become_dead_letters_that_the_next_run_sends_again(
    fleet: Fleet,
) -> None:
    pipeline = fleet.pipeline
    assert fleet.index(APP).success
    fleet.push(APP, {"src/m3.py": _file(APP, 3, tag="v2")})

    def mapping_error(kind: str, meta: dict, source: dict | None) -> dict | None:
        if source and source["file_path"] == "src/m3.py" and source["line_number"] == 2:
            return {
                "_id": meta["_id"],
                "status": 400,
                "error": {"type": "document_parsing_exception", "reason": "bad value"},
            }
        return None

    pipeline.es.item_faults.append(mapping_error)
    result = fleet.index(APP)
    assert not result.success
    message = _failure_message(result)
    assert "src/m3.py:2: HTTP 400 document_parsing_exception: bad value" in message
    assert _step_attempts(result, "es_index") == 1  # permanent: Dagster does not retry it
    # The asset check failed, with the count; the commit is not marked indexed.
    check = AssetCheckKey(AssetKey("es_index"), "document_count_matches_manifest")
    execution = pipeline.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [check]
    )[check]
    evaluation = execution.event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.metadata["documents_rejected"].value == 1
    fleet.assert_still_at_the_last_indexed_commit(APP)
    # The dead letter, kept where the failure says.
    kept = Path(str(evaluation.metadata["dead_letters"].value))
    assert kept == pipeline.storage / "es_index_dead_letters" / "team" / "app.parquet"
    rows = pq.read_table(kept).to_pylist()
    assert [(r["file_path"], r["line_number"], r["status"]) for r in rows] == [
        ("src/m3.py", 2, 400)
    ]
    assert rows[0]["commit_sha"] == fleet.head(APP) and "bad value" in rows[0]["error"]
    # The mapping is fixed: the next run rebuilds, sends it again, and the letter is gone.
    pipeline.es.item_faults.clear()
    assert fleet.index(APP).success
    meta = pipeline.latest_metadata("es_index", APP)
    assert meta["mode"] == "full_refresh" and meta["dead_letters_retried"] == 1
    assert not kept.exists()
    fleet.assert_exact()
