"""The servers that share a store and their heartbeats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from faasbox.store.database import Conn
from faasbox.store.relational.functions import SqlStore


@dataclass(frozen=True)
class ServerRow:
    id: str
    started_at: float
    heartbeat_at: float
    url: str | None
    info: dict[str, Any]


class SqlClusterStore:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    async def heartbeat(self, server: str, started_at: float, now: float, url: str | None,
                        info: dict[str, Any]) -> None:
        """This server is alive at ``now`` (its row made or refreshed)."""
        text = orjson.dumps(info).decode()

        def tx(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO servers (id, started_at, heartbeat_at, url, info)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " heartbeat_at = excluded.heartbeat_at, url = excluded.url,"
                " info = excluded.info", (server, started_at, now, url, text))

        await self.store.write_aside(tx)  # not behind a busy server's queued writes

    async def leave(self, server: str) -> None:
        """This server stops: its row goes (its leases were given back)."""
        def tx(conn: Conn) -> None:
            conn.execute("DELETE FROM servers WHERE id = ?", (server,))

        await self.store.write(tx)

    async def forget(self, before: float) -> int:
        """Drop the rows of servers silent since ``before`` (long dead)."""
        def tx(conn: Conn) -> int:
            return conn.execute("DELETE FROM servers WHERE heartbeat_at < ?",
                                (before,)).rowcount

        return await self.store.write(tx)

    async def servers(self) -> list[ServerRow]:
        def q(conn: Conn) -> list[ServerRow]:
            return [ServerRow(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in conn.execute(
                "SELECT id, started_at, heartbeat_at, url, info FROM servers"
                " ORDER BY started_at, id")]

        return await self.store.read(q)
