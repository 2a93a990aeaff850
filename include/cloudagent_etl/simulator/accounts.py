"""A simulated CloudAgent account: credentials, campaigns, data seed and time zone.

Kept apart from the server so that test fixtures and the CLI can describe accounts without importing the
web framework.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Asia/Kolkata"
#: The seed of the one account given as ``user``/``api_key``/``campaigns`` (``--user`` ...) by default.
DEFAULT_SEED = 42


def seed_for(user: str) -> int:
    """The data seed of an account that names none: derived from its user name, the same in every process."""
    return int.from_bytes(hashlib.sha256(f"cloudagent-simulator|{user}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class SimulatedAccount:
    """One CloudAgent account: its credentials, campaigns, data seed and time zone.

    ``seed`` None means :func:`seed_for` the user name, so accounts differ without being told to.
    ``timezone`` (an IANA name) is the zone of its fromDate/toDate and of every time in its records.
    Error messages name the user, never the key.
    """

    user: str
    api_key: str = field(repr=False)
    campaigns: tuple[str, ...]
    seed: int | None = None
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        if not self.user.strip() or not self.api_key.strip():
            raise ValueError("the user and the api key must not be empty")
        if isinstance(self.campaigns, str):
            raise ValueError(f"account {self.user!r}: campaigns must be a sequence of names, not one string")
        object.__setattr__(self, "campaigns", tuple(self.campaigns))
        if not self.campaigns:
            raise ValueError(f"account {self.user!r}: at least one campaign is needed")
        if not all(isinstance(name, str) and name.strip() for name in self.campaigns):
            raise ValueError(f"account {self.user!r}: a campaign name is empty")
        if len(set(self.campaigns)) != len(self.campaigns):
            raise ValueError(f"account {self.user!r}: a campaign is named twice")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"account {self.user!r}: unknown time zone {self.timezone!r}") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def data_seed(self) -> int:
        """The seed its records are generated from."""
        return seed_for(self.user) if self.seed is None else self.seed
