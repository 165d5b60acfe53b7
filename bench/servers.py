"""The stand-ins, each in a process of its own, so the figures measure the client side."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
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


def serve_until_stopped(conn: Any, asked: Callable[..., Any] | None = None) -> None:
    """Answer "cpu" with cpu_seconds(), and any other tuple (what, *args) by calling
    asked(what, *args), until told anything else."""
    while True:
        message = conn.recv()
        if message == "cpu":
            conn.send(cpu_seconds())
        elif asked is not None and isinstance(message, tuple):
            conn.send(asked(*message))
        else:
            return


def _gitlab(projects: dict[str, str], conn: Any) -> None:
    _gitlab_active_at(projects, "", conn)


def _gitlab_active_at(projects: dict[str, str], last_activity_at: str, conn: Any) -> None:
    from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

    server = GitLabStandIn(token=TOKEN)
    server.rate_limit = 10**9
    attrs = {"last_activity_at": last_activity_at} if last_activity_at else {}
    by_path = {path: server.add_project(path, repo, **attrs) for path, repo in projects.items()}
    server.start()
    conn.send(server.url)

    def asked(what: str, path: str, *args: str) -> Any:
        """("push", path[, before, after]): GitLab's activity, and its hooks if a commit is
        given; ("create", path, repo): a new project and its project_create hook."""
        if what == "create":
            by_path[path] = server.add_project(path, args[0])
            return server.project_hook(by_path[path], "project_create")
        by_path[path].record_push(throttle_seconds=0)
        return server.push_hook(by_path[path], *args) if args else None

    serve_until_stopped(conn, asked)
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
    with running_asked(target, *args) as (url, ask):
        yield url, lambda: float(ask("cpu"))


@contextmanager
def running_asked(target: Any, *args: Any) -> Iterator[tuple[str, Callable[[Any], Any]]]:
    """The stand-in's URL, and a function that sends it a message and returns its answer."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    url = parent.recv()

    def ask(message: Any) -> Any:
        parent.send(message)
        return parent.recv()

    try:
        yield url, ask
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


def gitlab_server(projects: dict[str, str]) -> AbstractContextManager[str]:
    return running(_gitlab, projects)


def gitlab_server_measured(projects: dict[str, str]) -> AbstractContextManager[tuple[str, Any]]:
    return running_measured(_gitlab, projects)


def gitlab_server_pushable(
    projects: dict[str, str], last_activity_at: str
) -> AbstractContextManager[tuple[str, Callable[[Any], Any]]]:
    """Projects last active at last_activity_at; ask(("push", path)) records a push."""
    return running_asked(_gitlab_active_at, projects, last_activity_at)


def elasticsearch_server() -> AbstractContextManager[str]:
    return running(_elasticsearch)
