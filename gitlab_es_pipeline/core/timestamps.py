"""One way to write a moment: ISO 8601 in UTC, to the second, with a Z (what GitLab's API
takes for `last_activity_after` and what `status` shows)."""

from datetime import datetime, timezone


def iso_utc(seconds: float) -> str:
    """The moment `seconds` after the epoch, e.g. 2026-12-05T13:14:20Z."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
