"""A CPU-bound function: count the primes below n with a sieve."""

import math


def handler(event, context):
    n = int((event or {}).get("n", 1_000_000))
    if n < 2:
        return {"n": n, "primes": 0}
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(n - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return {"n": n, "primes": sum(sieve)}
