"""A GitLab API v4 stand-in serving real git repositories (made by the tests with the git CLI).

Covers what the pipeline calls: project lists (offset and keyset pagination), one project,
branches, the recursive tree (offset and keyset), archives (tar, tar.gz), raw blobs and raw
files, with GitLab's status codes, JSON error bodies, pagination and rate-limit headers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, unquote, urlencode

from gitlab_es_pipeline_tests.standins.hooks import Hooks
from gitlab_es_pipeline_tests.standins.http import Request, Response, StandInServer

API = "/api/v4"
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20
TOTALS_OMITTED_ABOVE = 10_000


def git(repo: str, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", "-C", repo, *args], input=input, capture_output=True, check=True
    ).stdout


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_moves = itertools.count()


@dataclass
class StandInProject:
    id: int
    path_with_namespace: str
    repo: str  # a bare or non-bare git repository on disk
    archived: bool = False
    visibility: str = "private"
    default_branch_name: str = "main"
    last_activity_at: str = field(default_factory=_now_iso)
    created_at: str = field(default_factory=_now_iso)
    # Paths it left (renamed or moved), with when: GitLab keeps a redirect route for each, and
    # its API answers an old path with the project (find_by_full_path, follow_redirects).
    former_paths: dict[str, int] = field(default_factory=dict)
    moved_at: float = 0.0  # time.time() of its last move (0: never)

    def __setattr__(self, name: str, value: Any) -> None:
        old = self.__dict__.get(name)
        if name == "path_with_namespace" and old is not None and old != value:
            self.former_paths[old.lower()] = next(_moves)
            self.former_paths.pop(value.lower(), None)
            self.__dict__["moved_at"] = time.time()
        super().__setattr__(name, value)

    def record_push(self, throttle_seconds: float = 3600) -> None:
        """What a push does to last_activity_at: GitLab updates it at most once an hour."""
        now = datetime.now(timezone.utc)
        if (now - _instant(self.last_activity_at)).total_seconds() >= throttle_seconds:
            self.last_activity_at = _now_iso()

    @property
    def namespace(self) -> str:
        return self.path_with_namespace.rpartition("/")[0]

    def head(self, branch: str | None = None) -> str | None:
        try:
            out = git(
                self.repo,
                "rev-parse",
                "--verify",
                "-q",
                f"refs/heads/{branch or self.default_branch_name}",
            )
        except subprocess.CalledProcessError:
            return None
        return out.decode().strip() or None

    @property
    def empty_repo(self) -> bool:
        return not git(self.repo, "for-each-ref", "refs/heads").strip()

    def as_json(self, base_url: str) -> dict[str, Any]:
        name = self.path_with_namespace.rpartition("/")[2]
        empty = self.empty_repo
        return {
            "id": self.id,
            "name": name,
            "path": name,
            "path_with_namespace": self.path_with_namespace,
            "name_with_namespace": self.path_with_namespace.replace("/", " / "),
            "default_branch": None if empty else self.default_branch_name,
            "web_url": f"{base_url}/{self.path_with_namespace}",
            "http_url_to_repo": f"{base_url}/{self.path_with_namespace}.git",
            "visibility": self.visibility,
            "archived": self.archived,
            "empty_repo": empty,
            "created_at": self.created_at,
            "last_activity_at": self.last_activity_at,
            "namespace": {
                "full_path": self.namespace,
                "kind": "group",
                "path": self.namespace.rpartition("/")[2],
            },
        }


@dataclass
class RecordedRequest:
    method: str
    path: str  # decoded, without /api/v4
    query: dict[str, str]
    status: int
    raw_path: str = ""  # as sent, URL-encoded
    at: float = 0.0  # time.monotonic() when it arrived


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "t", "yes", "y", "on")


class GitLabStandIn(StandInServer):
    def __init__(self, token: str = "glpat-stand-in-token") -> None:
        super().__init__()
        self.token = token
        self.projects: dict[int, StandInProject] = {}
        self.requests: list[RecordedRequest] = []
        self.rate_limit = 2000
        self.compare_max_files = 1000  # GitLab's default diff limit
        # Faults: a tree listing that ends after this many entries, without an error; archives
        # with LFS objects in place of their pointers whatever include_lfs_blobs says.
        self.tree_entries_served: int | None = None
        self.archive_always_includes_lfs_blobs = False
        self.rate_window_seconds = 60
        self._window_start = time.time()
        self._window_count = 0
        self._lock = threading.Lock()
        self._next_id = 1
        # Fault injection: each callable may return a Response to send instead of the real one.
        self.faults: list[Callable[[Request, str], Response | None]] = []
        self.hooks = Hooks()  # registered through the API, delivered when a test says so
        self._tree_cache: dict[
            tuple[str, str, str, bool], tuple[list[dict[str, str]], dict[str, int]]
        ] = {}

    # -- test API ---------------------------------------------------------------------------
    def add_project(self, path_with_namespace: str, repo: str, **attrs: Any) -> StandInProject:
        with self._lock:
            project = StandInProject(self._next_id, path_with_namespace, repo, **attrs)
            self.projects[project.id] = project
            self._next_id += 1
        return project

    def project(self, path_with_namespace: str) -> StandInProject:
        """A project added before, by its path (tests change its attributes)."""
        return next(
            p for p in self.projects.values() if p.path_with_namespace == path_with_namespace
        )

    def requests_of_kind(self, kind: str) -> list[RecordedRequest]:
        from gitlab_es_pipeline.clients.gitlab import request_kind

        return [r for r in self.requests if request_kind(r.raw_path) == kind]

    # -- plumbing ---------------------------------------------------------------------------
    def _rate_headers(self) -> tuple[dict[str, str], bool]:
        with self._lock:
            now = time.time()
            if now - self._window_start >= self.rate_window_seconds:
                self._window_start, self._window_count = now, 0
            self._window_count += 1
            reset = int(self._window_start + self.rate_window_seconds)
            over = self._window_count > self.rate_limit
            headers = {
                "RateLimit-Limit": str(self.rate_limit),
                "RateLimit-Observed": str(self._window_count),
                "RateLimit-Remaining": str(max(0, self.rate_limit - self._window_count)),
                "RateLimit-Reset": str(reset),
                "RateLimit-ResetTime": formatdate(reset, usegmt=True),
            }
            if over:
                headers["Retry-After"] = str(max(1, reset - int(now)))
        return headers, over

    def handle(self, request: Request) -> Response:
        path = request.raw_path
        if path == "/__standin/requests":  # for benchmarks in another process
            from gitlab_es_pipeline.clients.gitlab import request_kind

            with self._lock:
                counts: dict[str, int] = {}
                for r in self.requests:
                    kind = request_kind(r.raw_path)
                    counts[kind] = counts.get(kind, 0) + 1
                if request.method == "DELETE":
                    self.requests.clear()
            return Response(200, counts)
        arrived = time.monotonic()
        rate_headers, over = self._rate_headers()
        response = self._route(request, path, over)
        if not response.bare:
            response.headers.update(rate_headers)
        decoded = unquote(path[len(API) :]) if path.startswith(API) else path
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method, decoded, request.query, response.status, path, arrived
                )
            )
        return response

    def _route(self, request: Request, path: str, over_limit: bool) -> Response:
        token = request.headers.get("PRIVATE-TOKEN") or ""
        bearer = request.headers.get("Authorization") or ""
        if token != self.token and bearer != f"Bearer {self.token}":
            return Response(401, {"message": "401 Unauthorized"})
        if over_limit:
            return Response(429, b"Retry later", content_type="text/plain")
        for fault in list(self.faults):
            injected = fault(request, path)
            if injected is not None:
                return injected
        if path.startswith(API + "/") and path.endswith("/hooks"):
            return self._hooks_route(request, path[len(API) + 1 : -len("/hooks")])
        one_hook = re.match(rf"^{API}/(.*/)?hooks/(\d+)$", path)
        if one_hook and request.method == "DELETE":
            self.hooks.hooks = [h for h in self.hooks.hooks if h.id != int(one_hook[2])]
            return Response(204, b"")
        if one_hook and request.method == "PUT":
            hook = next((h for h in self.hooks.hooks if h.id == int(one_hook[2])), None)
            if hook is None:
                return Response(404, {"message": "404 Not found"})
            return Response(
                200, self.hooks.update(hook, {**(request.json() or {}), **request.query}).as_json()
            )
        if request.method not in ("GET", "HEAD") or not path.startswith(API + "/"):
            return Response(404, {"error": "404 Not Found"})
        parts = path[len(API) + 1 :].split("/")
        try:
            if parts == ["projects"]:
                return self._list_projects(request)
            if parts[0] == "groups" and len(parts) == 3 and parts[2] == "projects":
                return self._group_projects(request, unquote(parts[1]))
            if parts[0] == "projects" and len(parts) >= 2:
                project = self._find_project(unquote(parts[1]))
                if project is None:
                    return Response(404, {"message": "404 Project Not Found"})
                return self._project_route(request, project, parts[2:])
        except BadRequest as exc:
            return Response(400, {"error": str(exc)})
        return Response(404, {"error": "404 Not Found"})

    def _hooks_route(self, request: Request, owner: str) -> Response:
        """System hooks (/hooks), group and project webhooks (/groups|projects/:id/hooks)."""
        if owner == "":
            scope = "system"
        elif owner.startswith("groups/"):
            scope = f"group:{unquote(owner[len('groups/') :])}"
        elif owner.startswith("projects/"):
            project = self._find_project(unquote(owner[len("projects/") :]))
            if project is None:
                return Response(404, {"message": "404 Project Not Found"})
            scope = f"project:{project.id}"
        else:
            return Response(404, {"error": "404 Not Found"})
        if request.method == "POST":
            attrs = request.json() or {}
            attrs.update(request.query)
            if not attrs.get("url"):
                return Response(400, {"error": "url is missing"})
            return Response(201, self.hooks.add(scope, attrs).as_json())
        return Response(200, [h.as_json() for h in self.hooks.of(scope)])

    def push_hook(
        self, project: StandInProject, before: str, after: str, ref: str = ""
    ) -> list[int]:
        """GitLab's hooks for a push that a test made: what each hook answered."""
        return self.hooks.push(project, self.url, before, after, ref)

    def project_hook(
        self, project: StandInProject, event_name: str, old_path: str = ""
    ) -> list[int]:
        """GitLab's system hooks for a project event a test made."""
        return self.hooks.project_event(project, self.url, event_name, old_path)

    def _find_project(self, ident: str) -> StandInProject | None:
        if ident.isdigit():
            return self.projects.get(int(ident))
        for project in self.projects.values():
            if project.path_with_namespace.lower() == ident.lower():
                return project
        # No project has the path: the redirect route of the last project that left it.
        left = [p for p in self.projects.values() if ident.lower() in p.former_paths]
        return max(left, key=lambda p: p.former_paths[ident.lower()], default=None)

    def _project_route(
        self, request: Request, project: StandInProject, rest: list[str]
    ) -> Response:
        if not rest:
            return Response(200, project.as_json(self.url))
        if rest[0] != "repository" or len(rest) < 2:
            return Response(404, {"error": "404 Not Found"})
        what = rest[1]
        if what == "branches" and len(rest) == 3:
            return self._branch(project, unquote(rest[2]))
        if what == "tree" and len(rest) == 2:
            return self._tree(request, project)
        if what.startswith("archive") and len(rest) == 2:
            return self._archive(request, project, what)
        if what == "commits" and len(rest) == 2:
            return self._commits(request, project)
        if what == "blobs" and len(rest) == 4 and rest[3] == "raw":
            return self._raw_blob(project, rest[2])
        if what == "files" and len(rest) == 4 and rest[3] == "raw":
            return self._raw_file(request, project, unquote(rest[2]))
        if what == "files" and len(rest) == 3:
            return self._file(request, project, unquote(rest[2]))
        if what == "compare" and len(rest) == 2:
            return self._compare(request, project)
        return Response(404, {"error": "404 Not Found"})

    # -- pagination -------------------------------------------------------------------------
    def _link(self, path: str, query: dict[str, Any]) -> str:
        return f"{self.url}{API}{path}?{urlencode(query)}"

    def _offset_page(self, request: Request, path: str, items: list[Any]) -> Response:
        per_page = _per_page(request)
        page = max(1, int(request.query.get("page") or 1))
        total = len(items)
        pages = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page)}
        headers["X-Next-Page"] = str(page + 1) if page < pages else ""
        headers["X-Prev-Page"] = str(page - 1) if page > 1 else ""
        links = []
        base = {k: v for k, v in request.query.items() if k != "page"}
        if page < pages:
            links.append(f'<{self._link(path, {**base, "page": page + 1})}>; rel="next"')
        if page > 1:
            links.append(f'<{self._link(path, {**base, "page": page - 1})}>; rel="prev"')
        links.append(f'<{self._link(path, {**base, "page": 1})}>; rel="first"')
        if total <= TOTALS_OMITTED_ABOVE:
            headers["X-Total"] = str(total)
            headers["X-Total-Pages"] = str(pages)
            links.append(f'<{self._link(path, {**base, "page": pages})}>; rel="last"')
        headers["Link"] = ", ".join(links)
        return Response(200, chunk, headers)

    # -- projects -----------------------------------------------------------------------------
    def _filter_projects(
        self, request: Request, projects: list[StandInProject]
    ) -> list[StandInProject]:
        q = request.query
        if "archived" in q:
            projects = [p for p in projects if p.archived == _truthy(q["archived"])]
        if q.get("last_activity_after"):
            after = _instant(q["last_activity_after"])
            projects = [p for p in projects if _instant(p.last_activity_at) > after]
        if q.get("id_after"):
            projects = [p for p in projects if p.id > int(q["id_after"])]
        order_by = q.get("order_by", "created_at")
        if order_by not in ("id", "created_at", "name", "path", "updated_at", "last_activity_at"):
            raise BadRequest("order_by does not have a valid value")
        key = {
            "id": lambda p: p.id,
            "path": lambda p: p.path_with_namespace,
            "name": lambda p: p.path_with_namespace,
            "last_activity_at": lambda p: (_instant(p.last_activity_at), p.id),
        }.get(order_by, lambda p: (p.created_at, p.id))
        return sorted(projects, key=key, reverse=q.get("sort", "desc") == "desc")

    def _list_projects(self, request: Request) -> Response:
        projects = self._filter_projects(request, list(self.projects.values()))
        if request.query.get("pagination") == "keyset":
            if request.query.get("order_by") != "id":
                return Response(
                    405,
                    {"error": "Keyset pagination is not yet available for this type of request"},
                )
            per_page = _per_page(request)
            chunk = projects[:per_page]
            headers = {}
            if len(projects) > per_page:
                base = {k: v for k, v in request.query.items() if k != "id_after"}
                key = "id_before" if request.query.get("sort", "desc") == "desc" else "id_after"
                headers["Link"] = (
                    f'<{self._link("/projects", {**base, key: chunk[-1].id})}>; rel="next"'
                )
            return Response(200, [p.as_json(self.url) for p in chunk], headers)
        return self._offset_page(request, "/projects", [p.as_json(self.url) for p in projects])

    def _group_projects(self, request: Request, group: str) -> Response:
        group_key = group.lower()
        known = {ns.lower() for p in self.projects.values() for ns in _namespaces(p.namespace)}
        if group_key not in known:
            return Response(404, {"message": "404 Group Not Found"})
        subgroups = _truthy(request.query.get("include_subgroups"))
        members = [
            p
            for p in self.projects.values()
            if p.namespace.lower() == group_key
            or (subgroups and p.namespace.lower().startswith(group_key + "/"))
        ]
        projects = self._filter_projects(request, members)
        return self._offset_page(
            request,
            f"/groups/{quote(group, safe='')}/projects",
            [p.as_json(self.url) for p in projects],
        )

    # -- repository -----------------------------------------------------------------------------
    def _resolve(self, project: StandInProject, ref: str | None) -> str | None:
        ref = ref or project.default_branch_name
        try:
            return (
                git(project.repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
                .decode()
                .strip()
            )
        except subprocess.CalledProcessError:
            return None

    def _branch(self, project: StandInProject, name: str) -> Response:
        sha = project.head(name)
        if sha is None:
            return Response(404, {"message": "404 Branch Not Found"})
        fields = (
            git(project.repo, "show", "-s", "--format=%s%x00%cI%x00%an", sha).decode().split("\x00")
        )
        return Response(
            200,
            {
                "name": name,
                "merged": False,
                "protected": False,
                "default": name == project.default_branch_name,
                "web_url": f"{self.url}/{project.path_with_namespace}/-/tree/{quote(name)}",
                "commit": {
                    "id": sha,
                    "short_id": sha[:8],
                    "title": fields[0],
                    "committed_date": fields[1].strip(),
                    "author_name": fields[2].strip(),
                },
            },
        )

    def _listed_tree(
        self, repo: str, sha: str, sub: str, recursive: bool
    ) -> tuple[list[dict[str, str]], dict[str, int]] | None:
        """A tree's entries in git's order, and each path's position; kept for the next page.

        GitLab pages from a listing it keeps too; listing the whole tree again for each page
        would make the stand-in, not the client, the cost of a large tree.
        """
        key = (repo, sha, sub, recursive)
        cached = self._tree_cache.get(key)
        if cached is not None:
            return cached
        args = ["ls-tree", "-z", "--full-tree", *(["-r", "-t"] if recursive else [])]
        args.append(f"{sha}:{sub}" if sub else sha)
        try:
            out = git(repo, *args)
        except subprocess.CalledProcessError:
            return None
        items = []
        for record in out.split(b"\x00"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, type_, obj = meta.decode().split()
            rel = raw_path.decode("utf-8", "surrogateescape")
            full = f"{sub}/{rel}" if sub else rel
            items.append(
                {
                    "id": obj,
                    "name": full.rpartition("/")[2],
                    "type": type_,
                    "path": full,
                    "mode": mode,
                }
            )
        listed = (items, {item["path"]: i for i, item in enumerate(items)})
        with self._lock:
            if len(self._tree_cache) >= 8:
                self._tree_cache.pop(next(iter(self._tree_cache)))
            self._tree_cache[key] = listed
        return listed

    def _tree(self, request: Request, project: StandInProject) -> Response:
        sha = self._resolve(project, request.query.get("ref"))
        if sha is None:
            return Response(404, {"message": "404 Tree Not Found"})
        recursive = _truthy(request.query.get("recursive"))
        sub = request.query.get("path", "").strip("/")
        listed = self._listed_tree(project.repo, sha, sub, recursive)
        if listed is None:
            return Response(404, {"message": "404 Tree Not Found"})
        items, position = listed
        if self.tree_entries_served is not None:
            items = items[: self.tree_entries_served]
        path = f"/projects/{project.id}/repository/tree"
        if request.query.get("pagination") == "keyset":
            per_page = _per_page(request)
            token = request.query.get("page_token")
            start = 0
            if token:
                last = json.loads(base64.urlsafe_b64decode(token))["file_name"]
                start = position[last] + 1 if last in position else len(items)
            chunk = items[start : start + per_page]
            headers = {}
            if start + per_page < len(items):
                next_token = base64.urlsafe_b64encode(
                    json.dumps({"file_name": chunk[-1]["path"]}).encode()
                ).decode()
                query = {
                    **{k: v for k, v in request.query.items() if k != "page_token"},
                    "id": project.id,
                    "page": 1,
                    "page_token": next_token,
                }
                headers["Link"] = f'<{self._link(path, query)}>; rel="next"'
            return Response(200, chunk, headers)
        return self._offset_page(request, path, items)

    def _archive(self, request: Request, project: StandInProject, what: str) -> Response:
        fmt = (
            what[len("archive.") :]
            if what.startswith("archive.")
            else request.query.get("format", "tar.gz")
        )
        if what not in ("archive", f"archive.{fmt}") or fmt not in ("tar", "tar.gz", "tgz"):
            return Response(404, {"error": "404 Not Found"})
        sha = self._resolve(project, request.query.get("sha"))
        if sha is None:
            return Response(404, {"message": "404 File Not Found"})
        name = project.path_with_namespace.rpartition("/")[2]
        prefix = f"{name}-{sha}-{sha}/"
        git_format = "tar" if fmt == "tar" else "tar.gz"
        # Gitaly runs `git archive`, so .gitattributes act as in GitLab; LFS objects replace
        # their pointers unless include_lfs_blobs=false (GitLab's default is true).
        lfs = self.archive_always_includes_lfs_blobs or _truthy(
            request.query.get("include_lfs_blobs", "true")
        )
        no_lfs = ("-c", "filter.lfs.smudge=", "-c", "filter.lfs.process=")
        proc = subprocess.Popen(
            [
                "git",
                "-C",
                project.repo,
                *(() if lfs else (*no_lfs, "-c", "filter.lfs.required=false")),
                "archive",
                f"--format={git_format}",
                f"--prefix={prefix}",
                sha,
            ],
            stdout=subprocess.PIPE,
        )

        def body() -> Iterator[bytes]:
            assert proc.stdout is not None
            try:
                while chunk := proc.stdout.read(1 << 16):
                    yield chunk
            finally:
                proc.stdout.close()
                proc.wait()

        return Response(
            200,
            content_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="{name}-{sha}.{fmt}"',
                "Content-Transfer-Encoding": "binary",
            },
            stream=body(),
        )

    def _commits(self, request: Request, project: StandInProject) -> Response:
        if project.empty_repo:
            return Response(
                200, [], {"X-Page": "1", "X-Per-Page": str(_per_page(request)), "X-Next-Page": ""}
            )
        sha = self._resolve(project, request.query.get("ref_name"))
        if sha is None:
            return Response(404, {"message": "404 Not Found"})
        out = git(project.repo, "log", "--format=%H%x00%s%x00%cI%x00%an", "-n", "200", sha).decode()
        commits = []
        for line in out.splitlines():
            commit, title, date, author = line.split("\x00")
            commits.append(
                {
                    "id": commit,
                    "short_id": commit[:8],
                    "title": title,
                    "committed_date": date,
                    "author_name": author,
                }
            )
        return self._offset_page(request, f"/projects/{project.id}/repository/commits", commits)

    def _file(self, request: Request, project: StandInProject, file_path: str) -> Response:
        if not request.query.get("ref"):
            return Response(400, {"error": "ref is missing"})
        sha = self._resolve(project, request.query.get("ref"))
        if sha is None:
            return Response(404, {"message": "404 Commit Not Found"})
        try:
            line = git(project.repo, "ls-tree", "-z", sha, "--", file_path).decode().rstrip("\x00")
            mode, type_, blob = line.partition("\t")[0].split()
            if type_ != "blob":
                raise ValueError(type_)
            data = git(project.repo, "cat-file", "blob", blob)
        except (subprocess.CalledProcessError, ValueError):
            return Response(404, {"message": "404 File Not Found"})
        return Response(
            200,
            {
                "file_name": file_path.rpartition("/")[2],
                "file_path": file_path,
                "size": len(data),
                "encoding": "base64",
                "content": base64.b64encode(data).decode(),
                "content_sha256": hashlib.sha256(data).hexdigest(),
                "ref": request.query["ref"],
                "blob_id": blob,
                "commit_id": sha,
                "last_commit_id": sha,
                "execute_filemode": mode == "100755",
            },
            # GitLab sends the metadata as headers too; a HEAD request gets only these.
            headers={
                "X-Gitlab-Blob-Id": blob,
                "X-Gitlab-Commit-Id": sha,
                "X-Gitlab-Content-Sha256": hashlib.sha256(data).hexdigest(),
                "X-Gitlab-Encoding": "base64",
                "X-Gitlab-File-Name": file_path.rpartition("/")[2],
                "X-Gitlab-File-Path": file_path,
                "X-Gitlab-Last-Commit-Id": sha,
                "X-Gitlab-Ref": request.query["ref"],
                "X-Gitlab-Size": str(len(data)),
                "X-Gitlab-Execute-Filemode": str(mode == "100755").lower(),
            },
        )

    def _compare(self, request: Request, project: StandInProject) -> Response:
        """Like GitLab: at most compare_max_files diffs; the rest is cut off, and
        compare_timeout says so."""
        base = self._resolve(project, request.query.get("from"))
        head = self._resolve(project, request.query.get("to"))
        if base is None or head is None:
            return Response(404, {"message": "404 Ref Not Found"})
        if not _truthy(request.query.get("straight")):
            base = git(project.repo, "merge-base", base, head).decode().strip()
        out = git(project.repo, "diff", "--raw", "-z", "-M", "--no-abbrev", base, head).decode(
            "utf-8", "surrogateescape"
        )
        fields = out.split("\x00")
        diffs, i = [], 0
        while i < len(fields) - 1:
            meta = fields[i].lstrip(":").split()
            status = meta[4][0]
            old_path = fields[i + 1]
            new_path = fields[i + 2] if status in "RC" else old_path
            i += 3 if status in "RC" else 2
            diffs.append(
                {
                    "old_path": old_path,
                    "new_path": new_path,
                    "a_mode": meta[0],
                    "b_mode": meta[1],
                    "new_file": status == "A",
                    "renamed_file": status == "R",
                    "deleted_file": status == "D",
                    "diff": "",
                }
            )
        commits = (
            git(project.repo, "log", "--format=%H%x00%s", f"{base}..{head}").decode().splitlines()
        )
        return Response(
            200,
            {
                "commit": {"id": head, "short_id": head[:8]},
                "commits": [
                    {"id": c.split("\x00")[0], "title": c.split("\x00")[1]} for c in commits
                ],
                "diffs": diffs[: self.compare_max_files],
                # A comparison over the diff limits comes back cut, flagged as GitLab flags it.
                "compare_timeout": len(diffs) > self.compare_max_files,
                "compare_same_ref": base == head,
                "web_url": f"{self.url}/{project.path_with_namespace}/-/compare/{base}...{head}",
            },
        )

    def _raw_blob(self, project: StandInProject, sha: str) -> Response:
        try:
            if git(project.repo, "cat-file", "-t", sha).strip() != b"blob":
                raise subprocess.CalledProcessError(1, "cat-file")
            data = git(project.repo, "cat-file", "blob", sha)
        except subprocess.CalledProcessError:
            return Response(404, {"message": "404 Blob Not Found"})
        return Response(200, data, content_type="text/plain; charset=utf-8")

    def _raw_file(self, request: Request, project: StandInProject, file_path: str) -> Response:
        sha = self._resolve(project, request.query.get("ref"))
        if sha is None:
            return Response(404, {"message": "404 Commit Not Found"})
        try:
            data = git(project.repo, "cat-file", "blob", f"{sha}:{file_path}")
        except subprocess.CalledProcessError:
            return Response(404, {"message": "404 File Not Found"})
        return Response(
            200,
            data,
            content_type="text/plain; charset=utf-8",
            headers={"X-Gitlab-File-Path": file_path, "X-Gitlab-Size": str(len(data))},
        )


class BadRequest(Exception):
    pass


def _per_page(request: Request) -> int:
    try:
        value = int(request.query.get("per_page") or DEFAULT_PER_PAGE)
    except ValueError:
        return DEFAULT_PER_PAGE
    return max(1, min(MAX_PER_PAGE, value))


def _namespaces(namespace: str) -> Iterator[str]:
    parts = namespace.split("/")
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])
