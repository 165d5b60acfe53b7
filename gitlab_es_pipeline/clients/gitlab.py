"""The GitLab side: every request the pipeline makes goes through GitLabSource."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, cast
from urllib.parse import urlsplit

import gitlab
import requests
from gitlab.exceptions import GitlabError

# Request kinds, for the run's metadata and the request budgets. First match wins.
_REQUEST_KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"/repository/archive", "archive"),
        (r"/repository/blobs/[^/]+/raw", "raw_blob"),
        (r"/repository/files/", "file"),
        (r"/repository/tree", "tree"),
        (r"/repository/branches/", "branch"),
        (r"/repository/compare", "compare"),
        (r"/repository/commits", "commits"),
        (r"/groups/[^/]+/projects", "projects_list"),
        (r"/projects/?$", "projects_list"),
        (r"/projects/[^/]+/?$", "project"),
    )
)


def _instant(value: str | None) -> datetime:
    if not value:
        return datetime.min.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def request_kind(path: str) -> str:
    for pattern, kind in _REQUEST_KINDS:
        if pattern.search(path):
            return kind
    return "other"


class GitLabError(Exception):
    """A GitLab request failed for good (after retries); the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def permanent(self) -> bool:
        """An answer no retry changes: about the token (401, 403) or the project (404)."""
        return self.status in (401, 403, 404)


def token_may_follow(old_url: str, new_url: str) -> bool:
    """Whether a redirect from old_url to new_url stays where the token may go: the same host,
    with the same scheme and port or the upgrade from http to https on the standard ports.
    It is the rule requests applies to an Authorization header (Session.should_strip_auth)."""
    return not _REQUESTS_RULES.should_strip_auth(old_url, new_url)


_REQUESTS_RULES = requests.Session()  # only its redirect rule is used: it never connects


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL, as it may be shown: no user info, path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class _SameOriginSession(requests.Session):
    """A session that follows a redirect only where the GitLab token may go with it.

    python-gitlab sends the token as a PRIVATE-TOKEN header. On a redirect requests copies
    every header of the request into the next one and strips only Authorization when the
    redirect leaves the origin (rebuild_auth): PRIVATE-TOKEN would go to whatever host the
    redirect names. So a redirect to another origin is not followed at all; it fails, before
    anything is sent there, with a GitLabError that names both origins, not the token.

    Refused rather than followed without the token (as sending the token as
    `Authorization: Bearer`, which GitLab also accepts, would make requests do):
    - Nothing the pipeline fetches is served by another host: API answers, repository
      archives and raw blobs all come from GitLab itself (LFS objects, which object storage
      may serve, are never asked for: include_lfs_blobs=false). A redirect elsewhere means
      GITLAB_URL is out of date or something between us and GitLab is rewriting answers.
    - Followed without the token, the other host's answer would be taken for GitLab's: a 401
      blamed on GITLAB_TOKEN, or content from there indexed as if it were the repository's.
    - It holds whatever header carries the credentials, and it keeps PRIVATE-TOKEN: the header
      GitLab documents for personal, project and group access tokens (older GitLab documents
      only that one for them; Bearer is the OAuth 2.0 header), which the tests' stand-in checks.
    Redirects within the origin (a renamed project's 301) keep working, token included, as
    does the upgrade from http:// to https:// on the same host, as before; the downgrade from
    https:// to http:// is refused, since the token would then cross the network readable.
    """

    def rebuild_auth(self, prepared_request: Any, response: requests.Response) -> None:
        source, target = response.request.url or "", prepared_request.url or ""
        if not token_may_follow(source, target):
            raise GitLabError(
                f"GitLab answered HTTP {response.status_code} with a redirect from "
                f"{_origin(source)} to {_origin(target)}, another host, port or scheme: not "
                "followed, so that GitLab's credentials do not go there. If GitLab has moved, "
                "set GITLAB_URL to its new address",
                response.status_code,
            )
        super().rebuild_auth(prepared_request, response)


