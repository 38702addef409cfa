"""engine.runtime.color against OpenCV on real photos, BT.601 anchor values, NV12 layout and errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.problems import HbError
from engine.runtime import (
    bgr_to_nv12,
    bgr_to_yuv444,
    chw_to_hwc,
    hwc_to_chw,
    nv12_to_bgr,
    nv12_to_rgb,
    nv12_to_yuv444,
    rgb_to_nv12,
    rgb_to_yuv444,
    yuv444_to_bgr,
    yuv444_to_nv12,
    yuv444_to_rgb,
)
from tests.unit.preprocess.preprocess_support import PHOTOS, photo

NAMES = sorted(PHOTOS)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def i420_to_nv12(i420: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV's planar I420 (Y, U plane, V plane) → NV12 (Y, interleaved UV)."""
    y = i420[:h]
    u = i420[h:h + h // 4].reshape(h // 2, w // 2)
    v = i420[h + h // 4:].reshape(h // 2, w // 2)
    return np.concatenate([y, np.stack([u, v], axis=-1).reshape(h // 2, w)])


def block_mean_image(img: np.ndarray) -> np.ndarray:
    """Each 2×2 block replaced by its mean colour: OpenCV's I420 takes a block's chroma from one pixel,
    ours averages the block's chroma, and the two agree on an image whose blocks are uniform."""
    h, w, _ = img.shape
    mean = img.reshape(h // 2, 2, w // 2, 2, 3).astype(np.float64).mean(axis=(1, 3))
    return np.rint(mean).astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)


# ------------------------------------------------------------------ against OpenCV

@pytest.mark.parametrize("name", NAMES)
def test_rgb_to_nv12_video_range_matches_opencv_i420(name):
    img = photo(name)
    h, w, _ = img.shape
    ours = rgb_to_nv12(img, full_range=False)
    assert ours.shape == (h * 3 // 2, w) and ours.dtype == np.uint8
    assert max_diff(ours[:h], cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420)[:h]) <= 2
    cv_uv = i420_to_nv12(cv2.cvtColor(block_mean_image(img), cv2.COLOR_RGB2YUV_I420), h, w)[h:]
    assert max_diff(ours[h:], cv_uv) <= 2


@pytest.mark.parametrize("name", NAMES)
def test_bgr_to_nv12_video_range_matches_opencv_i420(name):
    bgr = np.ascontiguousarray(photo(name)[..., ::-1])
    h, w, _ = bgr.shape
    ours = bgr_to_nv12(bgr, full_range=False)
    assert max_diff(ours[:h], cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)[:h]) <= 2
    cv_uv = i420_to_nv12(cv2.cvtColor(block_mean_image(bgr), cv2.COLOR_BGR2YUV_I420), h, w)[h:]
    assert max_diff(ours[h:], cv_uv) <= 2


@pytest.mark.parametrize("name", NAMES)
def test_nv12_to_rgb_and_bgr_video_range_match_opencv(name):
    img = photo(name)
    h, w, _ = img.shape
    nv12 = i420_to_nv12(cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420), h, w)  # OpenCV's own NV12 frame
    assert max_diff(nv12_to_rgb(nv12, full_range=False), cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12)) <= 2
    assert max_diff(nv12_to_bgr(nv12, full_range=False), cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12)) <= 2


@pytest.mark.parametrize("name", NAMES)
def test_yuv444_full_range_matches_opencv_ycrcb(name):
    img = photo(name)
    bgr = np.ascontiguousarray(img[..., ::-1])
    cv_yuv = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]  # Y Cr Cb → Y U V
    assert max_diff(rgb_to_yuv444(img), cv_yuv) <= 2
    assert max_diff(bgr_to_yuv444(bgr), cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[..., [0, 2, 1]]) <= 2
    ycrcb = np.ascontiguousarray(cv_yuv[..., [0, 2, 1]])
    assert max_diff(yuv444_to_rgb(cv_yuv), cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)) <= 2
    assert max_diff(yuv444_to_bgr(cv_yuv), cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)) <= 2


