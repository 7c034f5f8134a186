"""Plugin state: small JSON values a plugin keeps by key, and atomic claims (cooldowns)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from core.models import utcnow
from core.storage.engine import StorageEngine
from core.storage.schema import plugin_state

__all__ = ["PluginStateMixin"]


class PluginStateMixin(StorageEngine):
    """Per-plugin key/value rows."""

    async def state_get(self, plugin: str, key: str) -> tuple[Any, datetime] | None:
        """A plugin's stored value and when it was last set, or ``None``."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    sa.select(plugin_state.c.value, plugin_state.c.updated_at).where(
                        plugin_state.c.plugin == plugin, plugin_state.c.key == key
                    )
                )
            ).first()
        return (row.value, row.updated_at) if row else None

    async def state_set(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON-able value for a plugin (insert or replace)."""
        now = utcnow()
        ins = self.insert(plugin_state)
        async with self.write() as conn:
            await conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[plugin_state.c.plugin, plugin_state.c.key],
                    set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
                ),
                {"plugin": plugin, "key": key, "value": value, "updated_at": now},
            )

    async def state_claim(self, plugin: str, key: str, value: Any, *, older_than: float) -> bool:
        """Set ``key`` only if it is unset or was last set more than ``older_than`` seconds ago.

        Atomic across processes: of two concurrent claims exactly one wins. This is how cooldowns
        work ("at most one auto-reply per conversation per N seconds").
        """
        now = utcnow()
        ins = self.insert(plugin_state)
        async with self.write() as conn:
            won = (
                await conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=[plugin_state.c.plugin, plugin_state.c.key],
                        set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
                        where=plugin_state.c.updated_at <= now - timedelta(seconds=older_than),
                    ).returning(plugin_state.c.key),
                    {"plugin": plugin, "key": key, "value": value, "updated_at": now},
                )
            ).first()
        return won is not None