def _explain(exc: GitlabError, what: str) -> GitLabError:
    status = exc.response_code
    hint = {
        401: "the token is missing, expired or revoked: check GITLAB_TOKEN",
        403: "the token lacks access: it needs the read_api and read_repository scopes",
        404: "not found (deleted, moved, or not visible to the token)",
    }.get(status or 0, "")
    message = f"GitLab refused {what}: HTTP {status}" + (f" - {hint}" if hint else "")
    return GitLabError(message, status)


class GitLabSource:
    """python-gitlab with retries for 429/5xx (Retry-After, RateLimit-Reset) and request counts."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        max_retries: int = 10,
        ssl_verify: bool | str = True,
    ) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        session = _SameOriginSession()  # the token never follows a redirect elsewhere
        session.hooks["response"].append(self._count)
        self.gl = gitlab.Gitlab(
            url,
            private_token=token,
            timeout=timeout,
            retry_transient_errors=True,
            ssl_verify=ssl_verify,
            session=session,
            per_page=100,
            # Next-page links stay on GITLAB_URL even when GitLab's external_url names another
            # host: the token goes nowhere else.
            keep_base_url=True,
        )
        self.max_retries = max_retries

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        kind = request_kind(requests.utils.urlparse(response.url).path)
        with self._lock:
            self.requests[kind] += 1

    def _list_options(self) -> dict[str, Any]:
        return {"iterator": True, "per_page": 100, "max_retries": self.max_retries}

    def list_projects(self, groups: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """Non-archived projects, by keyset pagination (offset pagination stops at 50,000)."""
        try:
            if not groups:
                for project in self.gl.projects.list(
                    pagination="keyset",
                    order_by="id",
                    sort="asc",
                    archived=False,
                    **self._list_options(),
                ):
                    yield project.attributes
                return
            for group in groups:
                # /groups/:id/projects has no keyset pagination; offset with order_by=id is stable.
                for project in self.gl.groups.get(group, lazy=True).projects.list(
                    include_subgroups=True,
                    with_shared=False,
                    archived=False,
                    order_by="id",
                    sort="asc",
                    **self._list_options(),
                ):
                    yield project.attributes
        except GitlabError as exc:
            raise _explain(exc, "the project list") from exc

    def recently_active(self, groups: Sequence[str], since: str) -> Iterator[dict[str, Any]]:
        """Projects whose last_activity_at is after `since` (ISO 8601), newest first.

        Ordered by activity, the listing stops at the first older project: its cost follows
        how many projects were active, not how many there are.
        """
        options = {
            "order_by": "last_activity_at",
            "sort": "desc",
            "archived": False,
            "last_activity_after": since,
            **self._list_options(),
        }
        listings = (
            [self.gl.projects.list(**options)]
            if not groups
            else [
                self.gl.groups.get(g, lazy=True).projects.list(include_subgroups=True, **options)
                for g in groups
            ]
        )
        try:
            for listing in listings:
                for project in listing:
                    if _instant(project.attributes.get("last_activity_at")) <= _instant(since):
                        break
                    yield project.attributes
        except GitlabError as exc:
            raise _explain(exc, "the list of recently active projects") from exc

    def default_branch_head(self, path_with_namespace: str) -> str | None:
        """The newest commit of the default branch, in one request; None for an empty project."""
        project = self.gl.projects.get(path_with_namespace, lazy=True)
        try:
            commits = project.commits.list(per_page=1, get_all=False, max_retries=self.max_retries)
        except GitlabError as exc:
            raise _explain(exc, f"the commits of {path_with_namespace!r}") from exc
        return commits[0].id if commits else None

    def project(self, path_with_namespace: str | int) -> dict[str, Any]:
        """One project, by its path or its id."""
        try:
            return self.gl.projects.get(
                path_with_namespace, max_retries=self.max_retries
            ).attributes
        except GitlabError as exc:
            raise _explain(exc, f"project {path_with_namespace!r}") from exc

    def head_commit(self, project_id: int, branch: str) -> str:
        project = self.gl.projects.get(project_id, lazy=True)
        try:
            return project.branches.get(branch, max_retries=self.max_retries).commit["id"]
        except GitlabError as exc:
            raise _explain(exc, f"branch {branch!r} of project {project_id}") from exc

    def iter_tree(self, project_id: int | str, commit_sha: str) -> Iterator[dict[str, Any]]:
        """Every entry of the tree at a commit (blobs, trees, submodules), 100 per request."""
        project = self.gl.projects.get(project_id, lazy=True)
        try:
            yield from project.repository_tree(
                ref=commit_sha, recursive=True, pagination="keyset", **self._list_options()
            )
        except GitlabError as exc:
            raise _explain(exc, f"the tree of project {project_id} at {commit_sha}") from exc

    def tree_entries(self, project: int | str, commit_sha: str, at_most: int) -> int:
        """Entries of the tree (files and folders), counted up to one more than at_most: one
        request for a small repository, at most at_most/100 + 1 for a large one."""
        count = 0
        for _ in self.iter_tree(project, commit_sha):
            count += 1
            if count > at_most:
                break
        return count

    def archive_chunks(
        self, project_id: int, commit_sha: str, archive_format: str = "tar.gz"
    ) -> Iterator[bytes]:
        """The repository archive at a commit, as it arrives; LFS pointers stay pointers."""
        project = self.gl.projects.get(project_id, lazy=True)
        try:
            return project.repository_archive(
                sha=commit_sha,
                format=archive_format,
                streamed=True,
                iterator=True,
                chunk_size=1 << 16,
                include_lfs_blobs="false",
                max_retries=self.max_retries,
            )
        except GitlabError as exc:
            raise _explain(exc, f"the archive of project {project_id} at {commit_sha}") from exc

    def compare(self, project_id: int, from_sha: str, to_sha: str) -> dict[str, Any]:
        """Direct comparison of two commits' trees (straight=true: no merge base involved)."""
        project = self.gl.projects.get(project_id, lazy=True)
        try:
            # Not streamed, so the JSON body (the annotation's Response is for streamed answers).
            compared = project.repository_compare(
                from_sha, to_sha, straight="true", max_retries=self.max_retries
            )
            return cast("dict[str, Any]", compared)
        except GitlabError as exc:
            raise _explain(
                exc, f"the comparison {from_sha}..{to_sha} of project {project_id}"
            ) from exc

    def file_metadata(self, project_id: int, path: str, commit_sha: str) -> tuple[str, int]:
        """A file's blob id and size at a commit, from a HEAD request: no content downloaded."""
        project = self.gl.projects.get(project_id, lazy=True)
        try:
            headers = project.files.head(path, ref=commit_sha, max_retries=self.max_retries)
        except GitlabError as exc:
            raise _explain(exc, f"file {path!r} of project {project_id} at {commit_sha}") from exc
        return headers["X-Gitlab-Blob-Id"], int(headers["X-Gitlab-Size"])

    def raw_blob(self, project_id: int, blob_sha: str, limit: int | None = None) -> bytes:
        """A blob's bytes by id. With a limit, streamed and given up after limit + 1 bytes:
        more than `limit` means over the cap, and the rest is never downloaded."""
        project = self.gl.projects.get(project_id, lazy=True)
        try:
            chunks = project.repository_raw_blob(
                blob_sha,
                streamed=True,
                iterator=True,
                chunk_size=1 << 16,
                max_retries=self.max_retries,
            )
        except GitlabError as exc:
            raise _explain(exc, f"blob {blob_sha} of project {project_id}") from exc
        received: list[bytes] = []
        size = 0
        for chunk in chunks:
            received.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                break
        return b"".join(received)
