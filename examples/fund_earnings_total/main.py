"""The reduce step of the fund-earnings job: one total from every shard's result."""


def handler(event, context):
    results = event["results"]
    top = max(results, key=lambda r: r["top_earnings"])
    return {
        "job_id": event["job_id"],
        "shards": len(results),
        "users": sum(r["users"][1] - r["users"][0] + 1 for r in results),
        "earnings": round(sum(r["earnings"] for r in results), 2),
        "top_user": top["top_user"],
        "top_earnings": top["top_earnings"],
    }
