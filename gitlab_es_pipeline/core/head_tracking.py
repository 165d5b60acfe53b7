"""What the HEAD-commit sensor remembers between ticks, and when a project is worth a look.

GitLab updates a project's last_activity_at at most once an hour, so a push soon after
another may not move it. A project active within the last hour is therefore looked at again
every `recheck_seconds` while it stays in that window; a project whose last_activity_at
moved is looked at at once. Idle projects cost nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class TrackerCursor:
    # partition -> (last_activity_at seen, unix time of the last HEAD lookup)
    checked: dict[str, tuple[str, float]] = field(default_factory=dict)
    # never-indexed partition -> (commit a run was requested for, removal epoch then)
    requested: dict[str, tuple[str, str]] = field(default_factory=dict)
    # (partition, commit) run requests over the per-tick cap, sent first next tick
    pending: list[tuple[str, str]] = field(default_factory=list)

    def due(self, key: str, last_activity_at: str, now: float, recheck_seconds: float) -> bool:
        seen = self.checked.get(key)
        return seen is None or seen[0] != last_activity_at or now - seen[1] >= recheck_seconds

    def requested_commit(self, key: str, epoch: str) -> str | None:
        """The commit already requested for a never-indexed partition in this epoch."""
        entry = self.requested.get(key)
        return entry[0] if entry is not None and entry[1] == epoch else None

    def prune(self, live: set[str], now: float, window_seconds: float) -> None:
        """Forget what can no longer matter, so the cursor stays as small as the activity."""
        self.checked = {
            k: v for k, v in self.checked.items() if k in live and now - v[1] < window_seconds
        }
        self.requested = {k: v for k, v in self.requested.items() if k in live}
        self.pending = [(k, c) for k, c in self.pending if k in live]

    def to_json(self) -> str:
        return json.dumps(
            {
                "checked": {k: list(v) for k, v in self.checked.items()},
                "requested": {k: list(v) for k, v in self.requested.items()},
                "pending": [list(p) for p in self.pending],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> TrackerCursor:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(
            checked={k: (v[0], float(v[1])) for k, v in raw.get("checked", {}).items()},
            requested={k: (v[0], v[1]) for k, v in raw.get("requested", {}).items()},
            pending=[(k, c) for k, c in raw.get("pending", [])],
        )


def dedupe(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One request per partition, the newest commit winning, first-come order kept."""
    latest: dict[str, str] = {}
    for key, commit in requests:
        latest[key] = commit
    order = list(dict.fromkeys(key for key, _ in requests))
    return [(key, latest[key]) for key in order]
