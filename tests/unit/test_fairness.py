"""Fair shares among tenants (stride scheduling), on plain numbers."""

from __future__ import annotations

from collections import Counter

from faasbox.dispatcher.fairness import FairShare, Want


def weights(table: dict[str, float]) -> object:
    return lambda tenant: table.get(tenant, 1.0)


def by_tenant(quota: dict[str, int]) -> Counter[str]:
    out: Counter[str] = Counter()
    for function, n in quota.items():
        out[function.split("/")[0]] += n
    return out


def test_plenty_of_room_gives_everyone_every_free_slot() -> None:
    fair = FairShare()
    quota = fair.allocate([Want("a/f", "a", 5, 128), Want("b/g", "b", 3, 128)], 10_000,
                          weights({}), most=100)
    assert quota == {"a/f": 5, "b/g": 3}


def test_short_room_is_split_by_weight() -> None:
    wants = [Want("a/f", "a", 50, 128), Want("b/g", "b", 50, 128)]
    assert by_tenant(FairShare().allocate(wants, 10 * 128, weights({}), 100)) == {
        "a": 5, "b": 5}
    assert by_tenant(FairShare().allocate(wants, 8 * 128, weights({"a": 3}), 100)) == {
        "a": 6, "b": 2}


def test_over_many_rounds_starts_follow_the_weights() -> None:
    fair = FairShare()
    started: Counter[str] = Counter()
    wants = [Want("a/f", "a", 50, 128), Want("b/g", "b", 50, 128)]
    for _ in range(400):  # one slot frees up per round
        started += by_tenant(fair.allocate(wants, 128, weights({"a": 3}), 100))
    assert started == {"a": 300, "b": 100}


def test_a_tenants_functions_take_turns() -> None:
    fair = FairShare()
    wants = [Want("a/big", "a", 50, 128), Want("a/small", "a", 50, 128),
             Want("b/g", "b", 50, 128)]
    quota = fair.allocate(wants, 8 * 128, weights({}), 100)
    assert quota == {"a/big": 2, "a/small": 2, "b/g": 4}


def test_a_tenant_back_from_idle_gets_no_burst() -> None:
    fair = FairShare()
    for _ in range(100):  # a runs alone for a while: its pass grows
        fair.allocate([Want("a/f", "a", 50, 128)], 128, weights({}), 100)
    wants = [Want("a/f", "a", 50, 128), Want("b/g", "b", 50, 128)]
    started: Counter[str] = Counter()
    for _ in range(10):
        started += by_tenant(fair.allocate(wants, 128, weights({}), 100))
    assert started == {"a": 5, "b": 5}  # b takes turns with a, not the next 100 slots


def test_memory_decides_what_fits_and_unused_quota_is_refunded() -> None:
    fair = FairShare()
    quota = fair.allocate([Want("a/huge", "a", 5, 4096), Want("b/g", "b", 5, 128)], 1024,
                          weights({}), 100)
    assert quota == {"b/g": 5}  # a's task does not fit at all; b is not held back
    before = fair.passes["b"]
    fair.refund("b", 2, 1.0)
    assert fair.passes["b"] == before - 2
