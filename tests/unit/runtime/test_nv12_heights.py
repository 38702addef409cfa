"""NV12 frames of every even height round-trip through the runtime colour helpers (H = 2 mod 4 too)."""

import numpy as np
import pytest

from engine.problems import HbError
from engine.runtime.color import nv12_to_rgb, rgb_to_nv12


@pytest.mark.parametrize("h,w", [(4, 4), (6, 4), (10, 8), (480, 640)])
def test_nv12_round_trip_any_even_height(h, w):
    rgb = np.full((h, w, 3), 128, np.uint8)
    nv12 = rgb_to_nv12(rgb)
    assert nv12.shape == (h * 3 // 2, w)
    back = nv12_to_rgb(nv12)
    assert back.shape == (h, w, 3)
    assert np.abs(back.astype(int) - 128).max() <= 2


@pytest.mark.parametrize("shape", [(9, 5), (10, 4)])  # odd width; rows not 3/2 of an image height
def test_impossible_nv12_shapes_are_refused(shape):
    with pytest.raises(HbError, match="odd number"):
        nv12_to_rgb(np.zeros(shape, np.uint8))
