"""Abuse resistance: message rate, connection admission, content moderation.

Limits are enforced through coordination ports, so they hold cluster-wide with Redis and per
process otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ContentRejected, RateLimited, TooManyConnections
from .events import RateWarning
from .models import Identity
from .ports import ConnectionRegistry, RateDecision, RateLimits


def user_name(identity: Identity) -> str:
    # Length-prefixed so that no tenant/user pair can collide with another one.
    return f"u:{len(identity.tenant_id)}:{identity.tenant_id}:{identity.user_id}"


@dataclass(frozen=True)
class RatePolicy:
    messages: int = 20
    window_seconds: float = 60.0
    warn_ratio: float = 0.8


class RateLimiter:
    def __init__(self, rates: RateLimits, policy: RatePolicy) -> None:
        self._rates = rates
        self.policy = policy

    async def hit(self, identity: Identity) -> RateDecision:
        """Count one message of this user; raise :class:`RateLimited` past the limit."""
        decision = await self._rates.hit(
            user_name(identity), self.policy.messages, self.policy.window_seconds
        )
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after))
            raise RateLimited(
                f"At most {self.policy.messages} messages per "
                f"{self.policy.window_seconds:g} s: retry in {retry_after} s",
                retryAfter=retry_after,
            )
        return decision

    def warning(self, decision: RateDecision) -> RateWarning | None:
        """The soft warning to send from 80% of the limit, or None."""
        if decision.count < math.ceil(self.policy.messages * self.policy.warn_ratio):
            return None
        return RateWarning(
            limit=self.policy.messages,
            remaining=max(0, self.policy.messages - decision.count),
            window_seconds=self.policy.window_seconds,
        )


class Moderation:
    """A blocklist: a message containing a listed word or phrase (case-insensitive, whole
    words) is rejected before it is stored."""

    def __init__(self, terms: Iterable[str] = ()) -> None:
        cleaned = sorted({t.strip().casefold() for t in terms if t.strip()}, key=len, reverse=True)
        self.size = len(cleaned)
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, cleaned)) + r")(?!\w)")
            if cleaned
            else None
        )

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Moderation:
        """One term per line; blank lines and ``#`` comments are ignored."""
        return cls(line for line in lines if not line.lstrip().startswith("#"))

    def check(self, content: str) -> None:
        if self._pattern is not None and self._pattern.search(content.casefold()):
            raise ContentRejected()


@dataclass(frozen=True)
class ConnectionPolicy:
    max_per_instance: int = 10_000
    max_per_user: int = 20
    presence_ttl_seconds: float = 90.0


class Admission:
    """Admits connections within the per-instance and per-user (cluster-wide) limits."""

    def __init__(self, registry: ConnectionRegistry, policy: ConnectionPolicy) -> None:
        self._registry = registry
        self.policy = policy

    async def admit(self, identity: Identity, connection_id: str, local_count: int) -> None:
        if local_count >= self.policy.max_per_instance:
            raise TooManyConnections("This server is at its connection limit, retry shortly")
        admitted = await self._registry.add(
            user_name(identity),
            connection_id,
            self.policy.max_per_user,
            self.policy.presence_ttl_seconds,
        )
        if not admitted:
            raise TooManyConnections(
                f"At most {self.policy.max_per_user} connections per user", retryable=False
            )

    async def release(self, identity: Identity, connection_id: str) -> None:
        await self._registry.remove(user_name(identity), connection_id)

    async def keep_alive(self, connections: Sequence[tuple[Identity, str]]) -> None:
        entries = [(user_name(identity), cid) for identity, cid in connections]
        if entries:
            await self._registry.refresh(entries, self.policy.presence_ttl_seconds)
