"""GitLab and the cluster as the commands meet them: the pipeline's own resources from the
environment, each problem said in one line (which service, where, why; never a secret), and
the look at both that `dev` takes before it starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from requests import RequestException

from gitlab_es_pipeline.clients.engines import (
    EngineError,
    EngineSetupError,
    EngineUnreachable,
    unreachable_reason,
)
from gitlab_es_pipeline.clients.gitlab import GitLabError
from gitlab_es_pipeline.defs.resources import (
    ElasticsearchResource,
    GitLabResource,
    resources_from_env,
)


class Trouble(Exception):
    """Said to the user in one line, exit status 2."""


def setting_problem(exc: Exception) -> str:
    """One line from Dagster's configuration error: which variable, never its value."""
    text = str(exc)
    missing = sorted(set(re.findall(r'environment variable "(\w+)" which is not set', text)))
    if missing:
        return f"{', '.join(missing)} not set (see the README's Configuration)"
    for line in text.splitlines():
        if "Value error" in line:
            return line.split("Value error,", 1)[-1].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def from_env(name: str) -> Any:
    """The pipeline's own resource, its environment variables resolved (never printed)."""
    try:
        return resources_from_env()[name].process_config_and_initialize()
    except Exception as exc:
        raise Trouble(setting_problem(exc)) from None


def shown_url(url: str) -> str:
    """A URL as it may be shown: credentials in it left out."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def unreachable(service: str, url: str, exc: Exception) -> Trouble:
    """The service, where, and why, in one line."""
    where = shown_url(url)
    if isinstance(exc, EngineError):
        return Trouble(f"{service} at {where} refused the request: {exc.reason or exc.error}")
    return Trouble(f"cannot reach {service} at {where}: {unreachable_reason(exc)}")


@dataclass(frozen=True)
class Finding:
    """What a look at one service found. `blocking`: runs cannot succeed until the user acts
    (a setting, the token, the client); an unreachable service may come back by itself."""

    service: str
    line: str
    ok: bool = False
    blocking: bool = False


def look_at_gitlab() -> Finding:
    """The first page of the listing discovery makes (one request; one per group of
    GITLAB_GROUPS, each group named if it is refused): the URL, the token and its access."""
    try:
        gitlab: GitLabResource = from_env("gitlab")
    except Trouble as exc:
        return Finding("GitLab", f"GitLab: {exc}", blocking=True)
    where = f"GitLab at {shown_url(gitlab.url)}"
    source = gitlab.source()
    source.max_retries = 0  # someone waits at a terminal: an answer now, not after backoff
    source.gl.timeout = 10
    groups = gitlab.group_paths()
    first = None
    for listing in [[group] for group in groups] or [[]]:
        named = f" (group {listing[0]})" if listing else ""
        try:
            first = next(source.list_projects(listing), None) or first
        except GitLabError as exc:
            return Finding("GitLab", f"{where}{named}: {exc}", blocking=exc.permanent)
        except RequestException as exc:
            return _unanswered("GitLab", where, exc)
    seen = "token accepted" + ("" if first else ", but it sees no project")
    return Finding("GitLab", f"{where}: ok ({seen})", ok=True)


def look_at_cluster() -> Finding:
    """The cluster's root answer: which engine and version, and whether this installation has
    its client and may write to it."""
    try:
        cluster: ElasticsearchResource = from_env("elasticsearch")
    except Trouble as exc:
        return Finding("cluster", f"cluster: {exc}", blocking=True)
    where = f"cluster at {shown_url(cluster.url)}"
    try:
        engine = cluster.search_engine()
        root = engine.info()
    except EngineSetupError as exc:
        return Finding("cluster", f"{where}: {exc.reason}", blocking=True)
    except EngineUnreachable as exc:
        return _unanswered("cluster", where, exc)
    except EngineError as exc:
        if exc.status == 403:  # the user may write without reading the root (monitor right)
            return Finding("cluster", f"{where}: ok ({engine.engine})", ok=True)
        return Finding(
            "cluster", f"{where} refused: {exc.reason or exc.error}", blocking=exc.status == 401
        )
    version = root.get("version", {}).get("number", "")
    name = "OpenSearch" if engine.engine == "opensearch" else "Elasticsearch"
    client = "opensearch-py" if engine.engine == "opensearch" else "elasticsearch"
    return Finding(
        "cluster",
        f"{name} {version} at {shown_url(cluster.url)}: ok ({client} {_version_of(client)})",
        ok=True,
    )


def _unanswered(service: str, where: str, exc: Exception) -> Finding:
    """No answer: it may come back by itself, unless its certificate is refused (no waiting
    mends that: the CA bundle, or the URL, does)."""
    reason = unreachable_reason(exc)
    return Finding(service, f"{where}: cannot reach it: {reason}", blocking="certificate" in reason)


def _version_of(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
