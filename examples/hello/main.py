"""Echo the event back, with a little of what the context offers."""


def handler(event, context):
    context.log(f"hello called with {event!r}")
    return {
        "hello": (event or {}).get("name", "world") if isinstance(event, dict) else "world",
        "event": event,
        "request_id": context.request_id,
        "version": context.version,
    }
