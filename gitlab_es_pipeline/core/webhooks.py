"""What a GitLab hook delivery says, reduced to what the pipeline may trust.

GitLab posts project and group webhooks (`X-Gitlab-Event: Push Hook`) and system hooks
(`System Hook`: `repository_update`, `push`, `project_create`, `project_destroy`,
`project_rename`, `project_transfer`, `project_update`). Of a payload only the project id,
the ref and the commit are kept: the pipeline reads everything else from the API, as always,
so a forged or stale payload can at worst make it look at a project sooner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

ZERO_SHA = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

# Events that say a project itself changed (created, gone, renamed, moved, re-scoped).
PROJECT_EVENTS = frozenset(
    {"project_create", "project_destroy", "project_rename", "project_transfer", "project_update"}
)


class Kind(str, Enum):
    PUSH = "push"  # a ref moved: wanted at the commit if the ref is the default branch
    PROJECT = "project"  # the project changed: looked up again (discovery of that one)


@dataclass(frozen=True)
class HookEvent:
    """One delivery's meaning: the project, and for a push the ref and the commit after it."""

    kind: Kind
    project_id: int
    event: str  # GitLab's name of it: push, repository_update, project_rename, ...
    ref: str = ""  # refs/heads/<branch> of a push
    commit: str = ""  # the branch's commit after the push; ZERO_SHA when it was deleted

    def as_metadata(self) -> dict[str, str | int]:
        return {
            "kind": self.kind.value,
            "project_id": self.project_id,
            "event": self.event,
            "ref": self.ref,
            "commit": self.commit,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> HookEvent:
        return cls(
            kind=Kind(str(meta["kind"])),
            project_id=int(meta["project_id"]),
            event=str(meta.get("event", "")),
            ref=str(meta.get("ref", "")),
            commit=str(meta.get("commit", "")),
        )


class Malformed(ValueError):
    """Not a hook body GitLab would send: answered 400."""


def parse(body: bytes) -> list[HookEvent] | None:
    """The events of one delivery; None for an event the pipeline has no use for (answered
    202 and counted, so GitLab keeps the hook enabled)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Malformed("not a JSON object")
    name = payload.get("event_name") or payload.get("object_kind")
    if name == "push":  # a webhook's, or a system hook's (same shape); tags do not count
        ref, after = payload.get("ref"), payload.get("after")
        return [_push(name, payload.get("project_id"), ref, after)]
    if name == "repository_update":
        project_id = payload.get("project_id")
        changes = payload.get("changes")
        if not isinstance(changes, list):
            raise Malformed("repository_update without a list of changes")
        events = [
            _push(name, project_id, c.get("ref"), c.get("after"))
            for c in changes
            if isinstance(c, dict) and str(c.get("ref", "")).startswith("refs/heads/")
        ]
        return events or None
    if name in PROJECT_EVENTS:
        return [HookEvent(Kind.PROJECT, _project_id(payload.get("project_id")), str(name))]
    return None


def _project_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Malformed(f"project_id {value!r} is not a project id")
    return value


def _push(name: str, project_id: object, ref: object, after: object) -> HookEvent:
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise Malformed(f"ref {ref!r} is not a ref")
    if not isinstance(after, str) or not _SHA.match(after):
        raise Malformed(f"after {after!r} is not a commit id")
    return HookEvent(Kind.PUSH, _project_id(project_id), name, ref, after)


def delivery_id(headers: dict[str, str]) -> str | None:
    """The same value on GitLab's retry of one delivery: duplicates are recorded once."""
    for name in ("idempotency-key", "x-gitlab-event-uuid"):
        value = headers.get(name)
        if value:
            return value[:200]
    return None


@dataclass
class ProjectNews:
    """What the hooks said of one project since the last tick: a burst is one look."""

    project_id: int
    pushes: dict[str, str] = field(default_factory=dict)  # ref -> the latest commit heard
    changes: set[str] = field(default_factory=set)  # project events heard


def coalesce(events: Iterable[HookEvent]) -> list[ProjectNews]:
    """Per project, in the order first heard; a ref's later push wins."""
    news: dict[int, ProjectNews] = {}
    for event in events:
        item = news.setdefault(event.project_id, ProjectNews(event.project_id))
        if event.kind is Kind.PUSH:
            item.pushes[event.ref] = event.commit
        else:
            item.changes.add(event.event)
    return list(news.values())


def in_groups(path_with_namespace: str, groups: Sequence[str]) -> bool:
    """Whether discovery would list the project: every project without GITLAB_GROUPS, else
    those in the groups or their subgroups."""
    path = path_with_namespace.lower()
    return not groups or any(path.startswith(g.lower().strip("/") + "/") for g in groups)
