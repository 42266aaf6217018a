"""Fences: one number per consultation that only grows, carried in every reply-lock token.

A token is ``"<fence>:<random>"``. Each acquisition of a consultation's reply lock takes a fence
larger than any earlier one: the next integer, and never less than the clock in milliseconds,
so a Redis that lost its data (or a process that restarted) never hands out a smaller one.
Everything written for a reply (buffer appends, restores and claims, lock renewals) shows its
token, and a token whose fence is below the newest is refused: an instance that was paused
while another took its reply over can never write for it again.
"""

from __future__ import annotations

import time
import uuid

# Kept on Redis beside the lock, in the consultation's slot; long enough to outlive any reply.
FENCE_TTL_MS = 24 * 3600 * 1000

# Lua helpers shared by the scripts that check fences (KEYS[n] holds the fence counter).
LUA_FENCE_OF = """
local function fence_of(token)
  return tonumber(string.match(token, '^(%d+):')) or 0
end
local function current_fence(key)
  return tonumber(redis.call('GET', key) or '0') or 0
end
-- The next fence of a name (kept under key for ttl ms): one more than the last, and never
-- less than the clock in ms, so a Redis that lost its data never hands out a smaller one.
local function next_fence(key, ttl)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local fence = redis.call('INCR', key)
  if fence < now then
    fence = now
    redis.call('SET', key, fence)
  end
  redis.call('PEXPIRE', key, ttl)
  return fence
end
"""


def fence_of(token: str) -> int:
    """The fence a token carries (0 for a token without one)."""
    head, separator, _ = token.partition(":")
    return int(head) if separator and head.isdigit() else 0


def new_token(fence: int) -> str:
    return f"{fence}:{uuid.uuid4().hex}"


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryFences:
    """The newest fence of each consultation, shared by the memory locks and buffer of one
    process. Entries not used for an hour are forgotten (the clock floor keeps later fences
    larger anyway)."""

    FORGET_AFTER_SECONDS = 3600.0

    def __init__(self) -> None:
        self._newest: dict[str, tuple[int, float]] = {}  # name -> (fence, last used)

    def next(self, name: str) -> int:
        self._forget_old()
        previous = self._newest.get(name, (0, 0.0))[0]
        fence = max(previous + 1, clock_ms())
        self._newest[name] = (fence, time.monotonic())
        return fence

    def admits(self, name: str, token: str) -> bool:
        """Whether ``token`` is not older than the newest fence of ``name``."""
        newest = self._newest.get(name)
        return newest is None or fence_of(token) >= newest[0]

    def observe(self, name: str, token: str) -> None:
        """A token seen writing (restored after a loss of state): its fence is the floor."""
        fence = fence_of(token)
        newest = self._newest.get(name)
        if newest is None or fence > newest[0]:
            self._newest[name] = (fence, time.monotonic())

    def _forget_old(self) -> None:
        if len(self._newest) < 1024:
            return
        horizon = time.monotonic() - self.FORGET_AFTER_SECONDS
        for name in [n for n, (_, used) in self._newest.items() if used < horizon]:
            del self._newest[name]
