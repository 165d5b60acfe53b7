"""The stand-ins, each in a process of its own, so the figures measure the client side."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

TOKEN = "glpat-bench"
API_KEY = "es-bench"


def _gitlab(projects: dict[str, str], conn: Any) -> None:
    from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

    server = GitLabStandIn(token=TOKEN)
    server.rate_limit = 10**9
    for path, repo in projects.items():
        server.add_project(path, repo)
    server.start()
    conn.send(server.url)
    conn.recv()
    server.stop()


def _elasticsearch(conn: Any) -> None:
    from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn

    server = ElasticsearchStandIn(api_key=API_KEY, count_only=True)
    server.start()
    conn.send(server.url)
    conn.recv()
    server.stop()


@contextmanager
def running(target: Any, *args: Any) -> Iterator[str]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    url = parent.recv()
    try:
        yield url
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


def gitlab_server(projects: dict[str, str]) -> AbstractContextManager[str]:
    return running(_gitlab, projects)


def elasticsearch_server() -> AbstractContextManager[str]:
    return running(_elasticsearch)
