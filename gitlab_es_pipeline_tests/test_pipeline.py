"""End to end through Dagster: discovery, then every partition, against both stand-ins."""

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey

from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline_tests.corpus import expected_documents
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.http import Request, Response, StandInServer

BRANCHES = {"other/lib": "develop"}


def _serve_corpus(pipeline: Pipeline, corpus: dict[str, Path], tmp_path: Path) -> dict[str, int]:
    ids = {}
    for path, repo in corpus.items():
        project = pipeline.gitlab.add_project(
            path, str(repo), default_branch_name=BRANCHES.get(path, "main")
        )
        ids[path] = project.id
    archived = init_repo(tmp_path / "archived")
    commit_files(archived, {"old.txt": "old\n"})
    pipeline.gitlab.add_project("acme/archived", str(archived), archived=True)
    pipeline.gitlab.add_project("acme/empty", str(init_repo(tmp_path / "empty")))
    return ids


def _assert_index_matches_git(
    pipeline: Pipeline, corpus: dict[str, Path], ids: dict[str, int]
) -> None:
    documents = pipeline.es.documents(INDEX)
    expected_all: dict[str, dict] = {}
    for path, repo in corpus.items():
        expected = expected_documents(
            repo, ids[path], path, BRANCHES.get(path, "main"), f"{pipeline.gitlab.url}/{path}"
        )
        assert expected.documents, path
        expected_all.update(expected.documents)
    assert set(documents) == set(expected_all)
    for doc_id, doc in expected_all.items():
        assert documents[doc_id] == doc, doc_id


