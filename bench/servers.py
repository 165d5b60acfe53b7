"""The stand-ins, each in a process of its own, so the figures measure the client side."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

TOKEN = "glpat-bench"
API_KEY = "es-bench"


def cpu_seconds() -> float:
    """This process's CPU, with that of its finished children (the stand-in's git processes)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def serve_until_stopped(conn: Any) -> None:
    """Answer "cpu" with cpu_seconds() until told anything else."""
    while conn.recv() == "cpu":
        conn.send(cpu_seconds())


def _gitlab(projects: dict[str, str], conn: Any) -> None:
    from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

    server = GitLabStandIn(token=TOKEN)
    server.rate_limit = 10**9
    for path, repo in projects.items():
        server.add_project(path, repo)
    server.start()
    conn.send(server.url)
    serve_until_stopped(conn)
    server.stop()


def _elasticsearch(conn: Any) -> None:
    from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn

    server = ElasticsearchStandIn(api_key=API_KEY, count_only=True)
    server.start()
    conn.send(server.url)
    serve_until_stopped(conn)
    server.stop()


@contextmanager
def running(target: Any, *args: Any) -> Iterator[str]:
    with running_measured(target, *args) as (url, _):
        yield url


@contextmanager
def running_measured(target: Any, *args: Any) -> Iterator[tuple[str, Any]]:
    """The stand-in's URL, and a function that asks it for its CPU seconds so far."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    url = parent.recv()

    def cpu() -> float:
        parent.send("cpu")
        return float(parent.recv())

    try:
        yield url, cpu
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


def gitlab_server(projects: dict[str, str]) -> AbstractContextManager[str]:
    return running(_gitlab, projects)


def gitlab_server_measured(projects: dict[str, str]) -> AbstractContextManager[tuple[str, Any]]:
    return running_measured(_gitlab, projects)


def elasticsearch_server() -> AbstractContextManager[str]:
    return running(_elasticsearch)
