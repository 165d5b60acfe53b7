"""Hooks (issue 26): GitLab posts, the receiver records in Dagster's storage, the sensor reads.

The receiver runs under uvicorn on a real port; the GitLab stand-in registers hooks through
its API (python-gitlab, as `hooks install` does) and posts GitLab's own payload shapes with
the hook's secret. Expectations come from git (the new line of a push) and from the requests
the stand-in saw, never from the code under test.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import gitlab
import pytest
import uvicorn
from dagster import DagsterInstance

from gitlab_es_pipeline.defs.sensors import SensorLimits
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.webhooks.heard import heard_since
from gitlab_es_pipeline.webhooks.receiver import Receiver, ReceiverSettings
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.gitlab import StandInProject

SECRET = "hook-secret-of-the-test"
# Polls far apart: between them a tick reads only what the hooks heard.
HOOKED = SensorLimits(recheck_seconds=0, poll_seconds=3600)


@contextmanager
def receiving(
    instance: DagsterInstance, settings: ReceiverSettings | None = None
) -> Iterator[tuple[str, Receiver]]:
    """The receiver on a free loopback port: its hook URL, and itself."""
    receiver = Receiver(lambda: instance, settings or ReceiverSettings(secret=SECRET))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/hooks", receiver
    finally:
        server.should_exit = True
        thread.join(10)


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _fleet(pipeline: Pipeline, root: Path, count: int = 3) -> dict[str, Path]:
    repos = {}
    for i in range(count):
        key = f"team/r{i}"
        repo = init_repo(root / f"r{i}")
        commit_files(repo, {"src/main.py": f"NAME = 'r{i}'\n", "README.md": f"# r{i}\n"})
        pipeline.gitlab.add_project(key, str(repo))
        repos[key] = repo
    assert pipeline.discover().success
    pipeline.run_tick(HOOKED)  # the first tick polls: everything indexed
    assert all(last_indexed(pipeline.instance, k) for k in repos)
    return repos


def _register(pipeline: Pipeline, url: str, scope: str = "system") -> None:
    """Through the API with python-gitlab, as `gitlab-es-pipeline hooks install` does."""
    gl = gitlab.Gitlab(pipeline.gitlab.url, private_token=pipeline.gitlab.token)
    attrs = {"url": url, "token": SECRET, "push_events": True, "repository_update_events": True}
    if scope == "system":
        gl.hooks.create(attrs)
    else:
        gl.projects.get(scope, lazy=True).hooks.create(attrs)


def _push(pipeline: Pipeline, repo: Path, project: StandInProject, text: str) -> str:
    before = run_git(repo, "rev-parse", "HEAD").strip()
    after = commit_files(repo, {"src/new.py": f"{text}\n"})
    statuses = pipeline.gitlab.push_hook(project, before, after)
    assert statuses and all(s == 202 for s in statuses), statuses
    return after


def _lines(pipeline: Pipeline, key: str) -> set[str]:
    return {
        d["line_content"]
        for d in pipeline.es.documents(INDEX).values()
        if d["repository_name"] == key
    }


def test_a_push_is_searchable_after_its_hook_without_any_listing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path)
    project = pipeline.gitlab.project("team/r1")
    with receiving(pipeline.instance) as (url, receiver):
        _register(pipeline, url, scope=str(project.id))
        pipeline.gitlab.requests.clear()
        after = _push(pipeline, repos["team/r1"], project, "FRESH_LINE = 1")
        assert pipeline.run_tick(HOOKED) == ["team/r1"]
    assert "FRESH_LINE = 1" in _lines(pipeline, "team/r1")
    state = last_indexed(pipeline.instance, "team/r1")
    assert state is not None and state.commit_sha == after
    listings = [r for r in pipeline.gitlab.requests if r.path in ("/projects", "/groups")]
    assert listings == [] and receiver.counts["recorded"] == 1
    # An idle tick and an idle receiver: no GitLab request at all.
    pipeline.gitlab.requests.clear()
    assert pipeline.run_tick(HOOKED) == []
    assert pipeline.gitlab.requests == []


def test_a_push_to_another_branch_is_heard_and_left(pipeline: Pipeline, tmp_path: Path) -> None:
    repos = _fleet(pipeline, tmp_path, 1)
    project = pipeline.gitlab.project("team/r0")
    with receiving(pipeline.instance) as (url, _):
        _register(pipeline, url)
        before = run_git(repos["team/r0"], "rev-parse", "HEAD").strip()
        statuses = pipeline.gitlab.push_hook(project, before, "1" * 40, ref="refs/heads/feature")
        assert statuses == [202, 202]  # the system hook's push and repository_update
        assert pipeline.run_tick(HOOKED) == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"object_kind": "push"}', {"X-Gitlab-Token": "wrong"}, 401),
        (b'{"object_kind": "push"}', {}, 401),
        (b"{not json", {"X-Gitlab-Token": SECRET}, 400),
        (
            b'{"object_kind": "push", "project_id": 1, "ref": "refs/heads/main", "after": "x"}',
            {"X-Gitlab-Token": SECRET},
            400,
        ),
        (b"x" * (64 * 1024 + 1), {"X-Gitlab-Token": SECRET}, 413),
        (b'{"object_kind": "issue", "project": {"id": 1}}', {"X-Gitlab-Token": SECRET}, 202),
    ],
    ids=["wrong-token", "no-token", "not-json", "bad-commit", "oversized", "unused-event"],
)
def test_the_door_refuses_what_it_must_and_records_nothing(
    pipeline: Pipeline, body: bytes, headers: dict[str, str], status: int
) -> None:
    settings = ReceiverSettings(secret=SECRET, max_body_bytes=64 * 1024)
    with receiving(pipeline.instance, settings) as (url, receiver):
        sent = _post(url, body, {"Content-Type": "application/json", **headers})
        assert sent == status
        assert sum(receiver.counts.values()) == 1
    assert heard_since(pipeline.instance, 0).events == []


def test_a_duplicate_and_a_burst_of_1000_events_for_10_projects_are_10_looks(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Two pushes to each of 10 projects, delivered over and over (1,000 deliveries, each of
    its own id): recorded once per commit (20), then one lookup and one run's worth of work
    per project, at its latest commit."""
    repos = _fleet(pipeline, tmp_path, 10)
    projects = {k: pipeline.gitlab.project(k) for k in repos}

    def body(key: str, after: str) -> bytes:
        push = {"object_kind": "push", "project_id": projects[key].id, "after": after}
        return json.dumps({**push, "ref": "refs/heads/main", "before": "0" * 40}).encode()

    with receiving(pipeline.instance) as (url, receiver):
        _register(pipeline, url)
        pushed = {}
        for key, repo in repos.items():
            first = commit_files(repo, {"src/new.py": f"FIRST = '{key}'\n"})
            pushed[key] = (first, commit_files(repo, {"src/new.py": f"BURST = '{key}'\n"}))
        # The same delivery twice (GitLab's retry): recorded once.
        for _ in range(2):
            assert _post(url, body("team/r0", pushed["team/r0"][0]), _headers("d-0")) == 202
        assert len(heard_since(pipeline.instance, 0).events) == 1
        for i in range(1000):  # the second push of each project last
            key = f"team/r{i % 10}"
            after = pushed[key][(i // 10) % 2]
            assert _post(url, body(key, after), _headers(f"burst-{i}")) == 202
        assert receiver.counts["recorded"] == 20
        pipeline.gitlab.requests.clear()
        assert sorted(pipeline.run_tick(replace(HOOKED, batch_size=50))) == sorted(repos)
    looks = [r for r in pipeline.gitlab.requests if re.fullmatch(r"/projects/\d+", r.path)]
    assert len(looks) == 10
    for key in repos:
        state = last_indexed(pipeline.instance, key)
        assert state is not None and state.commit_sha == pushed[key][1]
        lines = _lines(pipeline, key)
        assert f"BURST = '{key}'" in lines and f"FIRST = '{key}'" not in lines


def _headers(delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Gitlab-Token": SECRET,
        "X-Gitlab-Event": "Push Hook",
        "Idempotency-Key": delivery,
        "X-Gitlab-Event-UUID": delivery,
    }


def test_what_was_acknowledged_survives_a_restart_of_the_receiver(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path, 2)
    project = pipeline.gitlab.project("team/r0")
    with receiving(pipeline.instance) as (url, _):
        _register(pipeline, url)
        _push(pipeline, repos["team/r0"], project, "AFTER_RESTART = 1")
    # The receiver is gone before any tick; a new one starts; the tick still finds the push.
    with receiving(pipeline.instance):
        assert pipeline.run_tick(HOOKED) == ["team/r0"]
    assert "AFTER_RESTART = 1" in _lines(pipeline, "team/r0")


def test_a_project_created_then_pushed_is_indexed_without_waiting_for_discovery(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    _fleet(pipeline, tmp_path, 1)
    with receiving(pipeline.instance) as (url, _):
        _register(pipeline, url)
        repo = init_repo(tmp_path / "fresh")
        project = pipeline.gitlab.add_project("team/fresh", str(repo))
        assert pipeline.gitlab.project_hook(project, "project_create") == [202]
        assert pipeline.run_tick(HOOKED) == []  # empty yet: nothing to index
        after = commit_files(repo, {"hello.py": "HELLO = 'fresh'\n"})
        pipeline.gitlab.push_hook(project, "0" * 40, after)
        pipeline.gitlab.requests.clear()
        assert pipeline.run_tick(HOOKED) == ["team/fresh"]
    assert "HELLO = 'fresh'" in _lines(pipeline, "team/fresh")
    assert not [r for r in pipeline.gitlab.requests if r.path == "/projects"]


@pytest.mark.parametrize("event", ["project_rename", "project_transfer"])
def test_a_renamed_or_moved_project_is_indexed_at_its_new_path_and_leaves_the_old(
    pipeline: Pipeline, tmp_path: Path, event: str
) -> None:
    _fleet(pipeline, tmp_path, 2)
    project = pipeline.gitlab.project("team/r1")
    lines = _lines(pipeline, "team/r1")
    new = "team/renamed" if event == "project_rename" else "other/r1"
    with receiving(pipeline.instance) as (url, _):
        _register(pipeline, url)
        project.path_with_namespace = new
        assert pipeline.gitlab.project_hook(project, event, old_path="team/r1") == [202]
        launched = pipeline.run_tick(HOOKED)
    assert "(discovery)" in launched and new in launched
    assert new in pipeline.partitions() and "team/r1" not in pipeline.partitions()
    assert _lines(pipeline, new) == lines and _lines(pipeline, "team/r1") == set()


def test_a_project_made_private_is_indexed_again_as_private(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    _fleet(pipeline, tmp_path, 1)
    project = pipeline.gitlab.project("team/r0")
    project.visibility = "public"
    pipeline.index("team/r0", full_refresh=True)
    with receiving(pipeline.instance) as (url, _):
        _register(pipeline, url)
        project.visibility = "private"
        assert pipeline.gitlab.project_hook(project, "project_update") == [202]
        assert pipeline.run_tick(HOOKED) == ["team/r0"]
    visibility = {
        d["visibility"]
        for d in pipeline.es.documents(INDEX).values()
        if d["repository_name"] == "team/r0"
    }
    assert visibility == {"private"}


def test_a_destroyed_project_leaves_the_index(pipeline: Pipeline, tmp_path: Path) -> None:
    _fleet(pipeline, tmp_path, 3)
    project = pipeline.gitlab.project("team/r2")
    with receiving(pipeline.instance) as (url, _):
        _register(pipeline, url)
        del pipeline.gitlab.projects[project.id]
        assert pipeline.gitlab.project_hook(project, "project_destroy") == [202]
        assert pipeline.run_tick(HOOKED) == ["(discovery)"]
    assert "team/r2" not in pipeline.partitions() and _lines(pipeline, "team/r2") == set()


def test_hooks_never_delivered_change_nothing_but_latency(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path, 2)
    project = pipeline.gitlab.project("team/r0")
    with receiving(pipeline.instance) as (url, receiver):
        _register(pipeline, url)
        pipeline.gitlab.hooks.enabled = False  # lost, or the hook disabled by GitLab
        before = run_git(repos["team/r0"], "rev-parse", "HEAD").strip()
        after = commit_files(repos["team/r0"], {"src/new.py": "LOST_HOOK = 1\n"})
        assert pipeline.gitlab.push_hook(project, before, after) == [0, 0]
        project.record_push(throttle_seconds=0)
        assert pipeline.run_tick(HOOKED) == []  # between polls: nothing heard
        assert pipeline.run_tick(SensorLimits(recheck_seconds=0)) == ["team/r0"]  # the poll
        assert sum(receiver.counts.values()) == 0
    assert "LOST_HOOK = 1" in _lines(pipeline, "team/r0")


class _SlowStorage:
    """The real instance behind a storage that takes `delay` seconds to write, or fails."""

    def __init__(self, instance: DagsterInstance, delay: float, fail: bool = False) -> None:
        self._instance, self._delay, self._fail = instance, delay, fail

    def report_runless_asset_event(self, event: object) -> None:
        time.sleep(self._delay)
        if self._fail:
            raise ConnectionError("the storage went away")
        self._instance.report_runless_asset_event(event)  # type: ignore[arg-type]


@pytest.mark.parametrize(("delay", "fail"), [(3.0, False), (0.0, True)], ids=["slow", "failing"])
def test_a_slow_or_failing_storage_gets_503_well_within_gitlabs_timeout(
    instance: DagsterInstance, delay: float, fail: bool
) -> None:
    """Acknowledged only once recorded: a storage slower than the receiver's budget, or one
    that fails, is answered 503 (GitLab may deliver again), in time; the same delivery is
    recorded when it comes again to a storage that answers."""
    slow = _SlowStorage(instance, delay, fail)
    settings = ReceiverSettings(secret=SECRET, record_timeout_seconds=0.5)
    push = {"object_kind": "push", "project_id": 4, "ref": "refs/heads/main", "after": "c" * 40}
    with receiving(instance, settings) as (url, receiver):
        receiver.instance = lambda: slow  # type: ignore[assignment,return-value]
        started = time.monotonic()
        assert _post(url, json.dumps(push).encode(), _headers("again")) == 503
        assert time.monotonic() - started < 2.5
        receiver.instance = lambda: instance
        assert _post(url, json.dumps(push).encode(), _headers("again")) == 202
    time.sleep(delay)  # the slow write, abandoned, may still land: at most a duplicate
    events = heard_since(instance, 0).events
    assert 1 <= len(events) <= 2 and {e.commit for e in events} == {"c" * 40}
