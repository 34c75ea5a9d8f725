"""The usage rollups in the store (schema ``0007_metering.sql``).

Writes are upserts queued with the store's ``write_later`` (one group commit for a whole
flush); reads sum the hourly rows into the buckets asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from faasbox.metering.usage import MAXED, NUMERIC, Usage
from faasbox.store.database import Conn
from faasbox.store.relational.functions import SqlStore, tenant_range, where_clause
from faasbox.tenancy.names import prefix_range

_COLS = ", ".join(NUMERIC)
_MARKS = ", ".join("?" * (len(NUMERIC) + 2))


def _set(greatest: str) -> str:
    return ", ".join(f"{c} = {greatest}(usage_hours.{c}, excluded.{c})" if c in MAXED
                     else f"{c} = usage_hours.{c} + excluded.{c}" for c in NUMERIC)



Key = tuple[str, int]  # (qualified function, hour)


class UsageStore:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._set = _set(store.dialect.greatest)

    def save(self, pending: Mapping[Key, Usage]) -> None:
        """Queue the upsert of every pending function-hour (does not wait for the commit)."""
        rows = [(fn, hour, *(getattr(u, c) for c in NUMERIC))
                for (fn, hour), u in pending.items()]
        calls = [(fn, hour, trig, status, n) for (fn, hour), u in pending.items()
                 for (trig, status), n in u.calls.items()]
        hist = [(fn, hour, kind, bucket, n) for (fn, hour), u in pending.items()
                for (kind, bucket), n in u.hist.items()]

        def tx(conn: Conn) -> None:
            conn.executemany(
                f"INSERT INTO usage_hours (function, hour, {_COLS}) VALUES ({_MARKS})"
                f" ON CONFLICT (function, hour) DO UPDATE SET {self._set}", rows)
            conn.executemany(
                "INSERT INTO usage_calls (function, hour, trigger, status, n)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (function, hour, trigger, status)"
                " DO UPDATE SET n = usage_calls.n + excluded.n", calls)
            conn.executemany(
                "INSERT INTO usage_hist (function, hour, kind, bucket, n)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (function, hour, kind, bucket)"
                " DO UPDATE SET n = usage_hist.n + excluded.n", hist)

        self.store.write_later(tx, durable=False)  # as the records it sums

    async def purge_before(self, hour: int) -> None:
        def tx(conn: Conn) -> None:
            for table in ("usage_hours", "usage_calls", "usage_hist"):
                conn.execute(f"DELETE FROM {table} WHERE hour < ?", (hour,))

        await self.store.write(tx)

    async def purge_tenant(self, tenant: str) -> None:
        lo, hi = prefix_range(tenant)

        def tx(conn: Conn) -> None:
            for table in ("usage_hours", "usage_calls", "usage_hist"):
                conn.execute(f"DELETE FROM {table} WHERE function >= ? AND function < ?",
                             (lo, hi))

        await self.store.write(tx)

    async def hours(self, start: float, end: float, tenant: str | None = None,
                    function: str | None = None) -> dict[Key, Usage]:
        """Every function-hour with ``start <= hour < end`` (of one tenant, one function)."""
        clause, args = where_clause(("hour >= ?", int(start)), ("hour < ?", end),
                                    ("function = ?", function),
                                    *tenant_range("function", tenant))

        def q(conn: Conn) -> dict[Key, Usage]:
            out: dict[Key, Usage] = {}
            for r in conn.execute(f"SELECT function, hour, {_COLS} FROM usage_hours {clause}",
                                  args):
                out[(r[0], r[1])] = Usage(**{c: r[i + 2] for i, c in enumerate(NUMERIC)})
            for r in conn.execute("SELECT function, hour, trigger, status, n FROM usage_calls"
                                  f" {clause}", args):
                out.setdefault((r[0], r[1]), Usage()).calls[(r[2], r[3])] += r[4]
            for r in conn.execute("SELECT function, hour, kind, bucket, n FROM usage_hist"
                                  f" {clause}", args):
                out.setdefault((r[0], r[1]), Usage()).hist[(r[2], r[3])] += r[4]
            return out

        return await self.store.read(q)
