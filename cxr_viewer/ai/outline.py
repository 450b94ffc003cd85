"""The outline of a binary mask as line segments, for drawing a contour over an image.

Marching squares (Lorensen and Cline's method in two dimensions) on the mask itself: each 2 x 2
block of pixel centres that is neither all inside nor all outside contributes one segment (two at
a saddle) between the midpoints of the block's edges. The segments need no ordering: a viewer
draws them as independent pairs with a pen of constant screen width, so the outline stays a thin
line at any zoom. Pure numpy, Qt-free.

Coordinates are image pixel coordinates (x = column, y = row) with pixel (r, c) covering
[c, c + 1) x [r, r + 1), as pyqtgraph's ImageItem draws it; pixel centres are at +0.5. The mask
is padded with background, so a structure touching the image border still gets a closed outline.
"""

from __future__ import annotations

import numpy as np

# the midpoints of a block's edges, relative to its top-left pixel centre: top, right, bottom, left
_EDGES = np.array([[0.5, 0.0], [1.0, 0.5], [0.5, 1.0], [0.0, 0.5]], dtype=np.float32)
# case = 8 * top-left + 4 * top-right + 2 * bottom-right + 1 * bottom-left (inside = 1) ->
# the edge pairs its segments join; the saddles (5, 10) keep the two inside corners apart
_FIRST = np.full((16, 2), -1, dtype=np.int8)
_SECOND = np.full((16, 2), -1, dtype=np.int8)
for _case, _pair in {1: (3, 2), 2: (2, 1), 3: (3, 1), 4: (0, 1), 5: (0, 1), 6: (0, 2), 7: (0, 3), 8: (0, 3),
                     9: (0, 2), 10: (0, 3), 11: (0, 1), 12: (3, 1), 13: (2, 1), 14: (3, 2)}.items():
    _FIRST[_case] = _pair
_SECOND[5] = (3, 2)
_SECOND[10] = (2, 1)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (N, 2, 2) float32 segments ``[[x0, y0], [x1, y1]]`` along the mask's boundary
    (N = 0 for an empty mask)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask is two-dimensional, not {mask.shape}")
    rows = np.nonzero(mask.any(1))[0]
    if not len(rows):
        return np.zeros((0, 2, 2), np.float32)
    cols = np.nonzero(mask.any(0))[0]
    r0, c0 = int(rows[0]), int(cols[0])
    # the bounding box with one pixel of background around it
    m = np.pad(mask[r0:rows[-1] + 1, c0:cols[-1] + 1], 1).astype(np.uint8)
    case = (m[:-1, :-1] << 3) | (m[:-1, 1:] << 2) | (m[1:, 1:] << 1) | m[1:, :-1]
    segments = []
    for table in (_FIRST, _SECOND):
        pairs = table[case]
        r, c = np.nonzero(pairs[..., 0] >= 0)
        if not len(r):
            continue
        p = pairs[r, c].astype(np.intp)
        # the block's top-left pixel centre: padded (r, c) is image (r0 + r - 1, c0 + c - 1)
        origin = np.stack([c0 + c - 0.5, r0 + r - 0.5], axis=1).astype(np.float32)
        segments.append(np.stack([origin + _EDGES[p[:, 0]], origin + _EDGES[p[:, 1]]], axis=1))
    return np.concatenate(segments) if segments else np.zeros((0, 2, 2), np.float32)
