"""What a tenant's admins configure for everyone of the tenant: the greeting an empty
consultation opens with, and the canned replies its operators insert with ``/shortcut``."""

from __future__ import annotations

import re
import time
from typing import Any

from ..errors import Forbidden, InvalidPayload
from .models import CannedReply, Identity, Role, TenantSettings
from .ports import TenantSettingsStore

SHORTCUT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_GREETING = 1000
MAX_CANNED = 100
MAX_CANNED_TEXT = 2000
CACHE_SECONDS = 10.0  # settings change rarely: every join of an empty consultation reads them


class TenantService:
    def __init__(self, store: TenantSettingsStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, TenantSettings]] = {}

    async def settings(self, tenant_id: str) -> TenantSettings:
        cached = self._cache.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        found = await self._store.tenant_settings(tenant_id)
        self._cache[tenant_id] = (time.monotonic(), found)
        return found

    async def for_staff(self, identity: Identity) -> TenantSettings:
        if not identity.is_staff:
            raise Forbidden("The tenant's settings are for operators and admins")
        return await self.settings(identity.tenant_id)

    async def put(self, identity: Identity, body: dict[str, Any]) -> TenantSettings:
        """Replace the tenant's settings (admins): ``{greeting?, cannedReplies?}``."""
        if identity.role is not Role.ADMIN:
            raise Forbidden("The tenant's settings are for its admins")
        greeting = body.get("greeting")
        if greeting is not None and not (
            isinstance(greeting, str) and len(greeting) <= MAX_GREETING
        ):
            raise InvalidPayload(
                f"greeting must be a string of at most {MAX_GREETING} characters",
                field="greeting",
            )
        replies = body.get("cannedReplies", [])
        if not isinstance(replies, list) or len(replies) > MAX_CANNED:
            raise InvalidPayload(
                f"cannedReplies must be a list of at most {MAX_CANNED}", field="cannedReplies"
            )
        canned = [_canned(item, n) for n, item in enumerate(replies)]
        shortcuts = [c.shortcut for c in canned]
        if len(set(shortcuts)) != len(shortcuts):
            raise InvalidPayload("each shortcut may appear once", field="cannedReplies")
        settings = TenantSettings(
            tenant_id=identity.tenant_id,
            greeting=greeting.strip() if isinstance(greeting, str) and greeting.strip() else None,
            canned_replies=canned,
        )
        stored = await self._store.put_tenant_settings(settings)
        self._cache[identity.tenant_id] = (time.monotonic(), stored)
        return stored


def _canned(item: object, n: int) -> CannedReply:
    field = f"cannedReplies.{n}"
    if not isinstance(item, dict):
        raise InvalidPayload(f"{field} must be an object {{shortcut, text}}", field=field)
    shortcut, text = item.get("shortcut"), item.get("text")
    if not isinstance(shortcut, str) or not SHORTCUT.fullmatch(shortcut):
        raise InvalidPayload(
            f"{field}.shortcut: 1-32 of a-z 0-9 _ -, starting with a letter or digit",
            field=f"{field}.shortcut",
        )
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CANNED_TEXT:
        raise InvalidPayload(
            f"{field}.text must be 1 to {MAX_CANNED_TEXT} characters", field=f"{field}.text"
        )
    return CannedReply(shortcut=shortcut, text=text)
