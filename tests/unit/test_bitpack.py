"""Elias-Fano indices and 4-bit values: exact round trips, the documented sizes, and the worked example."""

import math

import numpy as np
import pytest

from fedmq.shared import bitpack, codecs
from fedmq.shared.codecs import Codec


@pytest.mark.parametrize("universe", [1, 2, 7, 610, 650, 10_000, 1_000_000])
def test_elias_fano_round_trips_any_sorted_indices(universe):
    rng = np.random.default_rng(universe)
    for count in sorted({1, min(2, universe), max(1, universe // 10), max(1, universe // 100), universe}):
        idx = np.sort(rng.choice(universe, count, replace=False))
        high, low = bitpack.ef_encode(idx, universe)
        np.testing.assert_array_equal(bitpack.ef_decode(high, low, universe), idx)
        ell = bitpack.low_bits(universe, count)
        assert low.size == math.ceil(count * ell / 8)
        assert high.size * 8 <= 3 * count + 7  # at most k + N / 2^l <= 3k bits, padded to a byte


def test_the_protocol_documents_worked_example():
    high, low = bitpack.ef_encode(np.array([3, 300]), 650)
    assert high.tobytes() == b"\xa0" and low.tobytes() == b"\x03\x2c"


def test_int4_round_trips_odd_and_even_counts():
    for count in (1, 2, 11, 64):
        q = np.random.default_rng(count).integers(-7, 8, count)
        packed = bitpack.int4_pack(q)
        assert packed.size == (count + 1) // 2
        np.testing.assert_array_equal(bitpack.int4_unpack(packed, count), q)


def test_default_topk_is_over_30x_smaller_at_a_tenth_of_the_entries():
    w = {"w": np.random.default_rng(0).normal(0, 1, (64, 10)), "b": np.random.default_rng(1).normal(0, 1, 10)}
    wire, seen = codecs.compress(Codec("topk", delta=True, fraction=0.1), w)
    assert set(wire) == {"@hi", "@lo", "@val", "@val@scale"}
    assert 650 * 4 / sum(a.nbytes for a in wire.values()) > 30
    got = codecs.to_dense(codecs.decode("topk", Codec("topk", delta=True).params(), wire,
                                        {"w": (64, 10), "b": (10,)}), np.float64)
    for k in w:
        np.testing.assert_allclose(got[k], seen[k], atol=1e-6)