@pytest.mark.parametrize("name", NAMES)
def test_yuv444_video_range_matches_opencv_i420_samples(name):
    img = photo(name)
    h, w, _ = img.shape
    ours = rgb_to_yuv444(img, full_range=False)
    cv_nv12 = i420_to_nv12(cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420), h, w)
    assert max_diff(ours[..., 0], cv_nv12[:h]) <= 2
    # OpenCV's I420 takes each block's chroma from its top-left pixel: compare exactly those samples
    assert max_diff(ours[::2, ::2, 1:], cv_nv12[h:].reshape(h // 2, w // 2, 2)) <= 2


@pytest.mark.parametrize("name", NAMES)
def test_nv12_full_range_decodes_like_opencv_ycrcb(name):
    img = photo(name)
    nv12 = rgb_to_nv12(img, full_range=True)
    ycrcb = np.ascontiguousarray(nv12_to_yuv444(nv12)[..., [0, 2, 1]])
    assert max_diff(nv12_to_rgb(nv12, full_range=True), cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)) <= 2
    assert max_diff(rgb_to_nv12(img)[: img.shape[0]], rgb_to_yuv444(img)[..., 0]) == 0


# ------------------------------------------------------------------ BT.601 anchors and round trips

def test_anchor_values_of_both_ranges():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    full = rgb_to_yuv444(colours, full_range=True)[0]
    video = rgb_to_yuv444(colours, full_range=False)[0]
    assert full[0].tolist() == [0, 128, 128] and full[1].tolist() == [255, 128, 128]
    assert full[2].tolist() == [76, 85, 255]  # V = 255.5 clamps to 255
    assert full[3].tolist() == [29, 255, 107]
    assert video[0].tolist() == [16, 128, 128] and video[1].tolist() == [235, 128, 128]
    assert video[2].tolist() == [81, 90, 240] and video[3].tolist() == [41, 240, 110]
    assert yuv444_to_rgb(np.array([[[235, 128, 128]]], np.uint8), full_range=False).tolist() == [[[255, 255, 255]]]


@pytest.mark.parametrize("full_range,limit", [(True, 1), (False, 2)])
@pytest.mark.parametrize("name", NAMES)
def test_yuv444_round_trip(name, full_range, limit):
    img = photo(name)
    assert max_diff(yuv444_to_rgb(rgb_to_yuv444(img, full_range), full_range), img) <= limit
    bgr = np.ascontiguousarray(img[..., ::-1])
    assert max_diff(yuv444_to_bgr(bgr_to_yuv444(bgr, full_range), full_range), bgr) <= limit


@pytest.mark.parametrize("full_range", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_nv12_round_trip_loses_only_chroma_detail(name, full_range):
    img = photo(name)
    back = nv12_to_rgb(rgb_to_nv12(img, full_range), full_range=full_range).astype(np.float64)
    assert np.abs(back - img).mean() < 3.0
    assert max_diff(bgr_to_nv12(np.ascontiguousarray(img[..., ::-1]), full_range), rgb_to_nv12(img, full_range)) == 0


# ------------------------------------------------------------------ NV12 layout, batches, buffers

def test_nv12_layout_and_nearest_chroma():
    img = photo("chelsea")
    h, w, _ = img.shape
    nv12 = rgb_to_nv12(img)
    yuv = nv12_to_yuv444(nv12)
    assert yuv.shape == (h, w, 3) and yuv.dtype == np.uint8
    assert np.array_equal(yuv[..., 0], nv12[:h])
    uv = nv12[h:].reshape(h // 2, w // 2, 2)
    for dy in (0, 1):
        for dx in (0, 1):
            assert np.array_equal(yuv[dy::2, dx::2, 1:], uv)
    assert np.array_equal(yuv444_to_nv12(yuv), nv12)  # averaging four equal samples changes nothing


def test_yuv444_to_nv12_averages_each_block():
    yuv = np.zeros((2, 4, 3), np.uint8)
    yuv[..., 1] = [[10, 11, 100, 100], [13, 13, 100, 101]]  # means 11.75 and 100.25
    yuv[..., 2] = 200
    assert yuv444_to_nv12(yuv)[2].tolist() == [12, 200, 100, 200]


def test_batches_and_flat_buffers():
    a, b = photo("coffee")[:96, :128], photo("astronaut")[:96, :128]
    batch = np.stack([a, b])
    nv12 = rgb_to_nv12(batch)
    assert nv12.shape == (2, 144, 128)
    assert np.array_equal(nv12[1], rgb_to_nv12(b))
    assert np.array_equal(nv12_to_rgb(nv12)[0], nv12_to_rgb(nv12[0]))
    flat = nv12[0].ravel()  # a camera buffer: H*W*3/2 bytes
    assert np.array_equal(nv12_to_yuv444(flat, 96, 128), nv12_to_yuv444(nv12[0]))
    assert np.array_equal(nv12_to_yuv444(nv12.reshape(2, -1), 96, 128), nv12_to_yuv444(nv12))
    assert rgb_to_yuv444(batch).shape == (2, 96, 128, 3)


@pytest.mark.parametrize("call,shape", [
    (lambda: rgb_to_nv12(np.zeros((301, 450, 3), np.uint8)), "301x450x3"),
    (lambda: bgr_to_nv12(np.zeros((2, 300, 451, 3), np.uint8)), "2x300x451x3"),
    (lambda: nv12_to_rgb(np.zeros(301 * 450 * 3 // 2, np.uint8), 301, 450), "301x450"),
    (lambda: nv12_to_yuv444(np.zeros((451, 300), np.uint8)), "451x300"),
    (lambda: yuv444_to_nv12(np.zeros((4, 5, 3), np.uint8)), "4x5x3"),
])
def test_odd_sizes_give_hb_compile_message(call, shape):
    with pytest.raises(HbError) as err:
        call()
    (problem,) = err.value.problems
    assert problem.code == "input-nv12-odd-size"
    assert problem.message == f"The input shape: {shape} is invalid, nv12 type does not support odd number input size"


def test_wrong_nv12_buffers_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        nv12_to_rgb(np.zeros((6, 4), np.float32))
    with pytest.raises(ValueError, match="does not hold a 4x4 image"):
        nv12_to_rgb(np.zeros(20, np.uint8), 4, 4)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb_to_nv12(np.zeros((4, 4), np.uint8))


# ------------------------------------------------------------------ layout helpers

def test_layout_helpers_with_and_without_batch():
    img = photo("coffee")[:6, :8]
    chw = hwc_to_chw(img)
    assert chw.shape == (3, 6, 8) and chw.flags.c_contiguous
    assert np.array_equal(chw[1], img[..., 1])
    assert np.array_equal(chw_to_hwc(chw), img)
    batch = np.stack([img, img[::-1]])
    nchw = hwc_to_chw(batch)
    assert nchw.shape == (2, 3, 6, 8) and np.array_equal(nchw[1, 2], img[::-1, :, 2])
    assert np.array_equal(chw_to_hwc(nchw), batch)
    with pytest.raises(ValueError):
        hwc_to_chw(np.zeros((2, 2)))
