"""How many repositories one discovery may remove before a person must confirm.

A token that loses access to a group, a group renamed or moved, an instance in maintenance that
answers an empty or partial page: to discovery each looks like projects that are gone, and
removing them deletes their documents. Real departures come a few at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIRM_CONFIG = "ops: {repositories: {config: {allow_mass_removal: true}}}"


@dataclass(frozen=True)
class RemovalGuard:
    max_share: float  # of the partitions, at once
    small_fleet_count: int  # allowed however small the fleet (10 % of 15 is 1)

    def limit(self, partitions: int) -> int:
        return max(int(partitions * self.max_share), self.small_fleet_count)

    def refusal(self, partitions: int, removing: list[str]) -> str | None:
        """Why these removals need a person's confirmation, or None when they do not."""
        limit = self.limit(partitions)
        if len(removing) <= limit:
            return None
        shown = ", ".join(removing[:10]) + (", ..." if len(removing) > 10 else "")
        return (
            f"discovery would remove {len(removing)} of {partitions} repositories "
            f"({len(removing) / max(partitions, 1):.0%}), more than the {limit} it removes "
            f"without confirmation ({self.max_share:.0%} of the partitions, at least "
            f"{self.small_fleet_count}): {shown}. Nothing was removed. A token that lost "
            "access to a group, a group renamed or moved, or an instance answering partial "
            "pages looks like this. If they are really gone, materialize `repositories` with "
            f"the run config `{CONFIRM_CONFIG}`."
        )
