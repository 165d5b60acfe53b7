"""The command line: `search` against an index the pipeline filled, `status` against Dagster's
storage (SQLite and a real PostgreSQL) and the two stand-ins, exit statuses like grep's."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from gitlab_es_pipeline.cli.main import main
from gitlab_es_pipeline.webhooks.receiver import ReceiverSettings
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn
from gitlab_es_pipeline_tests.standins.http import Response
from gitlab_es_pipeline_tests.test_hooks import receiving

ON_SQLITE = pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
ON_BOTH = pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)

APP = {
    "src/server.go": 'package main\n\nfunc main() {\n\thttp.Get("x") // *star* and ?\n}\n',
    "src/util.py": "def parse_config(path):\n    return Config.load(path)  # http.Get(\n",
    "docs/README.md": "# App\nCall parse_config to read it.\n",
}
LIB = {"lib.py": "def parse_config():\n    pass\n"}


@pytest.fixture
def pipeline(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    project_instance: DagsterInstance,
    tmp_path: Path,
) -> Pipeline:
    return Pipeline(gitlab_server, es_server, project_instance, tmp_path / "parquet")


@pytest.fixture
def fleet(pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Two repositories indexed by the pipeline; the CLI's environment pointed at it all."""
    repos = {"team/app": init_repo(tmp_path / "app"), "team/lib": init_repo(tmp_path / "lib")}
    commit_files(repos["team/app"], APP)
    commit_files(repos["team/lib"], LIB)
    for key, repo in repos.items():
        pipeline.gitlab.add_project(key, str(repo))
    pipeline.discover()
    pipeline.index_all()
    point_the_cli_at(pipeline, monkeypatch)
    return repos


def point_the_cli_at(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the README's Configuration sets, naming the pipeline's stand-ins."""
    for name, value in {
        "GITLAB_URL": pipeline.gitlab.url,
        "GITLAB_TOKEN": pipeline.gitlab.token,
        "ELASTICSEARCH_URL": pipeline.es.url,
        "ELASTICSEARCH_API_KEY": pipeline.es.api_key or "",
        "ELASTICSEARCH_INDEX": INDEX,
    }.items():
        monkeypatch.setenv(name, value)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def found(*argv: str) -> str:
    """The output of a command that must find something."""
    code, output = run(*argv)
    assert code == 0, output
    return output


def _grep(repos: dict[str, Path], needle: str, ignore_case: bool = False) -> list[str]:
    """What grep over the repositories' files prints, as `repository:path:line: content`."""
    found = []
    for key, repo in sorted(repos.items()):
        for path in sorted(run_git(repo, "ls-files").split()):
            text = (repo / path).read_text()
            for number, line in enumerate(text.split("\n")[:-1], start=1):
                hit = needle.lower() in line.lower() if ignore_case else needle in line
                if hit:
                    found.append(f"{key}:{path}:{number}: {line}")
    return found


def _match_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith("    ")]


@ON_SQLITE
def test_exact_substring_search_prints_what_grep_would(fleet: dict[str, Path]) -> None:
    # Wildcard characters in the text are matched as typed.
    for needle in ("http.Get(", "*star* and ?", "parse_config"):
        assert _match_lines(found("search", "-F", needle)) == _grep(fleet, needle)
    output = found("search", "-F", "-i", "PARSE_CONFIG")
    assert _match_lines(output) == _grep(fleet, "parse_config", ignore_case=True)
    # Each match is followed by its link to the line in GitLab.
    head = run_git(fleet["team/app"], "rev-parse", "HEAD").strip()
    assert output.splitlines()[1].strip().endswith(f"/-/blob/{head}/docs/README.md#L2")


@ON_SQLITE
def test_filters_words_and_result_count(fleet: dict[str, Path]) -> None:
    output = found("search", "parse_config", "-r", "team/lib")
    assert _match_lines(output) == ["team/lib:lib.py:1: def parse_config():"]
    output = found("search", "-F", "http.Get(", "-l", "go")
    assert _match_lines(output) == [line for line in _grep(fleet, "http.Get(") if ".go:" in line]
    output = found("search", "-F", "parse_config", "-p", "src/*", "-e", "py")
    assert _match_lines(output) == ["team/app:src/util.py:1: def parse_config(path):"]
    output = found("search", "-F", "parse_config", "-r", "team/*", "-n", "1", "--json")
    document = json.loads(output)
    assert document["total"] == len(_grep(fleet, "parse_config")) and len(document["matches"]) == 1
    assert document["matches"][0]["repository_name"] == "team/app"


