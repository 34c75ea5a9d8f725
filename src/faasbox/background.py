"""Background loops of the server's components."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel background tasks and wait until each has ended (None: nothing to stop)."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
