"""The reduce step of the job examples (docs/cli-jobs.md): the sum of the shard indexes."""


def handler(event, context):
    return sum(r["shard"] for r in event["results"])
