"""The chaos run, 60 seconds of it (``scripts/chaos`` runs 180 by default): instances
SIGKILLed and restarted, Redis and MongoDB restarted, under 30 clients — nothing acked is
missing, nothing is duplicated, every client's view equals the store, every question is
answered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos


@pytest.mark.timeout(300)  # 60 s of load, start-up and settling
async def test_sixty_seconds_of_chaos_lose_nothing(tmp_path: Path) -> None:
    table, ok = await chaos.run(60, seed=7, workdir=tmp_path)
    print("\n" + table)
    assert ok, table
    assert "| replies taken over after a kill | 0 |" not in table  # kills hit live replies
