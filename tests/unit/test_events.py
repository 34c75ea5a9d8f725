"""The event interface: publish awaits listeners and lets their errors through; emit runs
them as notifications, never raising."""

from __future__ import annotations

import asyncio
import logging

import pytest

from faasbox.events import Events, FunctionDeleted, SlotReleased


def test_publish_awaits_each_listener_in_order_and_raises_their_errors() -> None:
    seen: list[str] = []

    async def slow(event: FunctionDeleted) -> None:
        await asyncio.sleep(0)
        seen.append(f"slow {event.function}")

    def fast(event: FunctionDeleted) -> None:
        seen.append(f"fast {event.function}")

    def broken(event: FunctionDeleted) -> None:
        raise RuntimeError("no")

    async def main() -> None:
        events = Events()
        events.subscribe(FunctionDeleted, slow)
        events.subscribe(FunctionDeleted, fast)
        await events.publish(FunctionDeleted("f"))
        assert seen == ["slow f", "fast f"]
        events.subscribe(FunctionDeleted, broken)
        with pytest.raises(RuntimeError):
            await events.publish(FunctionDeleted("g"))
        await events.publish(SlotReleased("f"))  # no listener: nothing happens
        assert seen == ["slow f", "fast f", "slow g", "fast g"]

    asyncio.run(main())


def test_emit_logs_failures_and_runs_coroutines_in_the_background(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(event: SlotReleased) -> None:
        raise RuntimeError("listener bug")

    async def later(event: SlotReleased) -> None:
        await asyncio.sleep(0)
        seen.append(event.function)

    async def main() -> None:
        events = Events()
        events.subscribe(SlotReleased, broken)
        events.subscribe(SlotReleased, later)
        with caplog.at_level(logging.ERROR, logger="faasbox.events"):
            events.emit(SlotReleased("f"))  # does not raise
        assert seen == []  # not run yet: emit does not wait
        await events.drain()
        assert seen == ["f"]

    asyncio.run(main())
    assert "a listener of SlotReleased failed" in caplog.text
