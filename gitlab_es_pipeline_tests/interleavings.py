"""A world for randomized interleavings (issue 25, item 6): the GitLab and Elasticsearch
stand-ins over HTTP, real git repositories, a Dagster instance from the project's own
dagster.yaml (SQLite, or PostgreSQL through DAGSTER_PG_URL) that run processes of their own
open too, and what the test needs around them: runs killed mid-write, the daemon away, faults,
quiescing, and the comparison of the index with what git and the stand-in say.

The expectation never comes from the pipeline's code: documents from `git ls-tree` and
`git cat-file` (corpus.expected_documents) at each project's HEAD, identities from the
stand-in's project list. Used by test_interleavings.py and bench/soak.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

# A killed run's repositories are free after a lease: 10 s here, as in the tests (conftest).
os.environ.setdefault("LEASE_SECONDS", "10")

from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from gitlab_es_pipeline.core.sensor_cursor import SensorCursor
from gitlab_es_pipeline.defs.assets import (
    es_index,
    manifest_and_line_documents,
    repositories,
)
from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.defs.sensors import SensorLimits
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline_tests.corpus import expected_documents
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import (
    GitLabStandIn,
    StandInProject,
)
from gitlab_es_pipeline_tests.standins.http import Request, Response

ROOT = Path(__file__).resolve().parents[1]

# Retries due at once, wants asked again at once, every active project looked at each tick.
LIMITS = SensorLimits(recheck_seconds=0, retry_seconds=0.2, request_grace_seconds=0)
# Fields of a document that do not depend on which commits were indexed incrementally (a
# line keeps the commit at which its file last changed; its link names that commit).
STABLE_FIELDS = (
    "project_id",
    "visibility",
    "repository_name",
    "branch",
    "file_path",
    "blob_sha",
    "line_number",
    "line_content",
    "line_truncated",
)
VISIBILITIES = ("private", "internal", "public")
NAMESPACES = ("g1", "g2")
NAMES = ("alpha", "beta", "gamma", "delta")
BRANCHES = ("main", "dev")


def lines(n: int, tag: str) -> str:
    return "".join(f"{tag} line {i}\n" for i in range(1, n + 1))


# -- the world ---------------------------------------------------------------------------------
@dataclass
class World:
    """One example's services, repositories and Dagster instance, all new."""

    root: Path
    gitlab: GitLabStandIn
    es: ElasticsearchStandIn
    instance: DagsterInstance
    pipeline: Pipeline
    repos: dict[int, Path] = field(default_factory=dict)  # project id -> its repository
    saved_env: dict[str, str | None] = field(default_factory=dict)
    pushes: int = 0
    kills: int = 0
    kill_attempts: int = 0
    # partitions a killed run may have written: storage id of their record then
    unsettled: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # what happened, for a failure's report

    # -- projects ---------------------------------------------------------------------------
    def new_project(self, path: str, files: dict[str, str] | None = None) -> StandInProject:
        repo = init_repo(self.root / "repos" / f"r{len(self.repos)}-{path.replace('/', '_')}")
        commit_files(repo, files or _files(path, 0), "first")
        commit_files(repo, {"CHANGELOG.md": f"# {path}\n\n- second\n"}, "second")
        project = self.gitlab.add_project(path, str(repo))
        self.repos[project.id] = repo
        return project

    def project_by_id(self, project_id: int) -> StandInProject | None:
        return self.gitlab.projects.get(project_id)

    def projects(self) -> list[StandInProject]:
        return sorted(self.gitlab.projects.values(), key=lambda p: p.id)

    def free_paths(self) -> list[str]:
        taken = {p.path_with_namespace for p in self.gitlab.projects.values()}
        return [f"{ns}/{n}" for ns in NAMESPACES for n in NAMES if f"{ns}/{n}" not in taken]

    def repo(self, project: StandInProject) -> Path:
        return self.repos[project.id]

    def checkout_default(self, project: StandInProject) -> Path:
        """The project's repository with its default branch checked out (pushes go there)."""
        repo = self.repo(project)
        branch = project.default_branch_name
        if run_git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() != branch:
            run_git(repo, "checkout", "-q", branch)
        return repo

    def push(self, project: StandInProject, seed: int, record: bool = True) -> str:
        """A commit on the default branch: a file changed, added, deleted or renamed. What it
        did, for the log."""
        repo = self.checkout_default(project)
        tracked = sorted(run_git(repo, "ls-files", "-z").split("\x00")[:-1])
        kind = seed % 4
        n = self.pushes = self.pushes + 1
        if kind == 1 or len(tracked) < 3:
            path = f"src/new{n}.py"
            commit = commit_files(repo, {path: lines(1 + seed % 5, f"new{n}")})
            what = f"add {path}"
        elif kind == 2:
            path = tracked[seed % len(tracked)]
            commit = commit_files(repo, {}, f"delete {n}", delete=(path,))
            what = f"delete {path}"
        elif kind == 3:
            old = tracked[seed % len(tracked)]
            (repo / "moved").mkdir(exist_ok=True)
            new = f"moved/{n}-{old.rpartition('/')[2]}"
            run_git(repo, "mv", old, new)
            commit = commit_files(repo, {}, f"rename {n}")
            what = f"rename {old} -> {new}"
        else:
            path = tracked[seed % len(tracked)]
            commit = commit_files(repo, {path: lines(1 + seed % 7, f"edit{n}")})
            what = f"edit {path}"
        if record:
            project.record_push()
        return f"{what} ({project.default_branch_name} at {commit[:8]})"

    def force_push(self, project: StandInProject, seed: int) -> str:
        """The default branch reset to an older commit, then a new commit on it."""
        repo = self.checkout_default(project)
        depth = int(run_git(repo, "rev-list", "--count", "HEAD").strip())
        back = 1 + seed % max(1, depth - 1) if depth > 1 else 0
        if back:
            run_git(repo, "reset", "-q", "--hard", f"HEAD~{back}")
        n = self.pushes = self.pushes + 1
        commit = commit_files(repo, {f"forced{n}.txt": lines(2, f"forced{n}")}, f"forced {n}")
        project.record_push()
        return f"reset {project.default_branch_name} {back} back, then {commit[:8]}"

    def switch_branch(self, project: StandInProject) -> str:
        """The default branch becomes the other one (made from HEAD, with a commit, if new)."""
        repo = self.repo(project)
        other = BRANCHES[1 - BRANCHES.index(project.default_branch_name)]
        if project.head(other) is None:
            run_git(repo, "checkout", "-q", "-b", other)
            commit_files(repo, {f"{other}.txt": lines(2, other)}, f"on {other}")
        else:
            run_git(repo, "checkout", "-q", other)
        project.default_branch_name = other
        project.record_push()
        return other

    # -- runs ---------------------------------------------------------------------------------
    def partitions(self) -> list[str]:
        """In the order discovery added them (a backfill's ranges follow it)."""
        return list(self.instance.get_dynamic_partitions(REPOSITORIES_PARTITION))

    def awaited(self) -> dict[str, Any]:
        return SensorCursor.from_json(self.pipeline.sensor_cursor).requested

    def es_index_alone(self, key: str, read_first: bool) -> ExecuteInProcessResult:
        """es_index materialized alone for one partition (from the stored read); first, if
        asked, file_manifest/line_documents alone (a read without a write)."""
        assets = [manifest_and_line_documents, es_index, repositories]
        if read_first:
            materialize(
                assets,
                selection=[manifest_and_line_documents],
                partition_key=key,
                instance=self.instance,
                resources=self.pipeline.resources(),
                raise_on_error=False,
            )
        return self.pipeline.write_alone(key)

    def age_sensor_cursor(self, seconds: float) -> None:
        """The daemon away: the sensor's last tick (its listing, its lookups, its requests)
        `seconds` ago rather than now, as its cursor would be had it stopped then."""
        cursor = SensorCursor.from_json(self.pipeline.sensor_cursor)
        if cursor.listed_at:
            cursor.listed_at -= seconds
        cursor.checked = {k: (a, t - seconds) for k, (a, t) in cursor.checked.items()}
        for want in cursor.requested.values():
            want.requested_at -= seconds
        if cursor.failures_seen_until:
            cursor.failures_seen_until -= seconds
        self.pipeline.sensor_cursor = cursor.to_json()

    def run_killed(self, keys: list[str], at: str) -> bool:
        """A run of one partition (or a batch of several) in a process of its own, killed with
        SIGKILL at the first bulk item of kind `at` ("any": its first write). False when it
        ended on its own first (nothing to write, or it failed)."""
        self.kill_attempts += 1
        spec: dict[str, Any] = {
            "gitlab": {"url": self.gitlab.url, "token": self.gitlab.token},
            "es": {"url": self.es.url, "api_key": self.es.api_key},
            "storage": str(self.pipeline.storage),
            "partition": keys[0],
            "gitlab_options": self.pipeline.gitlab_options,
            "es_options": self.pipeline.es_options,
        }
        if len(keys) > 1:
            spec["batch"] = keys
        child = subprocess.Popen(
            [sys.executable, "-m", "gitlab_es_pipeline_tests.interleavings", json.dumps(spec)],
            cwd=ROOT,  # the package importable wherever the test or soak was started from
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def kill(kind: str, meta: dict, source: object) -> None:
            if (at == "any" or kind == at) and child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)

        self.es.item_faults.append(kill)
        try:
            try:
                code = child.wait(timeout=120)
            except subprocess.TimeoutExpired:  # waiting for a lease, say: killed there
                child.kill()
                code = child.wait()
        finally:
            self.es.item_faults.remove(kill)
        killed = code == -signal.SIGKILL
        self.kills += killed
        if killed:  # what it wrote is recorded nowhere until a run records these again
            for key in keys:
                state = last_indexed(self.instance, key)
                self.unsettled[key] = state.storage_id if state is not None else 0
        return killed

    # -- faults -------------------------------------------------------------------------------
    def gitlab_burst(self, count: int, status: int) -> None:
        """The next `count` GitLab requests answer `status` (a 5xx burst)."""
        left = [count]

        def burst(request: Request, path: str) -> Response | None:
            if left[0] > 0:
                left[0] -= 1
                # From a proxy in front of GitLab: none of GitLab's rate-limit headers (with
                # RateLimit-Reset, python-gitlab would wait for the rate window's end).
                answer = Response(status, {"message": f"{status} stand-in burst"})
                answer.bare = True
                return answer
            return None

        self.gitlab.faults.append(burst)

    def es_down(self) -> None:
        self.es.faults.append(_refused)

    def es_up(self) -> None:
        while _refused in self.es.faults:
            self.es.faults.remove(_refused)

    @property
    def es_is_down(self) -> bool:
        return _refused in self.es.faults

    def during_next_run(self, project_id: int, change: Callable[[], None]) -> None:
        """`change` happens when GitLab is next asked for the project's archive or comparison
        (a run reading it, after it looked up the project and its HEAD)."""
        done = [False]

        def hook(request: Request, path: str) -> Response | None:
            reads = path.startswith(f"/api/v4/projects/{project_id}/repository/") and (
                "/archive" in path or "/compare" in path
            )
            if reads and not done[0]:
                done[0] = True
                change()
            return None

        self.gitlab.faults.append(hook)

    def clear_faults(self) -> None:
        self.gitlab.faults.clear()
        self.es.faults.clear()
        self.es.item_faults.clear()

    # -- the end ------------------------------------------------------------------------------
    def quiesce(self, deadline_seconds: float = 90) -> list[str]:
        """Faults gone; then discovery (the whole fleet reconciled: quiet for a period) and
        sensor ticks with their runs until a tick asks for nothing and nothing is awaited,
        again until a discovery finds nothing to change. Problems found on the way."""
        self.clear_faults()
        problems: list[str] = []
        deadline = time.monotonic() + deadline_seconds
        for _ in range(6):
            with _env(RECONCILE_PERIOD_SECONDS="0.001"):
                result = self.pipeline.discover(raise_on_error=False, allow_mass_removal=True)
            if not result.success:
                problems.append(f"discovery failed with no fault active: {_failure(result)}")
                return problems
            meta = self.pipeline.latest_metadata("repositories")
            changed = sum(
                int(meta.get(name, 0) or 0)
                for name in (
                    "partitions_added",
                    "partitions_removed",
                    "orphans_removed",
                    "wants_recorded",
                    "wants_already_waiting",
                )
            ) + (meta.get("partitions_replaced", "none") != "none")
            ticks = 0
            while True:
                launched = self.pipeline.run_tick(LIMITS)
                ticks += 1
                if not launched and not self.awaited():
                    break
                if time.monotonic() > deadline:
                    problems.append(
                        f"not quiet after {deadline_seconds} s: awaited {sorted(self.awaited())}"
                    )
                    return problems
                time.sleep(0.3 if launched else 0.5)  # past the retry backoff of LIMITS
            if not changed and ticks == 1:
                return problems
        problems.append("discovery kept finding changes")
        return problems

    def expected(self) -> dict[str, dict[str, Any]]:
        """From git and the stand-in: every line of every indexable project at its HEAD."""
        out: dict[str, dict[str, Any]] = {}
        for project in self.indexable():
            out.update(
                expected_documents(
                    Path(project.repo),
                    project.id,
                    project.path_with_namespace,
                    project.default_branch_name,
                    f"{self.gitlab.url}/{project.path_with_namespace}",
                    known_text={},
                    visibility=project.visibility,
                ).documents
            )
        return out

    def indexable(self) -> list[StandInProject]:
        """What GitLab lists that has lines: not archived, with a default branch HEAD."""
        return [
            p
            for p in self.projects()
            if not p.archived and not p.empty_repo and p.head() is not None
        ]

    def recorded_state_problems(self) -> list[str]:
        """Safety, after any step: for every partition Dagster records as indexed, the index
        holds exactly the lines of the recorded commit under the recorded identity (branch,
        web URL, visibility of its es_index record), as git says. Left out: a partition a
        killed run may have written since its record (its lease is dirty until a run records
        it again), and a partition whose project moved since its record (deleted, renamed or
        moved, maybe back again): documents' ids are the project's, so a run of the project's
        new path rightly takes them over, and this record is stale until a run of this path."""
        documents = self.es.documents(INDEX)
        at_path = {p.path_with_namespace: p for p in self.gitlab.projects.values()}
        states = {}
        for key in self.partitions():
            state = last_indexed(self.instance, key)
            project = at_path.get(key)
            if state is None or project is None or project.id != state.project_id:
                continue
            if project.moved_at > state.timestamp:
                continue
            if key in self.unsettled and state.storage_id <= self.unsettled[key]:
                continue
            states[key] = state
        out = []
        for key, state in sorted(states.items()):
            project_id = state.project_id
            repo = self.repos.get(project_id)  # type: ignore[arg-type]
            if repo is None:
                continue
            meta = self.pipeline.latest_metadata("es_index", key)
            want = expected_documents(
                repo,
                project_id,  # type: ignore[arg-type]
                key,
                str(meta.get("branch")),
                str(meta.get("project")),
                known_text={},
                commit=state.commit_sha,
                visibility=str(meta.get("visibility")),
            ).documents
            have = {
                i: d
                for i, d in documents.items()
                if d.get("project_id") == project_id and d.get("repository_name") == key
            }
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            differing = [
                f"{i}: " + ", ".join(f"{f} {have[i].get(f)!r} != {want[i][f]!r}" for f in fields)
                for i in sorted(set(want) & set(have))
                if (fields := [f for f in STABLE_FIELDS if want[i].get(f) != have[i].get(f)])
            ]
            if missing or extra or differing:
                out.append(
                    f"{key}: Dagster records commit {state.commit_sha[:10]} (project "
                    f"{project_id}, {meta.get('branch')}, {meta.get('visibility')}) but the "
                    f"index differs: {len(missing)} missing ({_show(want, missing)}), "
                    f"{len(extra)} too many ({_show(have, extra)}), {len(differing)} differ "
                    f"({'; '.join(differing[:3])})"
                )
        return out

    def violations(self) -> list[str]:
        """The index and Dagster's records against the expectation; one line per problem."""
        out: list[str] = []
        documents = self.pipeline.es.documents(INDEX) if self.es.indices else {}
        expected = self.expected()
        partitions = set(self.partitions())
        wanted = {p.path_with_namespace for p in self.indexable()}
        if partitions != wanted:
            out.append(f"partitions {sorted(partitions)} != projects listed {sorted(wanted)}")
        strays = sorted({d["repository_name"] for d in documents.values()} - partitions)
        if strays:
            out.append(f"documents of repositories that are no partition: {strays}")
        missing = sorted(set(expected) - set(documents))
        extra = sorted(set(documents) - set(expected))
        if missing:
            out.append(f"{len(missing)} documents missing, e.g. {_show(expected, missing)}")
        if extra:
            out.append(f"{len(extra)} documents too many, e.g. {_show(documents, extra)}")
        differing = []
        for doc_id in sorted(set(expected) & set(documents)):
            want, have = expected[doc_id], documents[doc_id]
            fields = [f for f in STABLE_FIELDS if want.get(f) != have.get(f)]
            if fields:
                differing.append(
                    f"{doc_id}: " + ", ".join(f"{f} {have.get(f)!r} != {want[f]!r}" for f in fields)
                )
        if differing:
            out.append(f"{len(differing)} documents differ: " + "; ".join(differing[:5]))
        out.extend(self._commit_problems(documents))
        for project in self.indexable():
            key, head = project.path_with_namespace, project.head()
            state = last_indexed(self.instance, key)
            if state is None:
                out.append(f"{key}: Dagster records no indexed commit; HEAD is {head}")
            elif state.commit_sha != head or state.project_id not in (None, project.id):
                out.append(
                    f"{key}: Dagster records {state.commit_sha} (project {state.project_id}); "
                    f"HEAD is {head} (project {project.id})"
                )
        return out

    def _commit_problems(self, documents: dict[str, dict[str, Any]]) -> list[str]:
        """Each document's commit holds its file with its blob (git says), and its link names
        that commit under the project's web URL."""
        by_project: dict[int, list[dict[str, Any]]] = {}
        for doc in documents.values():
            by_project.setdefault(doc["project_id"], []).append(doc)
        out = []
        for project_id, docs in by_project.items():
            project = self.project_by_id(project_id)
            repo = self.repos.get(project_id)
            if project is None or repo is None:
                continue  # reported as missing/extra above
            asked = sorted({f"{d['commit_sha']}:{d['file_path']}" for d in docs})
            answer = subprocess.run(
                ["git", "-C", str(repo), "cat-file", "--batch-check=%(objectname)"],
                input="\n".join(asked) + "\n",
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split("\n")
            blobs = dict(zip(asked, answer, strict=False))
            url = f"{self.gitlab.url}/{project.path_with_namespace}"
            bad = []
            for d in docs:
                if blobs.get(f"{d['commit_sha']}:{d['file_path']}") != d["blob_sha"]:
                    bad.append(
                        f"{d['file_path']}@{d['commit_sha'][:10]} is not blob {d['blob_sha'][:10]}"
                    )
                link = f"{url}/-/blob/{d['commit_sha']}/{quote(d['file_path'])}#L{d['line_number']}"
                if d.get("web_url") != link:
                    bad.append(f"link {d.get('web_url')} != {link}")
            if bad:
                out.append(
                    f"project {project_id}: {len(bad)} bad commits/links: {sorted(set(bad))[:3]}"
                )
        return out

    def close(self) -> None:
        self.clear_faults()
        try:
            self.instance.dispose()
        finally:
            self.gitlab.stop()
            self.es.stop()
            for name, value in self.saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            shutil.rmtree(self.root, ignore_errors=True)


def open_world(root: Path, postgres_url: str | None = None, projects: int = 3) -> World:
    """New stand-ins, repositories and a Dagster instance of the project's dagster.yaml (on
    PostgreSQL when a database URL is given), opened by run processes too (DAGSTER_HOME)."""
    root.mkdir(parents=True, exist_ok=True)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    names = ("DAGSTER_HOME", "DAGSTER_PG_URL", "DAGSTER_PG_HOST")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.pop("DAGSTER_PG_HOST", None)
    if postgres_url:
        os.environ["DAGSTER_PG_URL"] = postgres_url
    else:
        os.environ.pop("DAGSTER_PG_URL", None)
    gitlab = GitLabStandIn().start()
    gitlab.rate_limit = 10**9
    es = ElasticsearchStandIn(api_key="es-stand-in-key").start()
    instance = DagsterInstance.from_config(str(home))
    pipeline = Pipeline(gitlab, es, instance, root / "parquet")
    # Faults end runs within seconds: few client retries, quick backoff.
    pipeline.gitlab_options["max_retries"] = 3
    pipeline.es_options.update(bulk_initial_backoff_seconds=0.05, bulk_max_retries=2)
    world = World(root, gitlab, es, instance, pipeline, saved_env=saved)
    for i in range(projects):
        world.new_project(f"{NAMESPACES[i % 2]}/{NAMES[i]}")
    return world


def _files(path: str, n: int) -> dict[str, str]:
    tag = path.replace("/", "-")
    return {
        "README.md": f"# {path}\n\nA project.\n",
        "src/main.py": lines(4, f"{tag}-main"),
        "src/util.py": lines(3, f"{tag}-util"),
        "docs/guide.md": lines(2, f"{tag}-guide"),
    }


def _refused(request: Request) -> Response:
    return Response.connection_reset()


def _failure(result: ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_failure and event.message:
            return event.message[:500]
    return "(no failure event)"


def _show(documents: dict[str, dict[str, Any]], ids: list[str]) -> str:
    shown = []
    for doc_id in ids[:3]:
        d = documents[doc_id]
        shown.append(f"{d.get('repository_name')}:{d.get('file_path')}#L{d.get('line_number')}")
    return ", ".join(shown)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def activity_while_away(project: StandInProject, away_seconds: float, seed: int) -> None:
    """GitLab's record of a push made while the daemon was away, older than the sensor's
    activity window now (between `away_seconds` ago and 66 minutes ago)."""
    oldest, newest = away_seconds, 66 * 60
    ago = newest + (seed % 10) * (oldest - newest) / 10
    at = datetime.now(timezone.utc) - timedelta(seconds=ago)
    project.last_activity_at = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _main(spec: dict[str, Any]) -> None:
    """A run in a process of its own (run_killed): one partition, or a batch."""
    with DagsterInstance.get() as instance:
        pipeline = Pipeline(
            SimpleNamespace(**spec["gitlab"]),  # type: ignore[arg-type]
            SimpleNamespace(**spec["es"]),  # type: ignore[arg-type]
            instance,
            spec["storage"],
            gitlab_options=spec["gitlab_options"],
            es_options=spec["es_options"],
        )
        if spec.get("batch"):
            pipeline.index_batch(spec["batch"])
        else:
            pipeline.index(spec["partition"], raise_on_error=False)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
