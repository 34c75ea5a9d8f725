"""A nightly report: the function the cron trigger examples fire (docs/triggers.md).

A fire without an event of its own describes itself (``{"trigger", "function",
"scheduled_time"}``); ``faasbox trigger add report --data '{"kind": "daily"}' ...`` gives every
fire that event instead. Replace the body with the report of your own.
"""


def handler(event, context):
    event = event if isinstance(event, dict) else {}
    kind = event.get("kind", "daily")
    day = (event.get("scheduled_time") or "")[:10] or None
    context.log(f"{kind} report for {day or 'today'} (trigger {event.get('trigger')})")
    return {"report": kind, "day": day, "trigger": event.get("trigger")}
