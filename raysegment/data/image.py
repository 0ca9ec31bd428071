"""Decode image bytes to an RGB uint8 array, with the conversions every reader of ours shares.

Conversions (documented in the README): grayscale is replicated to three channels; an alpha
channel is dropped (pixels keep their colour, as PaddleX's reader does); 16-bit images are scaled
to 8 bits (value >> 8). Anything that is not a whole, decodable, non-empty image is an ImageError
that names the input. OpenCV >= 5 refuses truncated JPEGs and PNGs outright (4.x decoded a cut
JPEG into a half-grey image with only a warning), hence the version floor in pyproject.toml.
"""

import io

import cv2
import numpy as np


class ImageError(ValueError):
    pass


class ImageTooLarge(ImageError):
    def __init__(self, message, pixels, limit):
        super().__init__(message)
        self.pixels, self.limit = pixels, limit


def decode_image(data, name="image", max_pixels=None):
    """bytes -> (H, W, 3) uint8 RGB; ImageError naming `name` for empty, truncated or non-image bytes."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    if max_pixels:
        _check_header_size(data, name, max_pixels)  # before decoding: a small file can hold a huge image
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{name} is not a decodable image (damaged, truncated or not an image format OpenCV reads)")
    return to_rgb8(img, name, max_pixels)


def _check_header_size(data, name, max_pixels):
    from PIL import Image, UnidentifiedImageError

    try:
        width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError):
        return  # a format Pillow does not know: OpenCV decides, and to_rgb8 checks the size after
    _check_pixels(width, height, name, max_pixels)


def _check_pixels(width, height, name, max_pixels):
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(f"{name} has {width}x{height} pixels, over the limit of {max_pixels}; "
                            "resize it or raise Predict.max_image_pixels", width * height, max_pixels)


def to_rgb8(img, name="image", max_pixels=None):
    """An ndarray as decoded by OpenCV (BGR/BGRA/gray, 8 or 16 bit) -> (H, W, 3) uint8 RGB."""
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"{name} has shape {img.shape}; expected a non-empty H x W (x C) image")
    _check_pixels(img.shape[1], img.shape[0], name, max_pixels)
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


def encode_image(rgb, ext=".jpg"):
    """(H, W, 3) uint8 RGB -> image file bytes in the format `ext` names (".jpg", ".png", ...)."""
    try:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"cannot write an image as {ext!r}; use a .png or .jpg name")
    return buf.tobytes()
