"""The evidence study's seed-ensemble control pairs each two stock replicates once."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from evidence_study import seed_ensemble_pairs  # noqa: E402


@pytest.mark.parametrize("replicates, pairs", [
    ([0], []),
    ([2, 3], [(2, 3)]),
    ([0, 1, 2], [(0, 1), (1, 2), (2, 0)]),
    ([0, 2, 3, 5], [(0, 2), (2, 3), (3, 5), (5, 0)]),
])
def test_each_unordered_pair_once(replicates, pairs):
    found = seed_ensemble_pairs(replicates)
    assert found == pairs
    assert len({frozenset(p) for p in found}) == len(found)
    assert all(a != b for a, b in found)
