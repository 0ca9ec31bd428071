"""Decoding: documented conversions for gray/RGBA/16-bit, and clear errors for everything broken."""

import cv2
import numpy as np
import pytest

from conftest import jpeg_bytes, png_bytes, random_image
from raysegment.data import transforms as T
from raysegment.data.image import ImageError, decode_image, to_rgb8


def test_rgb_jpeg_and_png_decode_to_rgb():
    rgb = random_image(20, 30)
    out = decode_image(png_bytes(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    np.testing.assert_array_equal(out, rgb)
    assert decode_image(jpeg_bytes(rgb)).shape == (20, 30, 3)


def test_gray_is_replicated_to_three_channels():
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    out = decode_image(png_bytes(gray))
    assert out.shape == (10, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_alpha_is_dropped_keeping_colour():
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # fully transparent
    out = decode_image(png_bytes(bgra))
    assert out.shape == (4, 5, 3)
    assert (out[0, 0] == [30, 20, 10]).all()


def test_16_bit_is_scaled_to_8_bit():
    img16 = np.full((6, 7, 3), 0xABCD, np.uint16)
    out = decode_image(png_bytes(img16))
    assert out.dtype == np.uint8 and (out == 0xAB).all()


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "is empty"),
        (b"this is not an image at all", "is not a decodable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not a decodable image"),
    ],
)
def test_broken_bytes_are_refused_by_name(data, match):
    with pytest.raises(ImageError, match=f"photo.png {match}"):
        decode_image(data, name="photo.png")


@pytest.mark.parametrize("keep", [0.5, 0.95, -2])
def test_truncated_jpeg_is_refused(keep):
    data = jpeg_bytes(random_image(256, 256))
    cut = data[:keep] if isinstance(keep, int) and keep < 0 else data[: int(len(data) * keep)]
    with pytest.raises(ImageError, match="cam.jpg is not a decodable image"):
        decode_image(cut, name="cam.jpg")


def test_truncated_png_is_refused():
    data = png_bytes(random_image(64, 64))
    with pytest.raises(ImageError, match="not a decodable image"):
        decode_image(data[: len(data) // 2], name="x.png")


def test_pixel_limit():
    with pytest.raises(ImageError, match=r"big.png has 30x20 pixels, over the limit of 500"):
        decode_image(png_bytes(random_image(20, 30)), name="big.png", max_pixels=500)


@pytest.mark.parametrize("shape,dtype", [((0, 5, 3), np.uint8), ((4, 5, 2), np.uint8), ((4, 5, 3), np.float32), ((4,), np.uint8)])
def test_bad_arrays_are_refused(shape, dtype):
    with pytest.raises(ImageError):
        to_rgb8(np.zeros(shape, dtype), name="array input")


@pytest.mark.parametrize(
    "size,target,kw,expected",
    [
        ((480, 360), -1, {}, (480, 360)),
        ((480, 360), None, {}, (480, 360)),
        ((480, 360), (240, 180), {"keep_ratio": False}, (240, 180)),
        ((480, 360), 512, {"keep_ratio": True}, (512, 384)),  # long side to 512
        ((480, 360), (1024, 512), {"keep_ratio": True}, (683, 512)),  # short side bounded by 512
        ((100, 50), (64, 64), {"keep_ratio": False, "size_divisor": 32}, (64, 64)),
        ((100, 50), (70, 40), {"keep_ratio": False, "size_divisor": 32}, (96, 64)),
    ],
)
def test_resized_size(size, target, kw, expected):
    assert T.resized_size(*size, target, **kw) == expected


def test_normalize_and_restore_mask():
    img = np.full((2, 3, 3), 255, np.uint8)
    chw = T.normalize_to_chw(img, [0.5] * 3, [0.5] * 3)
    assert chw.shape == (3, 2, 3) and np.allclose(chw, 1.0)
    labels = np.array([[0, 1], [2, 3]], np.int32)
    big = T.restore_mask(labels, 4, 4)
    assert set(np.unique(big)) == {0, 1, 2, 3} and big.shape == (4, 4)  # nearest: no new labels


def test_overlay_legend_lists_the_classes_present_with_their_colours():
    from raysegment.data.visualize import PALETTE, overlay, overlay_with_legend

    rgb = np.full((360, 480, 3), 128, np.uint8)
    mask = np.zeros((360, 480), np.int32)
    mask[:, 300:] = 2  # class 2 on 37.5% of the pixels, class 0 on the rest; class 1 absent
    vis = overlay_with_legend(rgb, mask, ["sky", "road", "car"])
    assert vis.shape[0] == 360 and vis.shape[1] > 480
    np.testing.assert_array_equal(vis[:, :480], overlay(rgb, mask, ignore_index=-1))  # the photo's part is the overlay
    panel = vis[:, 480:].reshape(-1, 3)
    has = {c: bool((panel == PALETTE[c]).all(axis=1).any()) for c in range(3)}
    assert has == {0: True, 1: False, 2: True}
    rows = [np.flatnonzero((vis[:, 480:] == PALETTE[c]).all(axis=2).any(axis=1)) for c in (0, 2)]
    assert rows[0].min() < rows[1].min()  # most pixels first


@pytest.mark.parametrize("size", [None, (64, 48), (20, 14)])  # as is, up, down
def test_normalize_to_chw_matches_the_numpy_steps(size):
    """The one-pass OpenCV preprocessing gives what resize + ((x / 255) - mean) / std + HWC->CHW
    give step by step, with per-channel mean and std, on a non-contiguous view."""
    img = np.random.default_rng(1).integers(0, 256, (30, 80, 3), dtype=np.uint8)[:, ::2]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    resized = T.resize(np.ascontiguousarray(img), size) if size else img
    expected = ((resized.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)
    got = T.normalize_to_chw(img, mean, std, size)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5
