"""Against a real search engine: an OpenSearch node built from Maven Central's jars.

What the stand-in imitates, Lucene does here: the mapping, the code analyzer, the wildcard
field, refreshes, delete by query, a crash. Expectations come from git (`git cat-file` via
the corpus helpers, `git grep`), never from the pipeline's code.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from gitlab_es_pipeline.cli.main import PAGE, main
from gitlab_es_pipeline.clients.engines import Connection, EngineError, detect_engine
from gitlab_es_pipeline.core.mapping import index_body
from gitlab_es_pipeline_tests.conftest import ROOT
from gitlab_es_pipeline_tests.opensearch_node import OpenSearchNode
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn
from gitlab_es_pipeline_tests.test_incremental import BINARY, Fleet, lines
from gitlab_es_pipeline_tests.test_pipeline import _assert_index_matches_git, _serve_corpus

# On the project's own dagster.yaml (SQLite), as a user runs it; the CLI finds it too.
pytestmark = pytest.mark.opensearch
ON_SQLITE = pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)


@pytest.fixture
def pipeline(
    gitlab_server: GitLabStandIn,
    opensearch: OpenSearchNode,
    project_instance: DagsterInstance,
    tmp_path: Path,
) -> Pipeline:
    return Pipeline(gitlab_server, opensearch, project_instance, tmp_path / "parquet")  # type: ignore[arg-type]


def test_the_engine_is_told_by_the_clusters_answer(
    opensearch: OpenSearchNode, es_server: object
) -> None:
    assert detect_engine(Connection(opensearch.url)) == "opensearch"
    stand_in = Connection(es_server.url, api_key=es_server.api_key)  # type: ignore[attr-defined]
    assert detect_engine(stand_in) == "elasticsearch"
    with pytest.raises(EngineError, match="ELASTICSEARCH_ENGINE=elasticsearch, but the cluster"):
        detect_engine(Connection(opensearch.url), "elasticsearch")
    with pytest.raises(EngineError, match="answers as elasticsearch 9"):
        detect_engine(stand_in, "opensearch")


@ON_SQLITE
def test_every_line_is_indexed_field_by_field_and_a_second_run_changes_nothing(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path, opensearch: OpenSearchNode
) -> None:
    ids = _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    pipeline.index_all()
    _assert_index_matches_git(pipeline, corpus_repos, ids)
    # The mapping as sent, on the concrete index behind the alias.
    aliases = opensearch.request("GET", f"_alias/{INDEX}")
    assert list(aliases) == [f"{INDEX}-v1"]
    mapping = opensearch.request("GET", f"{INDEX}/_mapping")[f"{INDEX}-v1"]["mappings"]
    assert mapping["dynamic"] == "strict"
    assert mapping["properties"]["line_content"]["fields"]["wildcard"]["type"] == "wildcard"

    before = opensearch.documents(INDEX)
    versions = _versions(opensearch)
    pipeline.index_all()
    assert opensearch.documents(INDEX) == before
    assert _versions(opensearch) == versions  # nothing was even rewritten
    check = AssetCheckKey(AssetKey("es_index"), "document_count_matches_manifest")
    latest = pipeline.instance.event_log_storage.get_latest_asset_check_execution_by_key([check])
    assert latest[check].status.value == "SUCCEEDED"


def _versions(node: OpenSearchNode) -> dict[str, int]:
    node.request("POST", f"{INDEX}/_refresh")
    hits = node.request("POST", f"{INDEX}/_search", {"size": 10000, "version": True})
    return {hit["_id"]: hit["_version"] for hit in hits["hits"]["hits"]}


@ON_SQLITE
def test_incremental_runs_apply_deletes_and_renames_and_removal_takes_everything(
    pipeline: Pipeline, tmp_path: Path, opensearch: OpenSearchNode
) -> None:
    fleet = Fleet(pipeline, tmp_path)
    pipeline.discover()
    assert sorted(fleet.sensor_round()) == ["team/app", "team/quiet"]
    fleet.assert_exact()
    fleet.push(
        {
            "new.py": lines(2, "n"),
            "a.py": lines(5, "A"),
            "b.txt": lines(6, "b"),  # lines 7-10 go
            "y.txt": lines(4, "x"),  # renamed from x.txt
            "toggle.dat": BINARY,  # text -> binary
            "sub/dir/moved.md": lines(3, "c"),  # c.md moved into a folder
        },
        delete=("c.md", "x.txt"),
    )
    assert fleet.sensor_round() == ["team/app"]
    fleet.assert_exact()
    assert pipeline.latest_metadata("file_manifest", "team/app")["mode"] == "incremental"

    # The asset check counts with the real engine: a document the manifest does not know
    # fails it on the next run.
    stray = {**next(iter(opensearch.documents(INDEX).values())), "file_path": "stray.py"}
    stray.update(project_id=fleet.app.id, repository_name="team/app")
    opensearch.request("PUT", f"{INDEX}/_doc/stray", stray, refresh="true")
    fleet.push({"a.py": lines(6, "a3")})
    fleet.sensor_round()
    evaluation = pipeline.latest_count_check()
    assert evaluation.passed is False
    assert (
        evaluation.metadata["documents_in_index"].value
        == evaluation.metadata["lines_in_manifest"].value + 1
    )

    # A project that leaves the fleet takes every document with it (delete by query).
    del pipeline.gitlab.projects[fleet.app.id]
    pipeline.discover()
    left = opensearch.documents(INDEX)
    assert left and {d["repository_name"] for d in left.values()} == {"team/quiet"}


@ON_SQLITE
@pytest.mark.faults
def test_a_node_killed_mid_write_and_restarted_ends_with_the_index_exact(
    gitlab_server: GitLabStandIn, project_instance: DagsterInstance, tmp_path: Path
) -> None:
    node = OpenSearchNode(tmp_path / "node").start()
    try:
        pipeline = Pipeline(gitlab_server, node, project_instance, tmp_path / "parquet")  # type: ignore[arg-type]
        pipeline.es_options = {"bulk_max_docs": 200, "bulk_max_retries": 1}
        pipeline.es_options["bulk_initial_backoff_seconds"] = 0.1
        repo = init_repo(tmp_path / "big")
        commit_files(repo, {f"src/f{i:03}.py": lines(200, f"file {i} line") for i in range(150)})
        project = gitlab_server.add_project("team/big", str(repo))
        pipeline.discover()
        # What a new index's settings are on this engine, before any load changes them.
        node.request("PUT", "scratch", index_body())
        created = _index_settings(node, "scratch")

        def kill_once_written() -> None:
            while True:
                try:
                    stats = node.request("GET", f"{INDEX}/_stats/indexing")
                    if stats["_all"]["primaries"]["indexing"]["index_total"] > 2000:
                        node.kill()
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.05)

        killer = threading.Thread(target=kill_once_written)
        killer.start()
        failed = pipeline.index("team/big", raise_on_error=False)
        killer.join()
        assert not failed.success
        node.start()  # the same data folder: what was written before the crash is there
        during = _index_settings(node)
        assert during["refresh_interval"] == "-1" and during["number_of_replicas"] == "0"

        pipeline.es_options = {"bulk_max_docs": 2000}
        pipeline.index("team/big")  # a full load again: the first one never ended
        assert _index_settings(node) == created  # the interrupted load's settings put back
        assert _index_settings(node)["refresh_interval"] is None
        documents = node.documents(INDEX)
        assert len(documents) == 150 * 200
        head = run_git(repo, "rev-parse", "HEAD").strip()
        for doc in documents.values():
            assert doc["commit_sha"] == head and doc["project_id"] == project.id
            number = int(doc["file_path"][5:8])
            assert doc["line_content"] == f"file {number} line {doc['line_number']}"
    finally:
        node.stop()


def _index_settings(node: OpenSearchNode, name: str = f"{INDEX}-v1") -> dict[str, str | None]:
    settings = node.request("GET", f"{name}/_settings")[name]["settings"]["index"]
    return {k: settings.get(k) for k in ("refresh_interval", "number_of_replicas")}


# -- search, compared with git grep ---------------------------------------------------------------


@pytest.fixture(scope="module")
def _stdlib_indexed(
    opensearch_node: OpenSearchNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Path], dict[str, str]]]:
    """Real source (a slice of Python's standard library) indexed once, on the project's own
    dagster.yaml (SQLite), for the read-only tests below. They follow one another, so no other
    test's clean-up of the node comes between them (each checks the documents are there)."""
    import email
    import http
    import json

    opensearch_node.delete_all_indices()
    root = tmp_path_factory.mktemp("stdlib")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    gitlab = GitLabStandIn().start()
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("DAGSTER_HOME", str(home))
        patched.delenv("DAGSTER_PG_URL", raising=False)
        patched.delenv("DAGSTER_PG_HOST", raising=False)
        instance = DagsterInstance.from_config(str(home))
        try:
            pipeline = Pipeline(gitlab, opensearch_node, instance, root / "parquet")  # type: ignore[arg-type]
            repos: dict[str, Path] = {}
            for package in (json, http, email):
                folder = Path(str(package.__file__)).parent
                files = {
                    p.relative_to(folder).as_posix(): p.read_bytes()
                    for p in sorted(folder.rglob("*.py"))
                    if "__pycache__" not in p.parts
                }
                key = f"stdlib/{package.__name__}"
                repos[key] = init_repo(root / package.__name__)
                commit_files(repos[key], files)
                gitlab.add_project(key, str(repos[key]))
            pipeline.discover()
            pipeline.index_all()
        finally:
            instance.dispose()
    env = {
        "DAGSTER_HOME": str(home),
        "GITLAB_URL": gitlab.url,
        "GITLAB_TOKEN": gitlab.token,
        "ELASTICSEARCH_URL": opensearch_node.url,
        "ELASTICSEARCH_INDEX": INDEX,
    }
    try:
        yield repos, env
    finally:
        gitlab.stop()


@pytest.fixture
def searchable(
    _stdlib_indexed: tuple[dict[str, Path], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Path]:
    """The indexed standard-library slice, the command line pointed at it."""
    repos, env = _stdlib_indexed
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("ELASTICSEARCH_API_KEY", "DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        monkeypatch.delenv(name, raising=False)
    counted = requests.get(f"{env['ELASTICSEARCH_URL']}/{INDEX}/_count", timeout=30)
    assert counted.ok and counted.json()["count"] > 0, "another test emptied the node"
    return repos


def _search(*argv: str) -> list[str]:
    out = io.StringIO()
    code = main(["search", "-n", "10000", *argv], out=out)
    assert code in (0, 1), out.getvalue()
    return [line for line in out.getvalue().splitlines() if not line.startswith("    ")]


def _git_grep(repos: dict[str, Path], *args: str, paths: tuple[str, ...] = ()) -> list[str]:
    """`repository:path:line: content` for every line git grep finds, in grep's order."""
    found = []
    for key, repo in sorted(repos.items()):
        done = subprocess.run(
            ["git", "-C", str(repo), "grep", "-n", "-I", "--no-color", *args, "HEAD", "--", *paths],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
        for row in done.stdout.splitlines():
            _, path, number, content = row.split(":", 3)
            found.append((key, path, int(number), content))
    return [f"{k}:{p}:{n}: {c}" for k, p, n, c in sorted(found)]


def _word_part(word: str) -> str:
    """A PCRE for `word` as one part of an identifier, as word_delimiter_graph splits them:
    at non-alphanumerics, lower-to-upper case changes and letter/digit changes (not at
    upper-to-lower: `HTTPHeader` is one part), or as a whole whitespace-separated token."""
    cased = f"(?:{word}|{word.capitalize()}|{word.upper()})"
    start = (
        r"(?:(?<![A-Za-z0-9])|(?<=[a-z])(?=[A-Z])|(?<=[0-9])(?=[A-Za-z])|(?<=[A-Za-z])(?=[0-9]))"
    )
    end = r"(?:(?![A-Za-z0-9])|(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z]))"
    return f"{start}{cased}{end}|(?<!\\S)(?i:{re.escape(word)})(?!\\S)"


def test_word_search_finds_identifier_parts_as_git_grep_does(searchable: dict[str, Path]) -> None:
    for word in ("decoder", "header", "parse", "loads"):
        expected = _git_grep(searchable, "-P", _word_part(word))
        assert len(expected) > 5, word  # the corpus has camelCase, snake_case and UPPER uses
        assert _search(word) == expected, word


def test_more_lines_than_one_page_or_the_result_window_are_paged_as_git_grep_orders_them(
    searchable: dict[str, Path],
) -> None:
    """Issue 28, point 4: `-n` above 10,000 (the engine's result window) was refused with
    "all shards failed". The lines come a page at a time (search_after), in grep's order."""
    expected = _git_grep(searchable, "-P", _word_part("self"))
    assert len(expected) > PAGE  # more than one page: search_after is what joins them
    out = io.StringIO()
    code = main(["search", "-n", "20000", "self"], out=out)
    assert code == 0, out.getvalue()
    found = [line for line in out.getvalue().splitlines() if not line.startswith("    ")]
    assert found == expected
    # Fewer asked for than there are: exactly the first ones, and the rest counted.
    capped = io.StringIO()
    assert main(["search", "-n", str(PAGE + 7), "--json", "self"], out=capped) == 0
    answer = json.loads(capped.getvalue())
    assert answer["total"] == len(expected)
    assert len(answer["matches"]) == PAGE + 7


def test_exact_substrings_match_as_git_grep_does(searchable: dict[str, Path]) -> None:
    # A needle ending with a backslash meets OpenSearch's wildcard-field pitfall (core.search).
    for needle in (
        "from .decoder import",
        "self._header",
        "(?",
        "*args",
        "MIME-Version",
        "\\",
        "'\\",
    ):
        expected = _git_grep(searchable, "-F", needle)
        assert expected, needle
        assert _search("-F", needle) == expected, needle
        assert _search("-F", "-i", needle.upper()) == _git_grep(searchable, "-F", "-i", needle)


def test_path_extension_and_language_filters_match_git_grep(searchable: dict[str, Path]) -> None:
    assert _search("-F", "import", "-p", "*/__init__.py") == _git_grep(
        searchable, "-F", "import", paths=("**/__init__.py",)
    )
    assert _search("-F", "import", "-r", "stdlib/email", "-p", "mime/*") == _git_grep(
        {"stdlib/email": searchable["stdlib/email"]}, "-F", "import", paths=("mime/*",)
    )
    python = _git_grep(searchable, "-F", "return", paths=("*.py",))
    assert _search("-F", "return", "-l", "python") == python
    assert _search("-F", "return", "-e", "py") == python
    assert _search("-F", "return", "-l", "go") == []


def test_status_counts_each_repositorys_documents_in_opensearch(
    searchable: dict[str, Path],
) -> None:
    out = io.StringIO()
    assert main(["status", "--json"], out=out) == 0
    rows = {row["repository"]: row for row in json.loads(out.getvalue())}
    for key, repo in searchable.items():
        head = run_git(repo, "rev-parse", "HEAD").strip()
        counted = run_git(repo, "grep", "-c", "-I", "", "HEAD").splitlines()
        lines_in_git = sum(int(row.rsplit(":", 1)[1]) for row in counted)
        assert rows[key]["state"] == "up to date" and rows[key]["indexed_commit"] == head
        assert rows[key]["documents"] == rows[key]["lines"] == lines_in_git


def test_without_the_opensearch_client_the_cli_says_what_to_install(
    searchable: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "opensearchpy", None)  # as if not installed
    assert main(["search", "decoder"], out=io.StringIO()) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "is OpenSearch and the opensearch-py client is not installed" in error
    # The environment's own pip, not a registry lookup of the project's name.
    assert f"{sys.executable} -m pip install 'opensearch-py>=2.8,<4'" in error


@ON_SQLITE
def test_without_the_opensearch_client_a_run_fails_before_reading_naming_the_repository(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterEventType

    repo = init_repo(tmp_path / "one")
    commit_files(repo, {"a.py": "a = 1\n"})
    pipeline.gitlab.add_project("team/one", str(repo))
    pipeline.discover()
    pipeline.gitlab.requests.clear()
    monkeypatch.setitem(sys.modules, "opensearchpy", None)  # as if not installed
    result = pipeline.index("team/one", raise_on_error=False)
    assert not result.success
    starts = [
        e.step_key
        for e in result.all_events
        if e.event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED)
    ]
    assert starts == ["manifest_and_line_documents"]  # permanent: not retried, nothing after
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "team/one: the cluster is OpenSearch and the opensearch-py client" in message
    assert "-m pip install 'opensearch-py" in message and "nothing read" in message
    assert pipeline.gitlab.requests == []  # GitLab was not asked for anything
    assert pipeline.partitions() == ["team/one"] and not pipeline.es.documents(INDEX)


@ON_SQLITE
def test_without_the_opensearch_client_a_batch_fails_before_reading_any_repository(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("team/one", "team/two"):
        repo = init_repo(tmp_path / name.replace("/", "_"))
        commit_files(repo, {"a.py": "a = 1\n"})
        pipeline.gitlab.add_project(name, str(repo))
    pipeline.discover()
    pipeline.gitlab.requests.clear()
    monkeypatch.setitem(sys.modules, "opensearchpy", None)  # as if not installed
    result = pipeline.index_batch(["team/one", "team/two"], raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "2 repositories: the cluster is OpenSearch and the opensearch-py client" in message
    assert pipeline.gitlab.requests == [] and not pipeline.es.documents(INDEX)
