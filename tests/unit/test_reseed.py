"""numpy's legacy global random state, reseeded in place in each child of a template
(runtime/zygote.py), on this process's own numpy."""

from __future__ import annotations

import pytest

from faasbox.runtime import zygote

numpy = pytest.importorskip("numpy")


def test_the_state_is_found_in_place_and_reseeded_there() -> None:
    numpy.random.standard_normal()  # a variate cached, as a function's import may leave one
    address = zygote.numpy_state_in_place()
    assert address != 0
    _, _, _, has_gauss, _ = numpy.random.get_state()
    assert has_gauss == 0  # reseeded in the template: nothing cached for the children
    before = numpy.random.get_state()[1].copy()
    zygote.reseed_numpy_in_place(address)
    _, key, pos, has_gauss, _ = numpy.random.get_state()
    assert pos == 624 and has_gauss == 0
    assert int(key[0]) & 0x80000000  # never the all-zero state
    assert not numpy.array_equal(key, before)
    first = numpy.random.random(8)
    zygote.reseed_numpy_in_place(address)
    second = numpy.random.random(8)
    assert not numpy.array_equal(first, second)
    assert ((0 <= second) & (second < 1)).all() and len(set(second.tolist())) == 8


def test_a_layout_other_than_the_one_checked_falls_back_to_numpys_own_seed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote.ctypes, "string_at", lambda address, size: b"\0" * size)
    assert zygote.numpy_state_in_place() == 0  # each child then calls numpy.random.seed()
