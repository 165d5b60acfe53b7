"""A new index's first load: bulk settings while it runs, and who may undo them (issue 25, 8).

`bulk_load()` turns refreshes and replicas off and writes in the mapping's `_meta` what to
put back, so that a load whose process is killed is repaired by the next `ensure()`. Runs of
other repositories call `ensure()` all the time: they must leave a live load alone and repair
only a dead one, and the note must never cost the index the other entries of its `_meta`.

Each test runs against the Elasticsearch stand-in and against a real OpenSearch node; what
is asserted is read back from the engine (GET _settings, GET _mapping).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gitlab_es_pipeline.clients.elasticsearch import LOAD_NOTE, LineIndex
from gitlab_es_pipeline.clients.engines import Connection, SearchEngine, connect
from gitlab_es_pipeline.core.bulk import BulkOperations, index_operations
from gitlab_es_pipeline.core.documents import FileText, RepositorySnapshot, line_document_batches

NAME = "lines"
SNAPSHOT = RepositorySnapshot(7, "g/p", "main", "c" * 40, "https://gl.example/g/p")
# What the index has before its first load, and must have again after it.
BEFORE = {"refresh_interval": "2s", "number_of_replicas": "2"}
LOADING = {"refresh_interval": "-1", "number_of_replicas": "0"}
OTHER_META = {"owner_team": "search", "schema": {"version": 3, "notes": ["kept"]}}


@dataclass
class Cluster:
    connection: Connection

    def engine(self) -> SearchEngine:
        """A client of its own, as each run (each process) has."""
        return connect(self.connection)

    def index(self, **options: Any) -> LineIndex:
        return LineIndex(self.engine(), NAME, sleep=lambda _: None, **options)

    def settings(self) -> dict[str, Any]:
        """refresh_interval and number_of_replicas of the index behind the alias."""
        (body,) = self.engine().get_settings(NAME).values()
        index = body["settings"]["index"]
        return {key: index.get(key) for key in BEFORE}

    def meta(self) -> dict[str, Any]:
        (body,) = self.engine().get_mapping(NAME).values()
        return body["mappings"].get("_meta") or {}

    def concrete(self) -> str:
        (name,) = self.engine().get_mapping(NAME)
        return name


@pytest.fixture(params=["stand-in", pytest.param("opensearch", marks=pytest.mark.opensearch)])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    if request.param == "stand-in":
        server = request.getfixturevalue("es_server")
        return Cluster(Connection(server.url, api_key=server.api_key))
    node = request.getfixturevalue("opensearch")
    return Cluster(Connection(node.url))


def _new_index(cluster: Cluster) -> LineIndex:
    """Created as a run creates it, with settings of its own and other _meta entries."""
    index = cluster.index(max_chunk_docs=10)
    assert index.ensure() == "created"
    engine = cluster.engine()
    engine.put_settings(NAME, {"index": BEFORE})
    engine.put_mapping(cluster.concrete(), meta=OTHER_META)
    assert cluster.settings() == BEFORE and cluster.meta() == OTHER_META
    return index


def _operations(file: int, lines: int = 25) -> Iterator[BulkOperations]:
    text = "".join(f"line {n}\n" for n in range(1, lines + 1))
    texts = [FileText(f"src/f{file}.py", "b" * 40, text)]
    for batch in line_document_batches(SNAPSHOT, texts, 1000, rows=lines):
        yield index_operations(batch)


# A run's process killed inside bulk_load: SIGKILL, so no `finally` restores anything.
_KILLED_LOAD = """
import os, signal, sys
from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.engines import Connection, connect

url, api_key, owner = sys.argv[1:]
index = LineIndex(connect(Connection(url, api_key=api_key or None)), "lines")
with index.bulk_load(owner=owner):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_load(cluster: Cluster, owner: str) -> None:
    connection = cluster.connection
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_LOAD, connection.url, connection.api_key or "", owner],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert cluster.settings() == LOADING and cluster.meta()[LOAD_NOTE]["owner"] == owner


def test_a_load_in_progress_keeps_its_settings_while_other_runs_ensure_the_index(
    cluster: Cluster,
) -> None:
    loader = _new_index(cluster)
    with loader.bulk_load():
        loader.write(_operations(1))
        assert cluster.settings() == LOADING
        other = cluster.index()  # another repository's run, its own client
        assert other.ensure() == "existing"
        assert other.restored_after_interrupted_load == {}
        assert cluster.settings() == LOADING
        assert cluster.meta() == {**OTHER_META, LOAD_NOTE: cluster.meta()[LOAD_NOTE]}
        loader.write(_operations(2))
        assert cluster.settings() == LOADING
    assert cluster.settings() == BEFORE
    assert cluster.meta() == OTHER_META
    loader.refresh()
    assert cluster.engine().count(NAME, {"match_all": {}}) == 50