@ON_SQLITE
def test_nothing_found_is_status_1_and_trouble_is_status_2(
    fleet: dict[str, Path], pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("search", "-F", "no line has this") == (1, "")
    assert run("search", "-l", "cobol", "x")[0] == 2
    assert "unknown language 'cobol'" in capsys.readouterr().err
    pipeline.es.stop()
    assert run("search", "anything")[0] == 2
    assert f"cannot reach Elasticsearch at {pipeline.es.url}" in capsys.readouterr().err


@ON_BOTH
def test_status_reports_commits_heads_counts_and_failures(
    fleet: dict[str, Path], pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    indexed = {key: run_git(repo, "rev-parse", "HEAD").strip() for key, repo in fleet.items()}
    code, output = run("status", "--json")
    assert code == 0
    rows = {row["repository"]: row for row in json.loads(output)}
    for key, commit in indexed.items():
        assert rows[key]["state"] == "up to date"
        assert rows[key]["indexed_commit"] == rows[key]["head"] == commit
        # Documents in the index, counted by Elasticsearch, against the manifest's lines.
        expected = sum(len(t.split("\n")) - 1 for t in (APP if key == "team/app" else LIB).values())
        assert rows[key]["documents"] == rows[key]["lines"] == expected
        assert rows[key]["last_failure"] is None

    # A push: behind. A run that fails for good: failing, with its message.
    pushed = commit_files(fleet["team/app"], {"new.txt": "one\n"})
    pipeline.gitlab.faults.append(
        lambda request, path: (
            Response(403, {"message": "403 Forbidden"}) if "/repository/" in path else None
        )
    )
    commit_files(fleet["team/lib"], {"more.py": "x = 1\n"})
    pipeline.index("team/lib", raise_on_error=False)
    pipeline.gitlab.faults.clear()
    rows = {row["repository"]: row for row in json.loads(run("status", "--json")[1])}
    assert rows["team/app"]["state"] == "behind" and rows["team/app"]["head"] == pushed
    assert rows["team/app"]["indexed_commit"] == indexed["team/app"]
    assert rows["team/lib"]["state"] == "failing"
    assert "HTTP 403" in rows["team/lib"]["last_failure"]["message"]

    # The table, for people; a pattern selects repositories; --no-heads spares GitLab.
    code, output = run("status", "team/a*")
    header, row = output.splitlines()
    assert header.split()[:3] == ["repository", "state", "indexed"]
    assert row.startswith("team/app") and "behind" in row and pushed[:12] in row
    seen = len(pipeline.gitlab.requests)
    code, output = run("status", "--no-heads", "--json")
    assert {r["state"] for r in json.loads(output)} == {"indexed", "failing"}
    assert len(pipeline.gitlab.requests) == seen
    assert run("status", "nothing/*") == (1, "")
    assert run("status", "--json", "nothing/*") == (1, "[]\n")

    pipeline.gitlab.stop()
    assert run("status")[0] == 2
    assert f"cannot reach GitLab at {pipeline.gitlab.url}" in capsys.readouterr().err


@ON_SQLITE
def test_status_before_the_first_write_shows_never_indexed_not_an_error(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28, point 3: until a run first wrote, the index does not exist and `status`
    failed (`no such index`, exit 2) exactly when a newcomer looks."""
    repo = init_repo(tmp_path / "app")
    commit_files(repo, APP)
    pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()
    assert INDEX not in str(pipeline.es.indices)  # nothing written: no index yet
    point_the_cli_at(pipeline, monkeypatch)
    code, output = run("status", "--json")
    assert code == 0, output
    (row,) = json.loads(output)
    assert row["state"] == "never indexed" and row["documents"] == 0
    assert row["head"] == run_git(repo, "rev-parse", "HEAD").strip()


@ON_SQLITE
def test_status_finds_the_readmes_instance_folder_without_dagster_home(
    fleet: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A new shell in the project folder: DAGSTER_HOME is not exported, the README's first
    # command left the instance in ./.dagster_home.
    project = tmp_path / "project"
    project.mkdir()
    (project / ".dagster_home").symlink_to(os.environ["DAGSTER_HOME"])
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.chdir(project)
    code, output = run("status", "--json", "--no-heads")
    assert code == 0, output
    heads = {key: run_git(repo, "rev-parse", "HEAD").strip() for key, repo in fleet.items()}
    assert {r["repository"]: r["indexed_commit"] for r in json.loads(output)} == heads
    # Elsewhere, without it: the one-line error says what is missing.
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code, _ = run("status")
    assert code == 2
    assert capsys.readouterr().err == (
        f"gitlab-es-pipeline status: no Dagster instance here: DAGSTER_HOME is not set and "
        f"{tmp_path} has no .dagster_home (run it from the project folder, where `dev` made "
        "one, or export DAGSTER_HOME)\n"
    )


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "gitlab-es-pipeline"
    result = subprocess.run([str(script), "search", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--fixed-strings" in result.stdout


@ON_SQLITE
def test_search_can_keep_to_projects_of_some_visibilities(
    pipeline: Pipeline, fleet: dict[str, Path]
) -> None:
    """team/app made public and indexed again (a change of visibility rewrites its
    documents); team/lib stays private."""
    app = pipeline.gitlab._find_project("team/app")
    assert app is not None
    app.visibility = "public"
    pipeline.index("team/app")
    everyone = found("search", "parse_config")
    assert "team/lib:" in everyone and "team/app:" in everyone
    public = found("search", "parse_config", "--visibility", "public,internal")
    assert "team/app:" in public and "team/lib:" not in public
    code, _ = run("search", "parse_config", "--visibility", "private")
    assert code == 0
    assert run("search", "parse_config", "--visibility", "secret")[0] == 2


@ON_SQLITE
def test_hooks_install_registers_each_owner_once_with_the_secret(
    fleet: dict[str, Path], pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "https://hooks.example/hooks"
    code, _ = run("hooks", "install", "--url", url, "--system")
    assert code == 2  # no GITLAB_HOOK_SECRET: refused before any request
    assert not pipeline.gitlab.hooks.hooks
    monkeypatch.setenv("GITLAB_HOOK_SECRET", "s3cret")
    for _ in range(2):  # a second install updates, never doubles
        found("hooks", "install", "--url", url, "--system", "--project", "team/app")
    hooks = pipeline.gitlab.hooks.hooks
    project = pipeline.gitlab.project("team/app")
    assert sorted(h.scope for h in hooks) == sorted(["system", f"project:{project.id}"])
    assert all(h.url == url and h.token == "s3cret" and h.push_events for h in hooks)
    assert all(h.repository_update_events for h in hooks)


@ON_SQLITE
def test_status_shows_when_each_hook_last_delivered(
    fleet: dict[str, Path], pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "hooks: none heard from" in found("status", "--no-heads")
    monkeypatch.setenv("GITLAB_HOOK_SECRET", "s3cret")
    before = time.time()
    with receiving(pipeline.instance, ReceiverSettings(secret="s3cret")) as (url, _):
        found("hooks", "install", "--url", url, "--system", "--project", "team/app")
        project = pipeline.gitlab.project("team/app")
        head = run_git(fleet["team/app"], "rev-parse", "HEAD").strip()
        assert pipeline.gitlab.push_hook(project, head, "f" * 40) == [202, 202, 202]
    hooks = {h.scope: h.id for h in pipeline.gitlab.hooks.hooks}
    output = found("status", "--no-heads")
    lines = {
        next(w for w in line.split() if w.startswith("hook-")): line
        for line in output.splitlines()
        if "UTC" in line
    }
    system, webhook = f"hook-{hooks['system']}", f"hook-{hooks[f'project:{project.id}']}"
    assert lines[system].startswith(f"System Hook {system}")
    assert lines[webhook].startswith(f"Push Hook {webhook}")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(before))
    assert all(stamp in line or "s ago" in line for line in lines.values())


# -- dev's look at the services before it starts ------------------------------------------------


def _dev_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str], list[list[str]]]:
    """`dev` with `dagster dev` not started: its exit status, its lines, and what it would
    have started (the command it would replace itself with)."""
    from gitlab_es_pipeline.cli import dev as launcher

    started: list[list[str]] = []
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOOK_RECEIVER_PORT", "0")
    monkeypatch.setattr(launcher.os, "execve", lambda path, argv, env: started.append(argv))
    monkeypatch.setattr(launcher.os, "chdir", lambda path: None)
    code = main(["dev"], out=io.StringIO())
    return code, capsys.readouterr().err.strip().splitlines(), started


@ON_SQLITE
def test_dev_says_what_it_found_at_gitlab_and_the_cluster_and_starts(
    pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = init_repo(tmp_path / "app")
    commit_files(repo, APP)
    pipeline.gitlab.add_project("team/app", str(repo))
    point_the_cli_at(pipeline, monkeypatch)
    code, lines, started = _dev_said(tmp_path, monkeypatch, capsys)
    assert code == 0 and len(started) == 1 and started[0][1:3] == ["dev", "-m"]
    assert lines[:2] == [
        f"gitlab-es-pipeline dev: GitLab at {pipeline.gitlab.url}: ok (token accepted)",
        f"gitlab-es-pipeline dev: Elasticsearch {_root_version(pipeline)} at {pipeline.es.url}: ok "
        f"(elasticsearch {_version('elasticsearch')})",
    ]
    assert pipeline.gitlab.token not in "".join(lines)


def _root_version(pipeline: Pipeline) -> str:
    """The version the cluster's root answer gives."""
    import requests

    headers = {"Authorization": f"ApiKey {pipeline.es.api_key}"} if pipeline.es.api_key else {}
    return str(
        requests.get(pipeline.es.url, headers=headers, timeout=10).json()["version"]["number"]
    )


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


@ON_SQLITE
def test_dev_does_not_start_on_a_refused_token_and_says_so_in_one_line(
    pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_the_cli_at(pipeline, monkeypatch)
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-revoked")
    code, lines, started = _dev_said(tmp_path, monkeypatch, capsys)
    assert code == 2 and started == [] and not (tmp_path / "home").exists()
    gitlab, cluster, verdict = lines
    assert gitlab == (
        f"gitlab-es-pipeline dev: GitLab at {pipeline.gitlab.url}: GitLab refused the project "
        "list: HTTP 401 - the token is missing, expired or revoked: check GITLAB_TOKEN"
    )
    assert ": ok (" in cluster and "--skip-checks" in verdict
    assert "glpat-revoked" not in "".join(lines)
    # And a setting not given at all: named, for each service that needs it.
    monkeypatch.delenv("ELASTICSEARCH_URL")
    code, lines, started = _dev_said(tmp_path, monkeypatch, capsys)
    assert code == 2 and started == []
    assert lines[1] == (
        "gitlab-es-pipeline dev: cluster: ELASTICSEARCH_URL not set (see the README's "
        "Configuration)"
    )


@ON_SQLITE
def test_dev_names_a_group_of_gitlab_groups_that_gitlab_does_not_know(
    pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = init_repo(tmp_path / "app")
    commit_files(repo, APP)
    pipeline.gitlab.add_project("team/app", str(repo))
    point_the_cli_at(pipeline, monkeypatch)
    monkeypatch.setenv("GITLAB_GROUPS", "team, nosuch")
    code, lines, started = _dev_said(tmp_path, monkeypatch, capsys)
    assert code == 2 and started == []
    assert lines[0] == (
        f"gitlab-es-pipeline dev: GitLab at {pipeline.gitlab.url} (group nosuch): GitLab "
        "refused the project list: HTTP 404 - not found (deleted, moved, or not visible to "
        "the token)"
    )
    asked = [r.path for r in pipeline.gitlab.requests if "/groups/" in r.path]
    assert [p.split("/")[2] for p in asked] == ["team", "nosuch"]  # each group, once
    monkeypatch.setenv("GITLAB_GROUPS", "team")
    code, lines, started = _dev_said(tmp_path, monkeypatch, capsys)
    assert code == 0 and lines[0].endswith(": ok (token accepted)")


@ON_SQLITE
def test_dev_starts_while_a_service_does_not_answer_and_says_which(
    pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A service that is down may come back by itself: the runs retry; dev starts."""
    from gitlab_es_pipeline_tests.processes import free_port

    point_the_cli_at(pipeline, monkeypatch)
    closed = free_port()
    monkeypatch.setenv("ELASTICSEARCH_URL", f"http://127.0.0.1:{closed}")
    code, lines, started = _dev_said(tmp_path, monkeypatch, capsys)
    assert code == 0 and len(started) == 1
    assert lines[1] == (
        f"gitlab-es-pipeline dev: cluster at http://127.0.0.1:{closed}: cannot reach it: "
        "[Errno 111] Connection refused (starting anyway: runs retry until it answers)"
    )


def test_dev_help_is_its_own_and_prepares_nothing(tmp_path: Path) -> None:
    """`dev --help` said `dagster dev`'s options and made ./.dagster_home (issue 28, 7)."""
    env = {**os.environ, "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    script = Path(sys.executable).parent / "gitlab-es-pipeline"
    done = subprocess.run(
        [str(script), "dev", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gitlab-es-pipeline dev")
    assert "--skip-checks" in done.stdout and "--dagster-help" in done.stdout
    assert list(tmp_path.iterdir()) == []  # no .dagster_home
    done = subprocess.run(
        [str(script), "dev", "--dagster-help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "--port" in done.stdout and "Usage: dagster dev" in done.stdout
    assert list(tmp_path.iterdir()) == []


# -- status: a run waiting to retry, and a failure mended since ----------------------------------


@ON_SQLITE
def test_status_shows_a_run_waiting_to_retry_and_a_mended_failure_as_history(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28, point 3: during an outage a repository read "up to date" or "failing" while
    Dagster was about to retry its step; after recovery its old failure stood beside "up to
    date" as if it were the state."""
    from gitlab_es_pipeline_tests.run_partition import spec_of

    repo = init_repo(tmp_path / "app")
    commit_files(repo, APP)
    pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()
    point_the_cli_at(pipeline, monkeypatch)
    pipeline.es.faults.append(lambda request: Response.connection_reset())  # the cluster down
    # A run in a process of its own, whose step retry waits 10 s (the tests' policy: 0.1 s).
    env = {**os.environ, "INDEX_STEP_RETRY_DELAY_SECONDS": "10"}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitlab_es_pipeline_tests.run_partition",
            spec_of(pipeline, "team/app"),
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            code, output = run("status", "--json", "--no-heads")
            (row,) = json.loads(output)
            if row["state"] == "waiting to retry" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert row["state"] == "waiting to retry", row
        # The cluster down: what Dagster knows is shown, the count is not; exit status 2.
        assert code == 2 and row["documents"] is None
        waiting = row["active_run"]
        assert waiting["reason"].startswith(
            f"team/app: cannot reach the cluster at {pipeline.es.url}: "
        ), waiting
        retry_at = time.mktime(time.strptime(waiting["retry_at"], "%Y-%m-%dT%H:%M:%SZ"))
        assert 0 < retry_at - (time.time() + time.timezone) <= 11  # Dagster's wait, from now
        code, table = run("status", "--no-heads")
        assert f"{waiting['reason']} (retry at {waiting['retry_at']})" in table, table
        pipeline.es.faults.clear()  # the cluster back before the retry
        assert child.wait(90) == 0
    finally:
        child.kill()
    code, output = run("status", "--json")
    (row,) = json.loads(output)
    assert (
        row["state"] == "up to date" and row["active_run"] is None and row["last_failure"] is None
    )

    # A run that fails for good, then one that indexes: the failure is history.
    commit_files(repo, {"new.py": "x = 1\n"})
    pipeline.es.faults.append(lambda request: Response.connection_reset())
    assert not pipeline.index("team/app", raise_on_error=False).success
    (row,) = json.loads(run("status", "--json")[1])
    assert row["state"] == "failing" and row["last_failure"]["mended"] is False
    assert "cannot reach the cluster at" in row["last_failure"]["message"]
    pipeline.es.faults.clear()
    assert pipeline.index("team/app").success
    (row,) = json.loads(run("status", "--json")[1])
    assert row["state"] == "up to date" and row["last_failure"]["mended"] is True
    at = row["last_failure"]["at"]
    assert run("status")[1].splitlines()[1].endswith(f"(failed {at}, indexed since)")


def test_a_failure_is_said_by_its_own_words_not_dagsters_wrappers() -> None:
    """status shows the step's own failure: a Failure's description; another exception with
    its class; Dagster's retry and max-retries wrappers give way to their cause."""
    from types import SimpleNamespace

    from gitlab_es_pipeline.cli.status import _failure_said

    def error(cls: str, message: str, cause: object = None) -> SimpleNamespace:
        return SimpleNamespace(cls_name=cls, message=message, cause=cause, context=None)

    failure = error("Failure", "dagster._core.definitions.events.Failure: team/a: gone\n")
    other = error("KeyError", "KeyError: 'boom'\n")
    assert _failure_said(failure) == "team/a: gone"
    assert _failure_said(other) == "KeyError: 'boom'"
    wrapped = error("RetryRequestedFromPolicy", "...RetryRequestedFromPolicy\n", failure)
    assert _failure_said(wrapped) == "team/a: gone"
    spent = error("DagsterMaxRetriesExceededError", "Exceeded max_retries of 3\n", other)
    assert _failure_said(spent) == "KeyError: 'boom'"
