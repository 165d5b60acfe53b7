"""Indexes one partition (or a batch) in a process of its own, so that a test can kill it
(SIGKILL) or run several at once.

Usage: python -m gitlab_es_pipeline_tests.run_partition SPEC_JSON, where the spec names the
stand-ins' URLs and credentials, the Parquet storage and the partition. The Dagster instance
comes from DAGSTER_HOME (and DAGSTER_PG_URL), as for the test that starts it.
"""

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from dagster import DagsterInstance

from gitlab_es_pipeline_tests.pipeline import Pipeline


def spec_of(pipeline: Pipeline, partition: str, tags: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "gitlab": {"url": pipeline.gitlab.url, "token": pipeline.gitlab.token},
            "es": {"url": pipeline.es.url, "api_key": pipeline.es.api_key},
            "storage": str(pipeline.storage),
            "partition": partition,
            "tags": tags or {},
        }
    )


def start_batch(pipeline: Pipeline, keys: list[str]) -> subprocess.Popen[bytes]:
    """A batch run over these repositories in a process of its own."""
    spec = json.loads(spec_of(pipeline, ""))
    spec["batch"] = keys
    return subprocess.Popen(
        [sys.executable, "-m", "gitlab_es_pipeline_tests.run_partition", json.dumps(spec)]
    )


def run_killed(
    pipeline: Pipeline, partition: str, at_item: str, tags: dict[str, str] | None = None
) -> None:
    """A run of the partition in a process of its own, killed (SIGKILL) when Elasticsearch
    gets its first bulk item of kind `at_item` ("index": the first document; "delete": once
    its documents are written, as a run's index operations are all answered first)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitlab_es_pipeline_tests.run_partition",
            spec_of(pipeline, partition, tags),
        ]
    )

    def kill(kind: str, meta: dict, source: object) -> None:
        if kind == at_item and child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)

    pipeline.es.item_faults.append(kill)
    try:
        assert child.wait(timeout=180) == -signal.SIGKILL
    finally:
        pipeline.es.item_faults.remove(kill)


def main(spec: dict[str, Any]) -> None:
    with DagsterInstance.get() as instance:
        pipeline = Pipeline(
            SimpleNamespace(**spec["gitlab"]),  # type: ignore[arg-type]
            SimpleNamespace(**spec["es"]),  # type: ignore[arg-type]
            instance,
            spec["storage"],
        )
        if spec.get("batch"):
            result = pipeline.index_batch(spec["batch"])
            sys.exit(0 if result.success else 1)
        pipeline.index(spec["partition"], tags=spec.get("tags") or None)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
