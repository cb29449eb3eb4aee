"""Example-level statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from trajhpc.results.itemstats import (
    discordant,
    holm,
    mcnemar_exact,
    smallest_sign_flip_p,
    stratified_mcnemar,
    two_level_bootstrap,
)


@pytest.mark.parametrize(
    "b, c, p",
    [(0, 5, 2 / 32), (1, 9, 22 / 1024), (9, 1, 22 / 1024), (5, 5, 1.0), (0, 0, 1.0), (0, 1, 1.0)],
)
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_discordant_counts_and_shape_check():
    x = np.array([1, 1, 0, 0, 1], bool)
    y = np.array([1, 0, 1, 0, 0], bool)
    assert discordant(x, y) == (2, 1)
    with pytest.raises(ValueError, match="different items"):
        discordant(x, y[:3])


def test_stratified_mcnemar_pools_the_discordant_counts_of_the_units():
    assert stratified_mcnemar([(1, 4), (0, 5)]) == pytest.approx(22 / 1024)
    assert stratified_mcnemar([]) == 1.0


def test_holm_on_a_known_family():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_smallest_sign_flip_p():
    assert smallest_sign_flip_p(4) == 0.125 and smallest_sign_flip_p(1) == 1.0
    assert smallest_sign_flip_p(20) == pytest.approx(2 / 2**20)


def test_two_level_bootstrap_includes_test_set_sampling():
    rng = np.random.default_rng(1)
    items = rng.random(60) < 0.5
    one_unit = items[None, :].astype(float)
    groups = [i // 2 for i in range(60)]  # 30 dialogues of 2 items
    ci = two_level_bootstrap(one_unit, groups, resamples=500)
    assert ci.mean == pytest.approx(items.mean())
    # One unit: a unit-level bootstrap has zero width; resampling dialogues does not.
    assert ci.low < ci.mean < ci.high and ci.high - ci.low > 0.15
    assert two_level_bootstrap(one_unit, groups, resamples=500) == ci  # seeded
    flat = two_level_bootstrap(np.ones((3, 10)), list(range(10)), resamples=100)
    assert (flat.low, flat.high) == (1.0, 1.0)
    with pytest.raises(ValueError):
        two_level_bootstrap(np.ones((2, 3)), [0, 1])
