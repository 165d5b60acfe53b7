"""What the HEAD-commit sensor remembers between ticks, and when a project is worth a look.

GitLab updates a project's last_activity_at at most once an hour, so a push soon after
another may not move it. A project active within the last hour is therefore looked at again
every `recheck_seconds` while it stays in that window; a project whose last_activity_at
moved is looked at at once. Idle projects cost nothing. A repository whose run failed is
asked for again after a backoff (5 minutes, doubling up to 6 hours), with a new run key each
time: Dagster never launches a run key twice.
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass, field


@dataclass
class Want:
    """A repository the sensor asked for, until Dagster's storage records it indexed.

    A request can end without indexing: a batch left the repository to another run, a run was
    cancelled, failed or killed, Dagster skipped a run key it had seen. Each tick looks at the
    outstanding wants and asks again for those whose run ended without indexing the commit,
    under a new run key (`reasks`), so no run key ever hides a repository for good.
    """

    commit: str  # the commit asked for (its HEAD then)
    epoch: str  # the removal epoch then (a repository that came back is asked anew)
    run_key: str  # of the run asked for; "" while waiting for another run that holds it
    requested_at: float
    since: int  # the newest es_index record of the partition when asked (storage id)
    reasks: int = 0  # times asked again after a run ended without indexing it
    force: bool = False  # indexed again even at the same commit (its identity changed)


@dataclass
class SensorCursor:
    # partition -> (last_activity_at seen, unix time of the last HEAD lookup)
    checked: dict[str, tuple[str, float]] = field(default_factory=dict)
    # partition -> what was asked for it, until it is recorded indexed
    requested: dict[str, Want] = field(default_factory=dict)
    # (partition, commit, tree entries if known) requests over the per-tick cap, sent first
    # next tick
    pending: list[tuple[str, str, int | None]] = field(default_factory=list)
    # partition -> (commit whose run failed, failures so far, unix time of the last failure,
    # unix time from which it may be retried)
    retries: dict[str, tuple[str, int, float, float]] = field(default_factory=dict)
    # unix time up to which failed runs have been looked at
    failures_seen_until: float = 0.0
    # unix time of the last listing of recently active projects: the next lists from there
    # (less the activity window), however long the daemon was away
    listed_at: float = 0.0
    # partitions whose HEAD lookup failed: looked up again before anything else
    unsure: list[str] = field(default_factory=list)
    # storage id of the last file_manifest observation read (wants, batch outcomes)
    signals_after: int = 0
    # requests made again at a commit a run may already have had: each gets a run key of its
    # own (`!<n>`), since Dagster never launches a run key twice
    asks: int = 0
    # partitions of `pending` asked for even at their indexed commit (a want)
    forced: list[str] = field(default_factory=list)
    # storage id of the last hook event read (webhooks/heard.py)
    heard_after: int = 0
    # unix time of the last poll (the listing and the follow-ups); hook events between polls
    polled_at: float = 0.0
    # a hook said a project was destroyed, renamed, moved or left the scope: discovery asked
    # for as soon as none is in progress
    discover: bool = False

    def due(self, key: str, last_activity_at: str, now: float, recheck_seconds: float) -> bool:
        seen = self.checked.get(key)
        return seen is None or seen[0] != last_activity_at or now - seen[1] >= recheck_seconds

    def requested_commit(self, key: str, epoch: str) -> str | None:
        """The commit already requested for the partition in this epoch."""
        entry = self.requested.get(key)
        return entry.commit if entry is not None and entry.epoch == epoch else None

    def record_failure(
        self, key: str, commit: str, ended: float, backoff_seconds: float, cap_seconds: float
    ) -> None:
        """A run for the partition failed: a retry is due later, later each time it fails."""
        previous = self.retries.get(key)
        failures = 1
        if previous is not None and previous[0] == commit:
            if ended <= previous[2]:
                return  # seen already
            failures = previous[1] + 1
        wait = min(backoff_seconds * 2 ** (failures - 1), cap_seconds)
        self.retries[key] = (commit, failures, ended, ended + wait)

    def forget_failure(self, key: str, indexed_at: float) -> None:
        """The partition was indexed after its last failure: nothing to retry."""
        entry = self.retries.get(key)
        if entry is not None and indexed_at > entry[2]:
            del self.retries[key]

    def due_retries(self, now: float) -> list[tuple[str, str]]:
        return [(k, v[0]) for k, v in self.retries.items() if now >= v[3]]

    def attempt(self, key: str, commit: str, now: float) -> int:
        """The run key's attempt number for a request of the partition at this commit: that of
        the failed run until its retry is due (Dagster then skips it as a duplicate), one more
        from then on; 0 for a commit that has not failed."""
        entry = self.retries.get(key)
        if entry is None or entry[0] != commit:
            return 0
        return entry[1] if now >= entry[3] else entry[1] - 1

    def prune(self, live: set[str], now: float, window_seconds: float) -> None:
        """Forget what can no longer matter, so the cursor stays as small as the activity."""
        self.checked = {
            k: v for k, v in self.checked.items() if k in live and now - v[1] < window_seconds
        }
        self.requested = {k: v for k, v in self.requested.items() if k in live}
        self.pending = [p for p in self.pending if p[0] in live]
        self.retries = {k: v for k, v in self.retries.items() if k in live}
        self.unsure = [k for k in self.unsure if k in live]

    def to_json(self) -> str:
        return json.dumps(
            {
                "checked": {k: list(v) for k, v in self.checked.items()},
                "requested": {k: list(astuple(v)) for k, v in self.requested.items()},
                "pending": [list(p) for p in self.pending],
                "retries": {k: list(v) for k, v in self.retries.items()},
                "failures_seen_until": self.failures_seen_until,
                "listed_at": self.listed_at,
                "unsure": self.unsure,
                "signals_after": self.signals_after,
                "asks": self.asks,
                "forced": self.forced,
                "heard_after": self.heard_after,
                "polled_at": self.polled_at,
                "discover": self.discover,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> SensorCursor:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(
            checked={k: (v[0], float(v[1])) for k, v in raw.get("checked", {}).items()},
            requested={k: _want(v) for k, v in raw.get("requested", {}).items()},
            # Cursors written before sizes were kept have two fields: size unknown.
            pending=[(p[0], p[1], p[2] if len(p) > 2 else None) for p in raw.get("pending", [])],
            retries={
                k: (v[0], int(v[1]), float(v[2]), float(v[3]))
                for k, v in raw.get("retries", {}).items()
            },
            failures_seen_until=float(raw.get("failures_seen_until", 0.0)),
            listed_at=float(raw.get("listed_at", 0.0)),
            unsure=list(raw.get("unsure", [])),
            signals_after=int(raw.get("signals_after", 0)),
            asks=int(raw.get("asks", 0)),
            forced=list(raw.get("forced", [])),
            heard_after=int(raw.get("heard_after", 0)),
            polled_at=float(raw.get("polled_at", 0.0)),
            discover=bool(raw.get("discover", False)),
        )


def _want(raw: list) -> Want:
    """Cursors written before wants were kept held (commit, epoch) of never-indexed
    partitions only: such a want is looked at again at once."""
    if len(raw) == 2:
        return Want(raw[0], raw[1], "", 0.0, 0)
    commit, epoch, run_key, requested_at, since, reasks, force = raw
    return Want(commit, epoch, run_key, float(requested_at), int(since), int(reasks), bool(force))


def dedupe(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One request per partition, the newest commit winning, first-come order kept."""
    latest: dict[str, str] = {}
    for key, commit in requests:
        latest[key] = commit
    order = list(dict.fromkeys(key for key, _ in requests))
    return [(key, latest[key]) for key in order]
