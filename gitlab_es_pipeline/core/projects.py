"""A GitLab project as the pipeline sees it: what discovery stores and the partitions name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

PROJECT_SCHEMA = pa.schema(
    [
        pa.field("project_id", pa.int64(), nullable=False),
        pa.field("path_with_namespace", pa.string(), nullable=False),
        pa.field("default_branch", pa.string()),
        pa.field("web_url", pa.string()),
        pa.field("visibility", pa.string()),
        pa.field("last_activity_at", pa.string()),
    ]
)


@dataclass(frozen=True)
class Project:
    project_id: int
    path_with_namespace: str
    default_branch: str | None
    web_url: str
    visibility: str | None
    last_activity_at: str | None

    @classmethod
    def from_api(cls, attrs: Mapping[str, Any]) -> Project:
        return cls(
            project_id=int(attrs["id"]),
            path_with_namespace=attrs["path_with_namespace"],
            default_branch=attrs.get("default_branch"),
            web_url=attrs.get("web_url") or "",
            visibility=attrs.get("visibility"),
            last_activity_at=attrs.get("last_activity_at"),
        )

    @property
    def partition_key(self) -> str:
        return self.path_with_namespace


def is_indexable(attrs: Mapping[str, Any]) -> bool:
    """Archived and empty projects have nothing to keep in step; neither has one with no branch."""
    return (
        not attrs.get("archived", False)
        and not attrs.get("empty_repo", False)
        and bool(attrs.get("default_branch"))
    )


def projects_table(projects: list[Project]) -> pa.Table:
    rows = sorted((asdict(p) for p in projects), key=lambda r: r["project_id"])
    return pa.Table.from_pylist(rows, schema=PROJECT_SCHEMA)