def test_other_meta_entries_survive_the_note_and_its_removal(cluster: Cluster) -> None:
    loader = _new_index(cluster)
    with loader.bulk_load():
        meta = cluster.meta()
        assert meta == {**OTHER_META, LOAD_NOTE: meta[LOAD_NOTE]}
        assert meta[LOAD_NOTE]["restore"] == BEFORE
    assert cluster.meta() == OTHER_META
    assert cluster.settings() == BEFORE


def test_a_load_in_progress_is_left_alone_while_its_owner_is_said_to_be_alive(
    cluster: Cluster,
) -> None:
    loader = _new_index(cluster)
    asked: list[str] = []

    def alive(owner: str) -> bool:
        asked.append(owner)
        return owner == "run-a"

    with loader.bulk_load(owner="run-a"):
        loader.write(_operations(1))
        other = cluster.index()
        assert other.ensure(load_alive=alive) == "existing"
        assert asked == ["run-a"]
        assert other.restored_after_interrupted_load == {}
        assert other.loads_in_progress == {cluster.concrete(): "run-a"}
        assert cluster.settings() == LOADING
        assert cluster.meta()[LOAD_NOTE]["owner"] == "run-a"
        loader.write(_operations(2))
    assert cluster.settings() == BEFORE
    assert cluster.meta() == OTHER_META


def test_a_killed_load_is_finished_by_the_next_ensure_once_its_owner_is_not_alive(
    cluster: Cluster,
) -> None:
    _new_index(cluster)
    _killed_load(cluster, "run-killed")

    still_running = cluster.index()
    still_running.ensure(load_alive=lambda owner: True)
    assert still_running.restored_after_interrupted_load == {}
    assert cluster.settings() == LOADING

    next_run = cluster.index()
    assert next_run.ensure(load_alive=lambda owner: owner != "run-killed") == "existing"
    assert next_run.restored_after_interrupted_load == {cluster.concrete(): BEFORE}
    assert cluster.settings() == BEFORE
    assert cluster.meta() == OTHER_META


def test_without_a_predicate_a_killed_load_is_finished_once_its_heartbeat_is_stale(
    cluster: Cluster,
) -> None:
    _new_index(cluster)
    _killed_load(cluster, "run-killed")

    soon = cluster.index()  # its heartbeat is fresh: it may still be loading
    soon.ensure()
    assert soon.restored_after_interrupted_load == {}
    assert cluster.settings() == LOADING

    later = cluster.index(clock=lambda: time.time() + 601)
    later.ensure()
    assert later.restored_after_interrupted_load == {cluster.concrete(): BEFORE}
    assert cluster.settings() == BEFORE
    assert cluster.meta() == OTHER_META


def test_a_long_load_renews_its_heartbeat_as_chunks_are_written(cluster: Cluster) -> None:
    now = [time.time()]
    loader = LineIndex(cluster.engine(), NAME, max_chunk_docs=10, clock=lambda: now[0])
    assert loader.ensure() == "created"
    cluster.engine().put_settings(NAME, {"index": BEFORE})
    with loader.bulk_load(owner="run-long"):
        started = cluster.meta()[LOAD_NOTE]["heartbeat"]
        now[0] += 500
        loader.write(_operations(1))
        assert cluster.meta()[LOAD_NOTE]["heartbeat"] == pytest.approx(started + 500)
        # 700 s after the load began, 200 s after its last chunk: still alive.
        checker = cluster.index(clock=lambda: now[0] + 200)
        checker.ensure()
        assert checker.restored_after_interrupted_load == {}
        assert cluster.settings() == LOADING
    assert cluster.settings() == BEFORE
    assert LOAD_NOTE not in cluster.meta()


def test_a_note_from_before_owners_and_heartbeats_is_finished_at_once(cluster: Cluster) -> None:
    _new_index(cluster)
    engine = cluster.engine()
    engine.put_settings(NAME, {"index": LOADING})
    engine.put_mapping(cluster.concrete(), meta={**OTHER_META, LOAD_NOTE: {"restore": BEFORE}})
    index = cluster.index()
    index.ensure()
    assert index.restored_after_interrupted_load == {cluster.concrete(): BEFORE}
    assert cluster.settings() == BEFORE
    assert cluster.meta() == OTHER_META
