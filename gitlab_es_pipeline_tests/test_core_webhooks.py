"""core/webhooks.py: what a delivery says, on GitLab's documented payload shapes."""

from __future__ import annotations

import json

import pytest

from gitlab_es_pipeline.core.webhooks import (
    ZERO_SHA,
    HookEvent,
    Kind,
    Malformed,
    coalesce,
    delivery_id,
    in_groups,
    parse,
)

A, B = "a" * 40, "b" * 40


def _body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def test_a_webhook_push_keeps_the_project_the_ref_and_the_commit_only() -> None:
    body = {
        "object_kind": "push",
        "event_name": "push",
        "before": A,
        "after": B,
        "ref": "refs/heads/main",
        "project_id": 15,
        "project": {"id": 99, "path_with_namespace": "forged/path", "default_branch": "x"},
    }
    assert parse(_body(body)) == [HookEvent(Kind.PUSH, 15, "push", "refs/heads/main", B)]


def test_a_branch_deletion_is_a_push_to_zeros() -> None:
    body = {"object_kind": "push", "project_id": 3, "ref": "refs/heads/main", "after": ZERO_SHA}
    events = parse(_body(body))
    assert events is not None and events[0].commit == ZERO_SHA


def test_a_repository_update_keeps_its_branch_changes_only() -> None:
    body = {
        "event_name": "repository_update",
        "project_id": 7,
        "changes": [
            {"before": A, "after": B, "ref": "refs/heads/main"},
            {"before": A, "after": A, "ref": "refs/tags/v1"},
        ],
    }
    assert parse(_body(body)) == [
        HookEvent(Kind.PUSH, 7, "repository_update", "refs/heads/main", B)
    ]
    only_tags = {**body, "changes": [body["changes"][1]]}  # type: ignore[index]
    assert parse(_body(only_tags)) is None


@pytest.mark.parametrize(
    "name",
    ["project_create", "project_destroy", "project_rename", "project_transfer", "project_update"],
)
def test_project_events_name_the_project(name: str) -> None:
    body = {"event_name": name, "project_id": 74, "path_with_namespace": "x/y"}
    assert parse(_body(body)) == [HookEvent(Kind.PROJECT, 74, name)]


@pytest.mark.parametrize(
    "body",
    [
        {"object_kind": "tag_push", "project_id": 1, "ref": "refs/tags/v1", "after": A},
        {"object_kind": "merge_request", "project": {"id": 1}},
        {"event_name": "user_create", "user_id": 5},
    ],
)
def test_events_without_use_are_none(body: dict) -> None:
    assert parse(_body(body)) is None


@pytest.mark.parametrize(
    "body",
    [
        b"{nope",
        b"\xff\xfe",
        b"[1, 2]",
        _body({"object_kind": "push", "project_id": "1", "ref": "refs/heads/m", "after": A}),
        _body({"object_kind": "push", "project_id": True, "ref": "refs/heads/m", "after": A}),
        _body({"object_kind": "push", "project_id": 0, "ref": "refs/heads/m", "after": A}),
        _body({"object_kind": "push", "project_id": 1, "ref": "main", "after": A}),
        _body({"object_kind": "push", "project_id": 1, "ref": "refs/heads/m", "after": "HEAD"}),
        _body({"event_name": "repository_update", "project_id": 1, "changes": "x"}),
        _body({"event_name": "project_create", "project_id": -4}),
    ],
)
def test_what_gitlab_would_not_send_is_malformed(body: bytes) -> None:
    with pytest.raises(Malformed):
        parse(body)


def test_coalesce_keeps_one_entry_per_project_the_last_push_of_a_ref_winning() -> None:
    events = [
        HookEvent(Kind.PUSH, 1, "push", "refs/heads/main", A),
        HookEvent(Kind.PUSH, 2, "push", "refs/heads/main", A),
        HookEvent(Kind.PUSH, 1, "push", "refs/heads/main", B),
        HookEvent(Kind.PROJECT, 1, "project_rename"),
        HookEvent(Kind.PUSH, 1, "push", "refs/heads/dev", A),
    ]
    news = coalesce(events)
    assert [n.project_id for n in news] == [1, 2]
    assert news[0].pushes == {"refs/heads/main": B, "refs/heads/dev": A}
    assert news[0].changes == {"project_rename"} and news[1].changes == set()


def test_groups_and_delivery_ids() -> None:
    assert in_groups("acme/tools/x", []) and in_groups("Acme/tools/x", ["acme"])
    assert in_groups("acme/tools/x", ["acme/tools/"]) and not in_groups("acmex/y", ["acme"])
    assert delivery_id({"idempotency-key": "k", "x-gitlab-event-uuid": "u"}) == "k"
    assert delivery_id({"x-gitlab-event-uuid": "u"}) == "u" and delivery_id({}) is None
