"""Training sets A and B exactly as the paper's Sec. 2.3 and Fig. 2."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.data.bagging import describe_subsets, make_bagging_subsets, split_all_halves


def _entries(subset, mask):
    """Sorted training indices of the entries of `subset` selected by `mask`."""
    return sorted(subset.indices[mask].tolist())


@pytest.mark.parametrize("n_all,n_hem", [(20, 10), (7, 3)])
def test_composition_and_counts(n_all, n_hem):
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.array([1] * n_all + [0] * n_hem))
    all_cells = np.flatnonzero(labels == 1).tolist()
    hem_cells = np.flatnonzero(labels == 0).tolist()
    set_a, set_b = make_bagging_subsets(labels, seed=0)
    all_a, all_b = split_all_halves(labels, seed=0)

    # All-A and All-B: disjoint halves of the ALL cells (All-A gets the odd one).
    assert sorted(all_a.tolist() + all_b.tolist()) == all_cells
    assert len(all_a) == (n_all + 1) // 2 and len(all_b) == n_all // 2

    for subset, own, other in ((set_a, all_a, all_b), (set_b, all_b, all_a)):
        is_all = labels[subset.indices] == 1
        assert _entries(subset, is_all & ~subset.augment) == sorted(own.tolist())
        assert _entries(subset, is_all & subset.augment) == sorted(other.tolist())
        assert _entries(subset, ~is_all & ~subset.augment) == hem_cells
        assert _entries(subset, ~is_all & subset.augment) == hem_cells
        assert len(subset) == n_all + 2 * n_hem
        assert subset.indices.dtype == np.int64 and subset.augment.dtype == bool
    assert set_a.name == "A" and set_b.name == "B"


def test_seeded_and_label_names_accepted():
    labels = ["all"] * 10 + ["hem"] * 4
    a1, b1 = make_bagging_subsets(labels, seed=1)
    a2, _ = make_bagging_subsets(np.array([1] * 10 + [0] * 4), seed=1)
    a3, _ = make_bagging_subsets(labels, seed=2)
    assert np.array_equal(a1.indices, a2.indices) and np.array_equal(a1.augment, a2.augment)
    assert not np.array_equal(a1.indices, a3.indices)
    text = describe_subsets(a1, b1, labels)
    assert "set A: 18 entries = 5 ALL + 5 augmented ALL + 4 HEM + 4 augmented HEM" in text


def test_too_few_cells():
    with pytest.raises(ValueError, match="at least 2 ALL cells and 1 HEM"):
        make_bagging_subsets([1, 0, 0], seed=0)
    with pytest.raises(ValueError, match="at least 2 ALL cells and 1 HEM"):
        make_bagging_subsets([1, 1, 1], seed=0)
    with pytest.raises(ValueError, match="Unknown class"):
        make_bagging_subsets(["all", "blast"], seed=0)
