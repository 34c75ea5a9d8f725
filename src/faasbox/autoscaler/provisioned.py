"""Scheduled provisioned capacity: "keep N instances warm from 09:00 to 17:00, Mon-Fri, Berlin".

A function spec lists windows (``provisioned``); :func:`provisioned_at` says how many instances
they ask for at an instant. Pure: ``now`` is epoch seconds, converted to the window's time zone
(so daylight saving time is the zone's, not the server's).

* ``start``/``end`` (``from``/``to`` accepted too) are ``HH:MM`` local times; ``end`` may be
  ``24:00``; an ``end`` before ``start`` crosses midnight (22:00-06:00), and ``days`` then names
  the day the window starts on.
* ``days``: ``mon-fri``, ``sat,sun``, ``mon,wed-fri``, ``daily`` (default).
* Overlapping windows do not add up: the largest count wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from faasbox.clock import time_zone

__all__ = ["ProvisionedWindow", "parse_days", "provisioned_at"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri,sun`` -> weekday numbers (Monday 0). Raises ValueError on anything else."""
    spec = text.strip().lower()
    if spec in ("daily", "*", "mon-sun"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if lo not in DAYS or (sep and hi not in DAYS):
            raise ValueError(f"days must look like 'mon-fri' or 'sat,sun', not {text!r}")
        a = DAYS.index(lo)
        b = DAYS.index(hi) if sep else a
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(out)


class ProvisionedWindow(BaseModel):
    """Instances kept warm during a recurring local-time window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instances: int = Field(ge=1, le=1000, description="instances kept warm in the window")
    start: str = Field(validation_alias=AliasChoices("start", "from"),
                       description="local start time HH:MM (alias: from)")
    end: str = Field(validation_alias=AliasChoices("end", "to"),
                     description="local end time HH:MM, 24:00 for midnight (alias: to)")
    timezone: str = Field("UTC", description="IANA time zone, e.g. Europe/Berlin")
    days: str = Field("daily", description="days the window starts on: mon-fri, sat,sun, daily")

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str) -> str:
        if not _TIME_RE.match(v):
            raise ValueError(f"times are HH:MM (00:00-24:00), not {v!r}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        time_zone(v)
        return v

    @field_validator("days")
    @classmethod
    def _days(cls, v: str) -> str:
        parse_days(v)
        return v

    @model_validator(mode="after")
    def _span(self) -> ProvisionedWindow:
        if self.start == "24:00":
            raise ValueError("a window cannot start at 24:00")
        if _minutes(self.start) == _minutes(self.end):
            raise ValueError("start and end are equal: the window would be empty")
        return self

    def active(self, now: float) -> bool:
        """Whether the window covers the instant ``now`` (epoch seconds)."""
        local = datetime.fromtimestamp(now, time_zone(self.timezone))
        minute = local.hour * 60 + local.minute + local.second / 60
        start, end = _minutes(self.start), _minutes(self.end)
        days = parse_days(self.days)
        if start < end:
            return local.weekday() in days and start <= minute < end
        # crosses midnight: the evening part belongs to today, the morning part to yesterday
        if minute >= start:
            return local.weekday() in days
        yesterday = (local - timedelta(days=1)).weekday()
        return minute < end and yesterday in days


def provisioned_at(windows: Sequence[ProvisionedWindow | dict[str, Any]], now: float) -> int:
    """Instances the windows ask for at ``now``: the largest count of the active ones, or 0."""
    best = 0
    for w in windows:
        window = w if isinstance(w, ProvisionedWindow) else ProvisionedWindow.model_validate(w)
        if window.instances > best and window.active(now):
            best = window.instances
    return best
