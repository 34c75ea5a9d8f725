"""Sleeps SLEEP_MS milliseconds, then returns its event (the fairness bench's task)."""

import os
import time

SLEEP_S = float(os.environ.get("SLEEP_MS", "0")) / 1000


def handler(event, context):
    time.sleep(SLEEP_S)
    return event
