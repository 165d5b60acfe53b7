"""The GitLab stand-in's hooks: registered through the API as python-gitlab registers them,
and delivered as GitLab delivers them (its payload shapes, headers and secret), when a test
says that something happened in GitLab (a push, a project created, renamed, ...).

Shapes follow GitLab's documentation of webhook events (Push Hook) and system hooks
(`repository_update`, `push`, `project_create`, `project_destroy`, `project_rename`,
`project_transfer`, `project_update`).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gitlab_es_pipeline_tests.standins.gitlab import StandInProject

ZERO = "0" * 40


@dataclass
class Hook:
    id: int
    scope: str  # "system", "group:<path>", "project:<id>"
    url: str
    token: str = ""
    push_events: bool = True
    repository_update_events: bool = False
    enable_ssl_verification: bool = True
    deliveries: list[tuple[float, int]] = field(default_factory=list)  # (time, status)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "push_events": self.push_events,
            "repository_update_events": self.repository_update_events,
            "enable_ssl_verification": self.enable_ssl_verification,
            "created_at": "2026-01-01T00:00:00Z",
        }


class Hooks:
    """Registered hooks and their deliveries."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self._lock = threading.Lock()
        self.enabled = True  # False: GitLab delivers nothing (hooks disabled, or lost)

    def add(self, scope: str, attrs: dict[str, Any]) -> Hook:
        with self._lock:
            hook = Hook(
                id=max((h.id for h in self.hooks), default=0) + 1,
                scope=scope,
                url=str(attrs["url"]),
                token=str(attrs.get("token") or ""),
                push_events=_flag(attrs.get("push_events"), True),
                repository_update_events=_flag(attrs.get("repository_update_events"), False),
                enable_ssl_verification=_flag(attrs.get("enable_ssl_verification"), True),
            )
            self.hooks.append(hook)
        return hook

    def update(self, hook: Hook, attrs: dict[str, Any]) -> Hook:
        with self._lock:
            hook.url = str(attrs.get("url", hook.url))
            hook.token = str(attrs.get("token", hook.token) or "")
            hook.push_events = _flag(attrs.get("push_events"), hook.push_events)
            hook.repository_update_events = _flag(
                attrs.get("repository_update_events"), hook.repository_update_events
            )
        return hook

    def of(self, scope: str) -> list[Hook]:
        return [h for h in self.hooks if h.scope == scope]

    def _targets(self, project: StandInProject, system_event: str) -> list[tuple[Hook, str]]:
        """(hook, X-Gitlab-Event) for a push: project and group webhooks, and system hooks
        that asked for pushes (`Push Hook`... as `System Hook`) or repository updates."""
        out = []
        namespace = project.namespace.lower()
        for hook in self.hooks:
            if system_event != "push" and hook.scope != "system":
                continue  # webhooks get a push once, as a Push Hook
            if hook.scope == f"project:{project.id}" and hook.push_events:
                out.append((hook, "Push Hook"))
            elif hook.scope.startswith("group:") and hook.push_events:
                group = hook.scope[len("group:") :].lower()
                if namespace == group or namespace.startswith(group + "/"):
                    out.append((hook, "Push Hook"))
            elif hook.scope == "system" and system_event == "push" and hook.push_events:
                out.append((hook, "System Hook"))
            elif hook.scope == "system" and system_event == "repository_update":
                out.extend([(hook, "System Hook")] * hook.repository_update_events)
        return out

    def push(
        self, project: StandInProject, base_url: str, before: str, after: str, ref: str = ""
    ) -> list[int]:
        """A push of `ref` (the default branch unless given): what each hook answered."""
        ref = ref or f"refs/heads/{project.default_branch_name}"
        statuses = []
        for event in ("push", "repository_update"):
            for hook, header in self._targets(project, event):
                if event == "repository_update":
                    body = repository_update_payload(project, base_url, before, after, ref)
                else:
                    body = push_payload(project, base_url, before, after, ref)
                statuses.append(self.deliver(hook, header, body))
        return statuses

    def project_event(
        self, project: StandInProject, base_url: str, event_name: str, old_path: str = ""
    ) -> list[int]:
        """A system hook's project event: what each system hook answered."""
        body = project_payload(project, base_url, event_name, old_path)
        return [self.deliver(h, "System Hook", body) for h in self.of("system")]

    def deliver(
        self,
        hook: Hook,
        event_header: str,
        body: dict[str, Any],
        delivery: str | None = None,
        token: str | None = None,
    ) -> int:
        """One POST, as GitLab's WebHookService sends it; the HTTP status (0: no answer)."""
        if not self.enabled:
            return 0
        data = json.dumps(body).encode()
        delivery = delivery or str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitLab/18.6.0",
            "X-Gitlab-Event": event_header,
            "X-Gitlab-Webhook-UUID": f"hook-{hook.id}",
            "X-Gitlab-Event-UUID": delivery,
            "Idempotency-Key": delivery,
            "X-Gitlab-Instance": "http://gitlab.standin",
        }
        secret = hook.token if token is None else token
        if secret:
            headers["X-Gitlab-Token"] = secret
        request = urllib.request.Request(hook.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # GitLab's 10 s
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            status = 0
        hook.deliveries.append((time.time(), status))
        return status


def _flag(value: object, default: bool) -> bool:
    if value is None:
        return default
    return str(value).lower() in ("true", "1", "yes")


def _project_json(project: StandInProject, base_url: str) -> dict[str, Any]:
    name = project.path_with_namespace.rpartition("/")[2]
    return {
        "id": project.id,
        "name": name,
        "path_with_namespace": project.path_with_namespace,
        "namespace": project.namespace,
        "default_branch": project.default_branch_name,
        "web_url": f"{base_url}/{project.path_with_namespace}",
        "visibility_level": {"private": 0, "internal": 10, "public": 20}.get(project.visibility, 0),
    }


def push_payload(
    project: StandInProject, base_url: str, before: str, after: str, ref: str
) -> dict[str, Any]:
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": before,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if after == ZERO else after,
        "user_id": 1,
        "user_name": "Administrator",
        "user_username": "root",
        "project_id": project.id,
        "project": _project_json(project, base_url),
        "commits": [] if after == ZERO else [{"id": after, "message": "a change"}],
        "total_commits_count": 0 if after == ZERO else 1,
        "repository": {"name": project.path_with_namespace.rpartition("/")[2]},
    }


def repository_update_payload(
    project: StandInProject, base_url: str, before: str, after: str, ref: str
) -> dict[str, Any]:
    return {
        "event_name": "repository_update",
        "user_id": 1,
        "user_name": "Administrator",
        "user_email": "admin@example.com",
        "user_avatar": "",
        "project_id": project.id,
        "project": _project_json(project, base_url),
        "changes": [{"before": before, "after": after, "ref": ref}],
        "refs": [ref],
    }


def project_payload(
    project: StandInProject, base_url: str, event_name: str, old_path: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "event_name": event_name,
        "name": project.path_with_namespace.rpartition("/")[2],
        "owner_email": "admin@example.com",
        "owner_name": "Administrator",
        "owners": [{"name": "Administrator", "email": "admin@example.com"}],
        "path": project.path_with_namespace.rpartition("/")[2],
        "path_with_namespace": project.path_with_namespace,
        "project_id": project.id,
        "project_namespace_id": 1,
        "project_visibility": project.visibility,
    }
    if old_path:
        body["old_path_with_namespace"] = old_path
    return body
