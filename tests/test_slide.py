"""Slide mode (huge images, window by window): window geometry, exact assembly, seams, config keys."""

import os

import cv2
import numpy as np
import pytest

import raysegment
from conftest import random_image
from raysegment.config import ConfigError, load_config
from raysegment.data.transforms import window_spans
from raysegment.infer.options import check_slide

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raysegment", "data", "models", "PP-LiteSeg-T_camvid")
SAMPLE = os.path.join(os.path.dirname(BUNDLED), "..", "samples", "0016E5_07959.jpg")


@pytest.mark.parametrize("length, window, stride", [(1000, 256, 192), (1000, 256, 256), (257, 256, 1), (512, 256, 256), (100, 256, 64)])
def test_window_cores_cover_every_pixel_once_inside_their_window(length, window, stride):
    spans = window_spans(length, window, stride)
    covered = np.zeros(length, int)
    for start, a, b in spans:
        assert start <= a < b <= start + min(window, length)  # a core lies inside its window
        assert start + min(window, length) <= length  # every window whole
        covered[a:b] += 1
    assert (covered == 1).all()
    if window < length:  # in an overlap, the boundary is its middle
        for (s0, _, b0), (s1, a1, _) in zip(spans, spans[1:]):
            assert b0 == a1 == (s1 + s0 + window) // 2


def test_slide_settings_are_checked():
    assert check_slide(512) == ((512, 512), (384, 384))
    assert check_slide([512, 256], [256, 128]) == ((512, 256), (256, 128))
    with pytest.raises(ValueError, match="larger than slide_window"):
        check_slide(256, 300)
    with pytest.raises(ValueError, match="slide_stride is set but slide_window is not"):
        check_slide(None, 128)
    with pytest.raises(ConfigError, match=r"Predict.slide_window must be a positive int or \(width, height\)"):
        load_config(None, ["Predict.slide_window=[0,5]"])


def test_a_window_as_large_as_the_image_gives_the_whole_image_masks(inference_dir):
    img = random_image(120, 200, seed=4)
    (whole,) = raysegment.create_model(model_dir=inference_dir).predict(img)
    (slid,) = raysegment.create_model(model_dir=inference_dir, slide_window=(200, 120)).predict(img)
    np.testing.assert_array_equal(slid["pred"], whole["pred"])


@pytest.fixture(scope="module")
def mosaic():
    """A 2 x 3 mosaic of one street scene, and its known mask: each tile's own whole-image mask
    (the trained bundled model; 320 x 256 tiles, no resize)."""
    tile = cv2.resize(cv2.imread(SAMPLE), (320, 256), interpolation=cv2.INTER_AREA)
    (res,) = raysegment.create_model(model_dir=BUNDLED, target_size=-1).predict(tile)
    return np.tile(tile, (2, 3, 1)), np.tile(res["pred"][0], (2, 3))


@pytest.mark.slow
def test_windows_on_the_tiles_assemble_the_known_mask_exactly(mosaic):
    big, truth = mosaic
    model = raysegment.create_model(model_dir=BUNDLED, target_size=-1, slide_window=(320, 256), slide_stride=(320, 256))
    (res,) = model.predict(big, batch_size=4)
    assert res["pred"].shape == (1, 512, 960)
    np.testing.assert_array_equal(res["pred"][0], truth)


@pytest.mark.slow
def test_overlapping_windows_are_at_least_as_good_at_the_seams(mosaic):
    """Windows that do not line up with the tiles: with overlap, each pixel comes from the window
    that sees it from furthest inside, and more of the known mask is right than without."""
    big, truth = mosaic
    accuracy = {}
    for name, stride in (("no overlap", (288, 224)), ("overlap", (144, 112))):
        model = raysegment.create_model(model_dir=BUNDLED, target_size=-1, slide_window=(288, 224), slide_stride=stride)
        (res,) = model.predict(big)
        accuracy[name] = float((res["pred"][0] == truth).mean())
    assert accuracy["overlap"] >= accuracy["no overlap"], accuracy
    assert accuracy["no overlap"] > 0.8, accuracy  # measured with the bundled model (run here at 1x, no resize): 0.868 without overlap, 0.915 with
