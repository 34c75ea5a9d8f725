"""The shard function of the job examples (docs/cli-jobs.md).

Every shard answers with its index and the event's bucket. ``fail_at`` makes that shard fail,
``sleep`` makes every shard take that many seconds (to have a job to cancel).
"""

import time


def handler(event, context):
    event = event or {}
    index = context.shard["index"]
    if index == event.get("fail_at"):
        raise ValueError(f"bad shard {index}")
    time.sleep(event.get("sleep", 0))
    return {"shard": index, "bucket": event.get("bucket")}
