"""Persistence behind one interface: :class:`Store` and its companions, on SQLite (the
embedded default) or PostgreSQL (several servers on one database)."""

from faasbox.store.base import FunctionRow, InvocationRecord, Store, VersionRow
from faasbox.store.relational.functions import SqlStore

__all__ = ["FunctionRow", "InvocationRecord", "SqlStore", "Store", "VersionRow"]
