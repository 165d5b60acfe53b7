"""The pipeline against a real search engine's own ingest rate, on the same documents.

    .venv/bin/python bench/real_sink.py              # 20,000 files / 2,000,000 lines
    .venv/bin/python bench/real_sink.py --scale 0.1  # a tenth: a few minutes

Starts a real OpenSearch node (built from Maven Central's jars, as the tests do) and the GitLab
stand-in, then, on the benchmark repository of bench/run.py (generated the same way):
1. the pipeline, end to end through Dagster (read from GitLab, write to the node), as a first
   load into a fresh index: a process of its own (measure.py), its clock started after imports;
2. the sink's own limit: the same documents as bulk bodies prepared in advance (from the
   pipeline's line documents, cut as the pipeline cuts them), sent by as many concurrent
   senders as the pipeline uses into a fresh index with the same first-load settings, then a
   refresh (the pipeline's asset check refreshes too); nothing else runs.
A first pipeline run warms the node up (its JIT compiles the indexing code during the first
tens of seconds of load) and writes the line documents; then sink, pipeline, sink, pipeline.
Prints every run, and the ratio of the best of each (target: end to end within 1.3x of the
sink's own time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from generate import make_repo  # noqa: E402
from servers import gitlab_server  # noqa: E402

from gitlab_es_pipeline_tests.opensearch_node import OpenSearchNode  # noqa: E402

INDEX = "gitlab-lines"


def pipeline_run(gitlab: str, node: OpenSearchNode, home: Path, project: str) -> dict[str, Any]:
    """A first load in a process of its own (measure.py), into a fresh index."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    for row in node.request("GET", "_cat/indices", format="json"):
        node.request("DELETE", row["index"])
    command = [
        sys.executable,
        str(HERE / "measure.py"),
        "pipeline",
        "--gitlab",
        gitlab,
        "--es",
        node.url,
        "--es-api-key",
        "",
        "--project",
        project,
        "--home",
        str(home),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def prepared_bodies(parquet: Path, max_bytes: int, max_docs: int) -> list[bytes]:
    """The pipeline's documents as the bulk bodies it sends, built before the clock starts."""
    import pyarrow.parquet as pq

    from gitlab_es_pipeline.core.bulk import chunk_operations, index_operations

    table = pq.read_table(parquet)
    batches = (index_operations(batch) for batch in table.to_batches(max_chunksize=5000))
    return [chunk.body() for chunk in chunk_operations(batches, max_bytes, max_docs)]


def sink_run(node: OpenSearchNode, bodies: list[bytes], senders: int) -> dict[str, Any]:
    """The node's own ingest of prepared bodies: a fresh index, first-load settings, refresh."""
    from gitlab_es_pipeline.core.mapping import concrete_index_name, index_body

    for row in node.request("GET", "_cat/indices", format="json"):
        node.request("DELETE", row["index"])
    node.request("PUT", concrete_index_name(INDEX), {**index_body(), "aliases": {INDEX: {}}})
    node.request("PUT", f"{INDEX}/_settings", {"index": {"refresh_interval": "-1"}})
    node.request("PUT", f"{INDEX}/_settings", {"index": {"number_of_replicas": 0}})
    pending = list(reversed(bodies))
    lock = threading.Lock()
    failures: list[str] = []

    def send() -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/x-ndjson"}
        while True:
            with lock:
                if not pending:
                    return
                body = pending.pop()
            answer = session.post(
                f"{node.url}/{INDEX}/_bulk",
                data=body,
                headers=headers,
                params={"filter_path": "errors"},
                timeout=300,
            )
            if answer.status_code != 200 or answer.json().get("errors"):
                failures.append(answer.text[:300])

    started = time.perf_counter()
    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    node.request("POST", f"{INDEX}/_refresh")
    wall = time.perf_counter() - started
    count = node.request("GET", f"{INDEX}/_count")["count"]
    assert not failures, failures[:3]
    return {"documents": count, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 20,000 files x 100 lines")
    parser.add_argument("--heap", default="2g", help="the node's Java heap")
    args = parser.parse_args()
    from gitlab_es_pipeline.defs.resources import ElasticsearchResource

    defaults = ElasticsearchResource(url="http://127.0.0.1:9200")
    files = max(10, int(20_000 * args.scale))
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-bench-sink-"))
    node = OpenSearchNode(work / "node", heap=args.heap)
    try:
        print(f"generating {files:,} files x 100 lines; starting OpenSearch ...", flush=True)
        make_repo(work / "repo", files, 100, seed=1)
        node.start()
        rows: list[tuple[str, int, dict[str, Any]]] = []
        with gitlab_server({"bench/repo": str(work / "repo")}) as gitlab:
            first = pipeline_run(gitlab, node, work / "first", "bench/repo")
            rows.append(("pipeline, first (warm-up)", first["lines"], first))
            parquet = work / "first" / "parquet" / "line_documents" / "bench" / "repo.parquet"
            bodies = prepared_bodies(parquet, defaults.bulk_max_bytes, defaults.bulk_max_docs)
            for attempt in (1, 2):
                sink = sink_run(node, bodies, defaults.bulk_workers)
                rows.append((f"sink alone, prepared bodies ({attempt})", sink["documents"], sink))
                run = pipeline_run(gitlab, node, work / f"run{attempt}", "bench/repo")
                rows.append((f"pipeline end to end ({attempt})", run["lines"], run))
        print()
        print(f"{'run':<40} {'documents':>10} {'seconds':>8} {'docs/s':>9}  read + write steps")
        for name, documents, figures in rows:
            steps = figures.get("step_seconds")
            split = f"{steps['read']:.1f} + {steps['write']:.1f} s" if steps else ""
            print(
                f"{name:<40} {documents:>10,} {figures['wall_seconds']:>8.1f} "
                f"{documents / figures['wall_seconds']:>9,.0f}  {split}"
            )
        best = {
            kind: min(f["wall_seconds"] for name, _, f in rows[1:] if name.startswith(kind))
            for kind in ("sink", "pipeline")
        }
        print(
            f"\n{len(bodies)} bulk bodies, {sum(map(len, bodies)) / 1e6:.1f} MB, "
            f"{defaults.bulk_workers} senders; node heap {args.heap}"
        )
        print(
            f"end to end / sink alone (best of two each): {best['pipeline'] / best['sink']:.2f}x "
            "(target <= 1.3x)"
        )
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "yes")
    main()
