"""The bright-field smear generator: deterministic, and its truth matches what it drew."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.data.synthetic_brightfield import (
    BrightfieldLook,
    make_brightfield_crop,
    make_brightfield_field,
)

SMALL = (600, 800)


def _field(seed: int = 1, **kwargs):
    kwargs.setdefault("shape", SMALL)
    kwargs.setdefault("look", BrightfieldLook(scale=0.5))
    return make_brightfield_field(seed, **kwargs)


def test_same_seed_same_bytes_other_seed_other_image():
    image, truth = _field(4)
    again, truth_again = _field(4)
    other, _ = _field(5)
    assert image.dtype == np.uint8 and image.shape == (*SMALL, 3)
    assert np.array_equal(image, again)
    assert np.array_equal(truth.labels, truth_again.labels)
    assert truth.white_cells == truth_again.white_cells
    assert not np.array_equal(image, other)


def test_default_field_is_a_smear_of_the_asked_size():
    image, truth = make_brightfield_field(0)
    assert image.shape == (1500, 2000, 3)
    assert truth.labels.shape == (1500, 2000) and truth.labels.dtype == np.int32
    assert truth.n_white == 6 and len(truth.red_cells) > 100 and len(truth.platelets) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_and_label_mask_match_the_truth(seed):
    image, truth = _field(seed, n_white=7, n_touching_pairs=2, n_border=2)
    ids = np.unique(truth.labels)
    assert list(ids) == list(range(truth.n_white + 1))  # every cell visible, one id each
    assert truth.n_white == 7
    assert sum(cell.touching for cell in truth.white_cells) == 4
    assert {cell.label for cell in truth.white_cells} == {"all", "hem"}
    for cell_id, cell in enumerate(truth.white_cells, start=1):
        rows, cols = np.nonzero(truth.labels == cell_id)
        inside = 0 <= cell.centre[0] < SMALL[0] and 0 <= cell.centre[1] < SMALL[1]
        if not cell.touching and inside:
            centre = truth.labels[int(cell.centre[0]), int(cell.centre[1])]
            assert centre == cell_id
        assert rows.size > 0.3 * np.pi * cell.radius**2  # at least a good part of the disc


def test_touching_pairs_share_a_boundary():
    _, truth = _field(3, n_white=4, n_touching_pairs=1, n_border=0)
    first, second = (i + 1 for i, c in enumerate(truth.white_cells) if c.touching)
    mask = truth.labels == first
    grown = np.zeros_like(mask)
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    assert (grown & (truth.labels == second)).any()


def test_border_cut_cells_are_flagged_and_reach_the_edge():
    _, truth = _field(6, n_white=5, n_touching_pairs=0, n_border=2)
    labels = truth.labels
    on_edge = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    flagged = {i + 1 for i, cell in enumerate(truth.white_cells) if cell.cut_by_border}
    assert len(flagged) >= 2
    assert flagged == on_edge - {0}


def test_red_cells_are_pink_and_white_cell_nuclei_purple():
    image, truth = make_brightfield_field(8, shape=(750, 1000), look=BrightfieldLook(scale=0.5))
    image = image.astype(np.float64)
    free_reds = [
        (int(r), int(c))
        for r, c, radius in truth.red_cells
        if 5 <= r < 745 and 5 <= c < 995 and truth.labels[int(r), int(c)] == 0
    ]
    assert len(free_reds) > 20
    red_pixels = np.array([image[r, c] for r, c in free_reds])
    background = np.median(image.reshape(-1, 3), axis=0)
    # pink: red channel highest, clearly darker than the background in green
    assert (red_pixels[:, 0] > red_pixels[:, 2]).mean() > 0.95
    assert (red_pixels[:, 1] < background[1] - 20).mean() > 0.95
    for cell_id, cell in enumerate(truth.white_cells, start=1):
        pixels = image[truth.labels == cell_id]
        darkest = pixels[pixels.sum(axis=1) < np.percentile(pixels.sum(axis=1), 30)]
        assert darkest[:, 2].mean() > darkest[:, 0].mean() + 20, cell  # purple: blue over red


def test_red_cells_have_a_paler_centre():
    look = BrightfieldLook(scale=1.0, noise_sigma=0.0, red_cover=0.02)
    image, truth = make_brightfield_field(
        2, shape=(800, 800), n_white=1, n_border=0, n_touching_pairs=0, look=look
    )
    paler = 0
    for r, c, radius in truth.red_cells:
        ring = (int(r), int(c + 0.75 * radius))
        if radius < r < 800 - radius and radius < c < 800 - radius:
            paler += int(image[int(r), int(c), 1] > image[ring][1])
    assert paler >= 0.8 * len(truth.red_cells) - 2 and paler > 0


@pytest.mark.parametrize("label", ["all", "hem"])
def test_crop_holds_one_centred_white_cell(label):
    image, truth = make_brightfield_crop(11, label, size=257)
    again, _ = make_brightfield_crop(11, label, size=257)
    assert image.shape == (257, 257, 3) and np.array_equal(image, again)
    assert truth.n_white == 1 and truth.white_cells[0].label == label
    rows, cols = np.nonzero(truth.labels == 1)
    assert abs(rows.mean() - 128) < 2 and abs(cols.mean() - 128) < 2
    diameter = 2 * truth.white_cells[0].radius
    assert 0.3 * 257 < diameter < 0.6 * 257
    assert not truth.white_cells[0].cut_by_border


def test_all_cells_are_larger_with_a_larger_nucleus_than_hem():
    all_image, all_truth = make_brightfield_crop(3, "all")
    hem_image, hem_truth = make_brightfield_crop(3, "hem")
    assert all_truth.white_cells[0].radius > 0  # crops scale each class to the crop

    def nucleus_fraction(image, truth):
        pixels = image[truth.labels == 1].astype(np.float64)
        return float((pixels.sum(axis=1) < 420).mean())  # dark purple nucleus pixels

    assert nucleus_fraction(all_image, all_truth) > nucleus_fraction(hem_image, hem_truth) + 0.15


def test_too_many_special_cells_is_an_error():
    with pytest.raises(ValueError, match="cannot hold"):
        make_brightfield_field(0, shape=SMALL, n_white=2, n_touching_pairs=1, n_border=1)
    with pytest.raises(ValueError, match="label"):
        make_brightfield_crop(0, "blast")