def test_every_line_of_every_repository_is_indexed_field_by_field(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    ids = _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    # Archived and empty projects are left out; the others become partitions.
    assert pipeline.partitions() == sorted(corpus_repos)
    discovery = pipeline.instance.get_latest_materialization_event(AssetKey("repositories"))
    meta = {k: v.value for k, v in discovery.asset_materialization.metadata.items()}
    assert meta["partitions_added"] == 4 and meta["partitions_removed"] == 0
    assert meta["projects_left_out"] == 1  # the empty one; the archived one is filtered by GitLab

    pipeline.index_all()
    _assert_index_matches_git(pipeline, corpus_repos, ids)

    # The manifest knows every path and why it was skipped.
    edge = corpus_repos["acme/backend"]
    expected = expected_documents(edge, ids["acme/backend"], "acme/backend", "main", "")
    manifest = pq.read_table(pipeline.storage / "file_manifest" / "acme" / "backend.parquet")
    reasons = dict(
        zip(
            manifest.column("path").to_pylist(),
            manifest.column("skip_reason").to_pylist(),
            strict=True,
        )
    )
    assert {p: r for p, r in reasons.items() if r} == expected.skipped
    assert expected.skipped == {
        "binary.bin": "binary",
        "image.png": "binary",
        "big.txt": "too_large",
        "link_to_main": "symlink",
        "vendor/dep": "submodule",
        "node_modules/pkg/index.js": "excluded",
        "dist/app.min.js": "excluded",
    }
    tree = run_git(edge, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    # On file_manifest, and on es_index too: the index's page explains its own file count.
    for asset in ("file_manifest", "es_index"):
        meta = pipeline.latest_metadata(asset, "acme/backend")
        assert meta["skipped_binary"] == 2 and meta["skipped_too_large"] == 1, asset
        assert (
            meta["skipped_symlink"] == 1
            and meta["skipped_submodule"] == 1
            and meta["skipped_excluded"] == 2
        ), asset
        assert meta["tree_entries"] == len(tree), asset
        assert meta["tree_entries_skipped"] == len(expected.skipped), asset
        assert meta["files_indexed"] == len(tree) - len(expected.skipped), asset
    meta = pipeline.latest_metadata("file_manifest", "acme/backend")
    assert meta["lines"] == len(expected.documents)
    assert meta["commit_sha"] == expected.documents[next(iter(expected.documents))]["commit_sha"]
    es_meta = pipeline.latest_metadata("es_index", "acme/backend")
    assert es_meta["lines"] == es_meta["documents_written"] == len(expected.documents)
    assert es_meta["project"] == f"{pipeline.gitlab.url}/acme/backend"

    assert es_meta["outcome"].startswith(f"indexed {meta['commit_sha'][:12]} (from nothing): ")

    # A second run changes nothing and duplicates nothing, and says so in words.
    before = pipeline.es.documents(INDEX)
    pipeline.index_all()
    assert pipeline.es.documents(INDEX) == before
    again = pipeline.latest_metadata("es_index", "acme/backend")
    assert again["documents_written"] == again["documents_deleted"] == 0
    assert again["outcome"] == (
        f"up to date at {meta['commit_sha'][:12]}: this commit was indexed already"
    )
    _assert_index_matches_git(pipeline, corpus_repos, ids)


def test_full_load_uses_the_archive_not_one_request_per_file(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    pipeline.gitlab.requests.clear()
    pipeline.index("acme/backend")
    kinds = [
        r.path.rsplit("/", 1)[-1] if "/repository/" in r.path else r.path
        for r in pipeline.gitlab.requests
    ]
    assert len(pipeline.gitlab.requests_of_kind("archive")) == 1
    assert len(pipeline.gitlab.requests_of_kind("raw_blob")) == 0
    assert len(pipeline.gitlab.requests_of_kind("file")) == 0
    assert len(pipeline.gitlab.requests) == 4, kinds  # project, branch, one tree page, archive


def test_files_the_archive_leaves_out_are_fetched_alone(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "exportignore")
    commit_files(
        repo,
        {
            ".gitattributes": "secret.txt export-ignore\n",
            "secret.txt": "still indexed\n",
            "a.txt": "a\n",
        },
    )
    project = pipeline.gitlab.add_project("g/exportignore", str(repo))
    pipeline.discover()
    pipeline.index("g/exportignore")
    expected = expected_documents(
        repo, project.id, "g/exportignore", "main", f"{pipeline.gitlab.url}/g/exportignore"
    )
    assert pipeline.es.documents(INDEX) == expected.documents
    assert len(pipeline.gitlab.requests_of_kind("raw_blob")) == 1
    assert pipeline.latest_metadata("line_documents", "g/exportignore")["files_fetched_alone"] == 1


def test_groups_scope_discovery_and_vanished_projects_lose_their_partition(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.groups = "acme"
    pipeline.discover()
    assert pipeline.partitions() == ["acme/backend", "acme/tools/cli"]
    pipeline.groups = "acme/tools, other"
    pipeline.discover()
    assert pipeline.partitions() == ["acme/tools/cli", "other/lib"]
    meta = {
        k: v.value
        for k, v in pipeline.instance.get_latest_materialization_event(
            AssetKey("repositories")
        ).asset_materialization.metadata.items()
    }
    assert (meta["partitions_added"], meta["partitions_removed"]) == (1, 1)
    assert (
        sorted(pipeline.instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
        == pipeline.partitions()
    )


def test_keyset_pagination_walks_every_page(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "many")
    commit_files(repo, {"x.txt": "x\n"})
    for i in range(230):
        pipeline.gitlab.add_project(f"fleet/p{i:03d}", str(repo))
    pipeline.discover()
    assert len(pipeline.partitions()) == 230
    lists = pipeline.gitlab.requests_of_kind("projects_list")
    assert len(lists) == 3
    assert all(r.query.get("pagination") == "keyset" for r in lists)


@pytest.mark.faults
def test_rejected_documents_fail_the_run_naming_repository_file_and_line(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()

    def reject_line_two_of_cli(kind: str, meta: dict, source: dict | None) -> dict | None:
        if source and source["file_path"] == "cli.rs" and source["line_number"] == 2:
            return {
                "_index": "x",
                "_id": meta["_id"],
                "status": 400,
                "error": {"type": "document_parsing_exception", "reason": "boom"},
            }
        return None

    pipeline.es.item_faults.append(reject_line_two_of_cli)
    result = pipeline.index("acme/tools/cli", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "acme/tools/cli" in failure.message and "cli.rs:2" in failure.message
    assert "document_parsing_exception" in failure.message
    # Not marked indexed: no es_index materialization for the partition.
    assert pipeline.instance.get_latest_materialization_event(AssetKey("es_index")) is None


@pytest.mark.faults
def test_rejections_for_overload_are_retried_until_accepted(
    pipeline: Pipeline,
    corpus_repos: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    monkeypatch.setattr("gitlab_es_pipeline.clients.elasticsearch.time.sleep", lambda s: None)
    rejected: dict[str, int] = {}

    def busy_twice(kind: str, meta: dict, source: dict | None) -> dict | None:
        """The first 20 documents seen are rejected as overload twice each, then accepted."""
        doc_id = meta["_id"]
        if (doc_id not in rejected and len(rejected) >= 20) or rejected.get(doc_id, 0) >= 2:
            return None
        rejected[doc_id] = rejected.get(doc_id, 0) + 1
        return {
            "_index": "x",
            "_id": meta["_id"],
            "status": 429,
            "error": {"type": "es_rejected_execution_exception", "reason": "queue full"},
        }
        return None

    pipeline.es.item_faults.append(busy_twice)
    pipeline.index("acme/backend")
    assert len(rejected) == 20 and set(rejected.values()) == {2}
    meta = pipeline.latest_metadata("es_index", "acme/backend")
    assert meta["items_retried"] == 40
    expected = expected_documents(
        corpus_repos["acme/backend"],
        ids["acme/backend"],
        "acme/backend",
        "main",
        f"{pipeline.gitlab.url}/acme/backend",
    )
    assert pipeline.es.documents(INDEX) == expected.documents


def test_the_index_is_created_with_the_mapping_behind_an_alias(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    pipeline.index("other/lib")
    client = pipeline.resources()["elasticsearch"].client()
    aliases = client.indices.get_alias(name=INDEX).body
    assert list(aliases) == [f"{INDEX}-v1"]
    mapping = client.indices.get_mapping(index=INDEX).body[f"{INDEX}-v1"]["mappings"]
    assert mapping["dynamic"] == "strict"
    assert mapping["properties"]["line_content"]["fields"]["wildcard"]["type"] == "wildcard"
    client.indices.refresh(index=INDEX)
    hits = client.search(index=INDEX, query={"match": {"line_content": "version"}}, size=5)["hits"][
        "hits"
    ]
    assert [h["_source"]["line_content"] for h in hits] == ["  VERSION = '1.0'"]


def test_the_readme_example_queries_find_what_they_say(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    pipeline.index_all()
    client = pipeline.resources()["elasticsearch"].client()
    client.indices.refresh(index=INDEX)

    def lines(query: dict, **kw: Any) -> list[tuple[str, str, int]]:
        hits = client.search(index=INDEX, query=query, size=100, **kw)["hits"]["hits"]
        return [
            (
                h["_source"]["repository_name"],
                h["_source"]["file_path"],
                h["_source"]["line_number"],
            )
            for h in hits
        ]

    # An identifier part: camelCase is split.
    assert lines({"match": {"line_content": "response"}}) == [("acme/backend", "web/app.ts", 1)]
    # Exact substring in one repository.
    assert lines(
        {
            "bool": {
                "filter": [{"term": {"repository_name": "acme/backend"}}],
                "must": [{"wildcard": {"line_content.wildcard": {"value": "*print('hello*"}}}],
            }
        }
    ) == [("acme/backend", "src/main.py", 5)]
    # Under a folder, in Go files.
    found = lines(
        {
            "bool": {
                "filter": [
                    {"term": {"file_path.tree": "src/lib"}},
                    {"wildcard": {"file_path": "*.go"}},
                ],
                "must": [{"match": {"line_content": "func"}}],
            }
        },
        sort=["repository_name", "file_path", "line_number"],
    )
    assert found == [("acme/backend", "src/lib/util.go", 4)]


@pytest.mark.parametrize("fail", [False, True])
def test_a_new_index_is_loaded_without_refreshes_or_replicas_then_restored(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path, fail: bool
) -> None:
    _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    seen: list[dict] = []

    def watch(kind: str, meta: dict, source: dict | None) -> dict | None:
        index = pipeline.es.indices[f"{INDEX}-v1"]
        seen.append(dict(index.settings["index"]))
        if fail and source and source["line_number"] == 1:
            return {"_id": meta["_id"], "status": 400, "error": {"type": "x", "reason": "no"}}
        return None

    pipeline.es.item_faults.append(watch)
    result = pipeline.index("acme/tools/cli", raise_on_error=False)
    assert result.success is not fail
    assert seen and all(s.get("refresh_interval") == "-1" for s in seen)
    assert all(str(s.get("number_of_replicas")) == "0" for s in seen)
    after = pipeline.es.indices[f"{INDEX}-v1"].shown_settings()["index"]
    # As a new index has them: refresh_interval unset (1 s), one replica.
    assert "refresh_interval" not in after and after["number_of_replicas"] == "1"
    # The next run writes into an existing index: settings are left alone.
    seen.clear()
    pipeline.es.item_faults.clear()
    pipeline.es.item_faults.append(
        lambda kind, meta, source: seen.append(
            dict(pipeline.es.indices[f"{INDEX}-v1"].settings["index"])
        )
    )
    pipeline.index("other/lib")
    assert seen and not any("refresh_interval" in s for s in seen)


def test_a_full_refresh_of_a_never_indexed_repository_sweeps_leftovers(
    pipeline: Pipeline, corpus_repos: dict[str, Path], tmp_path: Path
) -> None:
    """A first run that died after writing leaves documents but no materialization."""
    ids = _serve_corpus(pipeline, corpus_repos, tmp_path)
    pipeline.discover()
    client = pipeline.resources()["elasticsearch"].client()
    pipeline.resources()["elasticsearch"].line_index().ensure()
    leftover = {
        "project_id": ids["other/lib"],
        "repository_name": "other/lib",
        "branch": "develop",
        "commit_sha": "0" * 40,
        "file_path": "gone.rb",
        "blob_sha": "1" * 40,
        "line_number": 1,
        "line_content": "x",
        "line_truncated": False,
        "web_url": "u",
    }
    client.index(index=INDEX, id="leftover", document=leftover)
    pipeline.index("other/lib", full_refresh=True)
    expected = expected_documents(
        corpus_repos["other/lib"],
        ids["other/lib"],
        "other/lib",
        "develop",
        f"{pipeline.gitlab.url}/other/lib",
    )
    assert pipeline.es.documents(INDEX) == expected.documents


def _git_archive(repo: Path) -> bytes:
    """The repository's archive at HEAD, as GitLab would send it (one top-level folder)."""
    return subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar.gz", "--prefix=repo-x/", "HEAD"],
        check=True,
        capture_output=True,
    ).stdout


def _connection_cut_after(data: bytes) -> Response:
    """A 200 answer whose chunked body stops after `data`: the connection is dropped."""

    def body() -> Iterator[bytes]:
        yield data
        raise StandInServer.BrokenStream()

    return Response(200, stream=body(), content_type="application/octet-stream")


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["truncated", "connection_cut"])
def test_a_broken_archive_fails_the_run_naming_the_repository_and_writes_nothing(
    pipeline: Pipeline, tmp_path: Path, fault: str
) -> None:
    """Half an archive (short body, or the connection cut mid-stream) never reaches the index."""
    rng = random.Random(4)
    repo = init_repo(tmp_path / "broken")
    commit_files(
        repo,
        {
            f"src/m{i}.py": "".join(f"value_{rng.getrandbits(64):x} = {n}\n" for n in range(300))
            for i in range(30)
        },
    )
    pipeline.gitlab.add_project("g/broken", str(repo))
    pipeline.discover()
    archive = _git_archive(repo)
    half = archive[: len(archive) // 2]

    def broken_archive(request: Request, path: str) -> Response | None:
        if "/repository/archive" not in path:
            return None
        if fault == "truncated":
            return Response(200, half, content_type="application/octet-stream")
        return _connection_cut_after(half)

    pipeline.gitlab.faults.append(broken_archive)
    result = pipeline.index("g/broken", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    messages = []
    while failure is not None:  # "Exceeded max_retries of 1", caused by our failure
        messages.append(failure.message)
        failure = failure.cause or failure.context
    assert any("g/broken: archive stream is cut off inside 'src/m" in m for m in messages)
    # Asked for again (archive_attempts = 3), each time broken the same way: the step fails,
    # Dagster tries it once more (the tests' RetryPolicy; may be a network fault), reported.
    assert len(pipeline.gitlab.requests_of_kind("archive")) == 3 * 2
    restarts = [
        e
        for e in result.all_events
        if e.step_key == "manifest_and_line_documents" and e.event_type_value == "STEP_RESTARTED"
    ]
    assert len(restarts) == 1
    # Files before the break were read, yet nothing was written: es_index never ran.
    assert pipeline.es.bulk_requests == 0 and not pipeline.es.indices
    assert pipeline.instance.get_latest_materialization_event(AssetKey("es_index")) is None
    assert pipeline.instance.get_latest_materialization_event(AssetKey("line_documents")) is None


@pytest.mark.faults
def test_an_archive_download_that_breaks_off_once_is_resumed_without_duplicates(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "flaky")
    commit_files(
        repo,
        {f"src/m{i}.py": "".join(f"v{i}_{n} = {n * i}\n" for n in range(400)) for i in range(20)},
    )
    project = pipeline.gitlab.add_project("g/flaky", str(repo))
    pipeline.discover()
    calls: list[str] = []

    def cut_the_first_download(request: Request, path: str) -> Response | None:
        if "/repository/archive" not in path or calls:
            return None
        calls.append(path)
        data = _git_archive(repo)
        return _connection_cut_after(data[: len(data) * 2 // 3])

    pipeline.gitlab.faults.append(cut_the_first_download)
    pipeline.index("g/flaky")
    assert len(pipeline.gitlab.requests_of_kind("archive")) == 2
    meta = pipeline.latest_metadata("line_documents", "g/flaky")
    assert meta["archive_restarts"] == 1 and meta["files_from_archive"] == 20
    assert meta["dagster/row_count"] == 20 * 400  # every line once: nothing read twice
    expected = expected_documents(
        repo, project.id, "g/flaky", "main", f"{pipeline.gitlab.url}/g/flaky"
    )
    assert pipeline.es.documents(INDEX) == expected.documents


def _many_files(tmp_path: Path, name: str, files: int) -> Path:
    repo = init_repo(tmp_path / name)
    commit_files(repo, {f"src/m{i:03d}.py": f"m{i} = {i}\nprint(m{i})\n" for i in range(files)})
    return repo


def test_the_tree_is_listed_while_the_archive_streams(pipeline: Pipeline, tmp_path: Path) -> None:
    """A full read does not wait for every tree page before it opens the archive."""
    repo = _many_files(tmp_path, "wide", 350)  # 351 tree entries: 4 pages
    project = pipeline.gitlab.add_project("g/wide", str(repo))
    pipeline.discover()
    seen: list[tuple[float, str]] = []

    def slow_tree_pages(request: Request, path: str) -> Response | None:
        if "/repository/tree" in path:
            time.sleep(0.3)
            seen.append((time.monotonic(), "tree"))
        elif "/repository/archive" in path:
            seen.append((time.monotonic(), "archive"))
        return None

    pipeline.gitlab.faults.append(slow_tree_pages)
    peak_before = _peak_rss_mb_from_proc()
    pipeline.index("g/wide")
    peak_after = _peak_rss_mb_from_proc()
    kinds = [kind for _, kind in sorted(seen)]
    assert kinds.count("tree") == 4 and kinds.count("archive") == 1
    assert kinds.index("archive") < 3  # asked for before the last tree pages came
    expected = expected_documents(
        repo, project.id, "g/wide", "main", f"{pipeline.gitlab.url}/g/wide"
    )
    assert pipeline.es.documents(INDEX) == expected.documents
    meta = pipeline.latest_metadata("file_manifest", "g/wide")
    assert meta["tree_entries"] == 350 and meta["files_indexed"] == 350
    # What a run needs, for sizing workers: the pool that returns memory, and the peak.
    documents = pipeline.latest_metadata("line_documents", "g/wide")
    assert documents["arrow_memory_pool"] in ("jemalloc", "system")
    # Both steps ran in this process: their figure is its peak as the kernel counts it.
    for peak in (
        documents["peak_rss_mb"],
        pipeline.latest_metadata("es_index", "g/wide")["peak_rss_mb"],
    ):
        assert peak_before - 1 <= peak <= peak_after + 1, (peak_before, peak, peak_after)


@pytest.mark.faults
def test_a_tree_listing_that_fails_part_way_fails_the_run_and_writes_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    _many_files(tmp_path, "revoked", 350)
    pipeline.gitlab.add_project("g/revoked", str(tmp_path / "revoked"))
    pipeline.discover()
    pages: list[str] = []

    def forbidden_from_page_three(request: Request, path: str) -> Response | None:
        if "/repository/tree" not in path:
            return None
        pages.append(path)
        return Response(403, {"message": "403 Forbidden"}) if len(pages) >= 3 else None

    pipeline.gitlab.faults.append(forbidden_from_page_three)
    result = pipeline.index("g/revoked", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None
    assert "g/revoked: GitLab refused the tree of project" in failure.message
    assert "read_api and read_repository" in failure.message
    assert pipeline.es.bulk_requests == 0 and not pipeline.es.indices


def test_every_document_carries_the_visibility_and_follows_its_change(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Searches filter on project_id and visibility: a change must reach every document."""
    repo = init_repo(tmp_path / "vis")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "docs/b.md": "# b\n"})
    project = pipeline.gitlab.add_project("g/vis", str(repo))  # private, as GitLab's default
    pipeline.discover()
    url = f"{pipeline.gitlab.url}/g/vis"
    assert pipeline.index("g/vis").success
    assert pipeline.es.documents(INDEX) == (
        expected_documents(repo, project.id, "g/vis", "main", url, visibility="private").documents
    )
    project.visibility = "internal"  # no new commit: only the project's setting changed
    assert pipeline.index("g/vis").success
    assert pipeline.es.documents(INDEX) == (
        expected_documents(repo, project.id, "g/vis", "main", url, visibility="internal").documents
    )
    assert pipeline.latest_metadata("file_manifest", "g/vis")["files_read"] == 2


def test_long_steps_report_progress_in_the_run_log(pipeline: Pipeline, tmp_path: Path) -> None:
    """Both steps say how far they have got (here on every file and chunk), and when done."""
    repo = _many_files(tmp_path, "many", 30)
    pipeline.gitlab.add_project("g/many", str(repo))
    pipeline.discover()
    pipeline.indexing = {"progress_seconds": 0}
    pipeline.es_options = {"bulk_max_docs": 10}
    run_id = pipeline.index("g/many").run_id
    messages = [
        e.user_message
        for e in pipeline.instance.all_logs(run_id)
        if e.user_message.startswith("g/many: ")
    ]
    reads = [m for m in messages if m.startswith("g/many: read: ")]
    writes = [m for m in messages if m.startswith("g/many: write: ")]
    lines = pipeline.latest_metadata("line_documents", "g/many")["dagster/row_count"]
    # One report per file read, then the total; one per bulk chunk, then the total.
    assert len(reads) == 30 + 1 and reads[0].startswith("g/many: read: 1 files")
    assert reads[-1].startswith(f"g/many: read: done, 30 files, {lines:,} lines in ")
    assert len(writes) == -(-lines // 10) + 1
    assert writes[-1].startswith(f"g/many: write: done, {lines:,} of {lines:,} documents in ")
    assert all(m.endswith("lines/s)") or m.endswith("documents/s)") for m in reads + writes)


def _peak_rss_mb_from_proc() -> float:
    """The process's peak resident memory from the kernel's own account (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")
