"""The function of README.md's "Deploying a function": it answers with its event."""


def handler(event, context):           # or: async def handler(event, context)
    context.log("called by", context.request_id)
    return {"echo": event}
