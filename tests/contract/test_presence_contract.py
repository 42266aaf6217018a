"""The RoomPresence contract: a participant is online from its first connection in the room
to its last, whatever the number of tabs; crashed connections fall out."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination


async def test_the_first_tab_comes_online_and_the_last_goes_offline(
    coordination: Coordination, name: str
) -> None:
    presence = coordination.presence
    assert await presence.enter(name, "user:ann", "tab-1", 10) is True
    assert await presence.enter(name, "user:ann", "tab-2", 10) is False
    assert await presence.enter(name, "user:ann", "tab-2", 10) is False  # again: harmless
    assert await presence.enter(name, "operator:olga", "console", 10) is True
    assert await presence.online(name) == ["operator:olga", "user:ann"]
    assert await presence.exit(name, "user:ann", "tab-1") is False
    assert await presence.exit(name, "user:ann", "tab-1") is False  # already gone
    assert await presence.exit(name, "user:ann", "tab-2") is True
    assert await presence.online(name) == ["operator:olga"]
    assert await presence.online(name + "-elsewhere") == []


async def test_one_participants_name_is_not_anothers_prefix(
    coordination: Coordination, name: str
) -> None:
    presence = coordination.presence
    assert await presence.enter(name, "user:ann", "a", 10) is True
    assert await presence.enter(name, "user:anna", "b", 10) is True
    assert await presence.exit(name, "user:ann", "a") is True


async def test_unrefreshed_connections_expire(coordination: Coordination, name: str) -> None:
    presence = coordination.presence
    assert await presence.enter(name, "user:kept", "k", 0.4)
    assert await presence.enter(name, "user:crashed", "c", 0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await presence.refresh([(name, "user:kept", "k"), (name + "-x", "user:y", "z")], 0.4)
    assert await presence.online(name) == ["user:kept"]
    assert await presence.enter(name, "user:crashed", "again", 10) is True  # online anew
