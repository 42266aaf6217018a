"""The chaos run, 60 seconds of it (``scripts/chaos`` runs 180 by default): instances
SIGKILLed and restarted and paused past the lock TTL, Redis and MongoDB restarted, clients
stalled, under 30 Socket.IO and 10 WebSocket clients — nothing acked is missing, nothing is
duplicated, every client's view equals the store, every question is answered, every reply
seen streaming is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos


@pytest.mark.timeout(300)  # 60 s of load, start-up and settling
async def test_sixty_seconds_of_chaos_lose_nothing(tmp_path: Path) -> None:
    table, ok = await chaos.run(60, seed=7, workdir=tmp_path)
    print("\n" + table)
    assert ok, table
    assert "| replies taken over (kill or pause) | 0 |" not in table  # blows hit live replies
    assert "| instances killed / paused | 2 / 1 |" in table
