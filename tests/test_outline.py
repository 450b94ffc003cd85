"""The outline of a mask (marching squares): closed, on the boundary, in image pixel coordinates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cxr_viewer.ai.outline import mask_outline


def closed(segments: np.ndarray) -> bool:
    """Every end is shared by exactly two segments (a closed outline, however many pieces)."""
    ends = Counter(tuple(np.round(p, 3)) for p in segments.reshape(-1, 2))
    return bool(ends) and all(n == 2 for n in ends.values())


def test_empty_mask_has_no_outline():
    assert mask_outline(np.zeros((5, 7), bool)).shape == (0, 2, 2)


def test_one_pixel_is_a_diamond_around_its_centre():
    mask = np.zeros((5, 7), bool)
    mask[2, 3] = True
    seg = mask_outline(mask)
    assert seg.shape == (4, 2, 2) and closed(seg)
    assert {tuple(p) for p in seg.reshape(-1, 2)} == {(3.5, 2.0), (4.0, 2.5), (3.5, 3.0), (3.0, 2.5)}


@pytest.mark.parametrize("where", ["inside", "touching every border"])
def test_outline_is_closed_and_hugs_the_mask(where):
    mask = np.zeros((40, 50), bool)
    y, x = np.ogrid[:40, :50]
    mask |= ((y - 20) / 12) ** 2 + ((x - 22) / 15) ** 2 <= 1
    if where != "inside":
        mask[:, :3] = mask[:2, :] = mask[:, -1:] = mask[-4:, :] = True
    seg = mask_outline(mask)
    assert closed(seg)
    # each end lies half a pixel from a pixel centre, between an inside and an outside pixel (or the border)
    padded = np.pad(mask, 1)
    for x0, y0 in seg.reshape(-1, 2):
        cells = {(int(np.floor(y0 - 0.5 + dy)) + 1, int(np.floor(x0 - 0.5 + dx)) + 1)
                 for dy in (0.0, 0.5) for dx in (0.0, 0.5)}
        values = {bool(padded[r, c]) for r, c in cells}
        assert values == {True, False}, (x0, y0)


def test_a_saddle_keeps_diagonal_pixels_apart():
    mask = np.array([[1, 0], [0, 1]], bool)
    seg = mask_outline(mask)
    assert len(seg) == 8 and closed(seg)  # two diamonds, not one outline around both
