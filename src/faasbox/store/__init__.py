"""Persistence behind one interface: :class:`Store`, with the embedded SQLite backend."""

from faasbox.store.base import FunctionRow, InvocationRecord, Store, VersionRow
from faasbox.store.sqlite import SqliteStore

__all__ = ["FunctionRow", "InvocationRecord", "SqliteStore", "Store", "VersionRow"]
