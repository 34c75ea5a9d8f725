"""Daily fund earnings, one shard of the users at a time.

A job splits the users into ``context.shard["count"]`` id ranges; this shard computes the
day's earnings of the users in its range. The holdings are generated from the user id so the
example needs no database: replace ``holdings`` with a query of your own.
"""

import hashlib

ANNUAL_YIELD = {"money-market": 0.021, "bond": 0.034, "index": 0.061}


def holdings(user_id: int) -> list[tuple[str, float]]:
    digest = hashlib.blake2b(str(user_id).encode(), digest_size=8).digest()
    funds = list(ANNUAL_YIELD)
    return [(funds[digest[i] % len(funds)], 100.0 + int.from_bytes(digest[i:i + 2], "big") / 7)
            for i in range(0, 2 + digest[7] % 3)]


def handler(event, context):
    event = event or {}
    users = int(event.get("users", 10_000))
    index, count = context.shard["index"], context.shard["count"]
    first = users * index // count
    last = users * (index + 1) // count  # exclusive
    total = 0.0
    best = (0.0, None)
    for user_id in range(first, last):
        earned = sum(amount * ANNUAL_YIELD[fund] / 365 for fund, amount in holdings(user_id))
        total += earned
        best = max(best, (earned, user_id))
    context.log(f"shard {index}/{count}: users {first}-{last - 1}, earned {total:.2f}")
    return {"shard": index, "users": [first, last - 1], "earnings": round(total, 2),
            "top_user": best[1], "top_earnings": round(best[0], 4),
            "date": event.get("date")}
