"""Decode image bytes to an RGB uint8 array, with the conversions every reader of ours shares.

Conversions (documented in the README): grayscale is replicated to three channels; an alpha
channel is dropped (pixels keep their colour, as PaddleX's reader does); 16-bit images are scaled
to 8 bits (value >> 8). Anything that is not a whole, decodable, non-empty image is an ImageError
that names the input. OpenCV >= 5 refuses truncated JPEGs and PNGs outright (4.x decoded a cut
JPEG into a half-grey image with only a warning), hence the version floor in pyproject.toml.
"""

import cv2
import numpy as np


class ImageError(ValueError):
    pass


def decode_image(data, name="image", max_pixels=None):
    """bytes -> (H, W, 3) uint8 RGB; ImageError naming `name` for empty, truncated or non-image bytes."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{name} is not a decodable image (damaged, truncated or not an image format OpenCV reads)")
    return to_rgb8(img, name, max_pixels)


def to_rgb8(img, name="image", max_pixels=None):
    """An ndarray as decoded by OpenCV (BGR/BGRA/gray, 8 or 16 bit) -> (H, W, 3) uint8 RGB."""
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"{name} has shape {img.shape}; expected a non-empty H x W (x C) image")
    if max_pixels and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(
            f"{name} has {img.shape[1]}x{img.shape[0]} pixels, over the limit of {max_pixels}; "
            "resize it or raise Predict.max_image_pixels"
        )
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{name} has pixel type {img.dtype}; expected 8- or 16-bit integers")
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageError(f"{name} has {img.shape[2]} channels; expected 1, 3 or 4")
