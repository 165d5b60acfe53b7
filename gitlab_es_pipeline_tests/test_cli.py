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
    for name, value in {
        "GITLAB_URL": pipeline.gitlab.url,
        "GITLAB_TOKEN": pipeline.gitlab.token,
        "ELASTICSEARCH_URL": pipeline.es.url,
        "ELASTICSEARCH_API_KEY": pipeline.es.api_key or "",
        "ELASTICSEARCH_INDEX": INDEX,
    }.items():
        monkeypatch.setenv(name, value)
    return repos


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
    for name, value in {
        "GITLAB_URL": pipeline.gitlab.url,
        "GITLAB_TOKEN": pipeline.gitlab.token,
        "ELASTICSEARCH_URL": pipeline.es.url,
        "ELASTICSEARCH_API_KEY": pipeline.es.api_key or "",
        "ELASTICSEARCH_INDEX": INDEX,
    }.items():
        monkeypatch.setenv(name, value)
    code, output = run("status", "--json")
    assert code == 0, output
    (row,) = json.loads(output)
    assert row["state"] == "never indexed" and row["documents"] == 0
    assert row["head"] == run_git(repo, "rev-parse", "HEAD").strip()


@ON_SQLITE
def test_status_finds_the_readmes_instance_folder_without_dagster_home(
    fleet: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    code, _ = run("status")
    assert code == 2


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
