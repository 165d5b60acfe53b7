"""One measured run in a process of its own; prints one JSON line of figures.

measure.py pipeline|baseline|floor --gitlab URL --es URL --project KEY [--home DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import tarfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from servers import API_KEY, TOKEN


def _number(materialization: Any, key: str) -> float:
    """A number of a materialization's metadata (the pipeline records them as int or float)."""
    value = materialization.metadata[key].value
    if not isinstance(value, (int, float)):
        raise TypeError(f"{key}: {value!r} is not a number")
    return value


def pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from dagster import AssetKey, materialize

    from gitlab_es_pipeline.defs.assets import es_index, manifest_and_line_documents, repositories
    from gitlab_es_pipeline.defs.io_managers import ParquetIOManager
    from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
    from gitlab_es_pipeline.defs.resources import (
        ElasticsearchResource,
        GitLabResource,
        IndexingResource,
    )

    instance = args.instance
    resources = {
        "gitlab": GitLabResource(url=args.gitlab, token=TOKEN),
        "elasticsearch": ElasticsearchResource(url=args.es, api_key=args.es_api_key or None),
        "indexing": IndexingResource(),
        "parquet_io_manager": ParquetIOManager(base_path=os.path.join(args.home, "parquet")),
    }
    lines = files = 0
    step_seconds = {"read": 0.0, "write": 0.0}
    for key in args.project:
        if not instance.has_dynamic_partition(REPOSITORIES_PARTITION, key):
            instance.add_dynamic_partitions(REPOSITORIES_PARTITION, [key])
        result = materialize(
            [manifest_and_line_documents, es_index, repositories],
            selection=[manifest_and_line_documents, es_index],
            partition_key=key,
            instance=instance,
            resources=resources,
        )
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            if mat.asset_key == AssetKey("line_documents"):
                lines += int(_number(mat, "dagster/row_count"))
                files += int(_number(mat, "files_read"))
                step_seconds["read"] += _number(mat, "duration_seconds")
            if mat.asset_key == AssetKey("es_index"):
                step_seconds["write"] += _number(mat, "duration_seconds")
    return {"lines": lines, "files": files, "step_seconds": step_seconds}


def index_repository_job() -> Any:
    """The project's own job, as the daemon launches it (resources from the environment)."""
    from gitlab_es_pipeline.definitions import defs

    return defs.get_job_def("index_repository")


def job(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline as production runs it: each step in a process of its own.

    Each step records its process's peak RSS in its metadata; that is the memory a run needs.
    """
    from dagster import AssetKey, execute_job, reconstructable

    from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION

    os.environ.update(
        RUN_EXECUTOR="multiprocess",  # these rows measure a process per step
        GITLAB_URL=args.gitlab,
        GITLAB_TOKEN=TOKEN,
        ELASTICSEARCH_URL=args.es,
        ELASTICSEARCH_API_KEY=API_KEY,
        PARQUET_STORAGE_URL=os.path.join(args.home, "parquet"),
    )
    instance = args.instance
    lines = files = 0
    step_rss = {"read": 0.0, "write": 0.0}
    for key in args.project:
        if not instance.has_dynamic_partition(REPOSITORIES_PARTITION, key):
            instance.add_dynamic_partitions(REPOSITORIES_PARTITION, [key])
        with execute_job(
            reconstructable(index_repository_job),
            instance=instance,
            tags={"dagster/partition": key},
        ) as result:
            assert result.success, key
            for event in result.get_asset_materialization_events():
                mat = event.event_specific_data.materialization
                rss = _number(mat, "peak_rss_mb") if "peak_rss_mb" in mat.metadata else 0
                if mat.asset_key == AssetKey("line_documents"):
                    lines += int(_number(mat, "dagster/row_count"))
                    files += int(_number(mat, "files_read"))
                    step_rss["read"] = max(step_rss["read"], rss)
                if mat.asset_key == AssetKey("es_index"):
                    step_rss["write"] = max(step_rss["write"], rss)
    return {"lines": lines, "files": files, "step_peak_rss_mb": step_rss}


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The obvious way: list the tree, fetch each file, one dict per line, helpers.bulk(500)."""
    import gitlab
    from elasticsearch import Elasticsearch, helpers

    gl = gitlab.Gitlab(args.gitlab, private_token=TOKEN)
    es = Elasticsearch(args.es, api_key=API_KEY, request_timeout=120)
    counts = {"lines": 0, "files": 0}
    for key in args.project:
        project = gl.projects.get(key)
        sha = project.branches.get(project.default_branch).commit["id"]

        def actions(project: Any = project, sha: str = sha, key: str = key) -> Any:
            for item in project.repository_tree(
                recursive=True, ref=sha, iterator=True, per_page=100
            ):
                if item["type"] != "blob":
                    continue
                raw = project.files.raw(file_path=item["path"], ref=sha)
                counts["files"] += 1
                for n, line in enumerate(raw.decode("utf-8", "replace").split("\n"), start=1):
                    counts["lines"] += 1
                    yield {
                        "_index": "baseline",
                        "_id": f"{project.id}:{item['path']}:{n}",
                        "_source": {
                            "project_id": project.id,
                            "repository_name": key,
                            "commit_sha": sha,
                            "file_path": item["path"],
                            "blob_sha": item["id"],
                            "line_number": n,
                            "line_content": line,
                        },
                    }

        helpers.bulk(es, actions(), chunk_size=500)
    return counts


def floor(args: argparse.Namespace) -> dict[str, Any]:
    """The raw floor: stream the archive and split it into lines; no documents at all."""
    import gitlab

    from gitlab_es_pipeline.core.archive import ChunkStream

    gl = gitlab.Gitlab(args.gitlab, private_token=TOKEN)
    lines = files = 0
    for key in args.project:
        project = gl.projects.get(key)
        chunks = project.repository_archive(streamed=True, iterator=True, chunk_size=1 << 16)
        with tarfile.open(fileobj=ChunkStream(chunks), mode="r|gz") as tar:
            for member in tar:
                if member.isfile():
                    data = tar.extractfile(member).read()
                    lines += len(data.decode("utf-8", "replace").split("\n"))
                    files += 1
    return {"lines": lines, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pipeline", "job", "baseline", "floor"])
    parser.add_argument("--gitlab", required=True)
    parser.add_argument("--es", required=True)
    parser.add_argument("--project", action="append", required=True)
    parser.add_argument("--home")
    parser.add_argument("--es-api-key", default=API_KEY, help="'' for a cluster without one")
    args = parser.parse_args()
    # Imports are not what is measured. The package first, as Dagster's step processes load
    # it: it chooses allocators before pyarrow loads (see gitlab_es_pipeline/memory.py).
    if args.mode in ("pipeline", "job"):
        importlib.import_module("gitlab_es_pipeline.defs.assets")
    import elasticsearch  # noqa: F401
    import gitlab  # noqa: F401

    if args.mode in ("pipeline", "job"):
        from dagster import DagsterInstance

        # Opening the instance (and creating its SQLite schema) is a one-off, not indexing.
        os.environ["DAGSTER_HOME"] = args.home
        args.instance = DagsterInstance.from_config(args.home)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    modes = {"pipeline": pipeline, "job": job, "baseline": baseline, "floor": floor}
    figures = modes[args.mode](args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["pandas_loaded"] = "pandas" in sys.modules
    figures.update(
        wall_seconds=time.perf_counter() - started,
        cpu_seconds=usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
