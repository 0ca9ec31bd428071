"""Expand what a user passes to `predict` into single inputs, lazily.

An input is an ndarray, a file path, a directory (its images, recursively, sorted), an http(s)
URL, an s3:// URI or prefix, or a list of those, as PaddleX accepts.
"""

import os

import numpy as np

from .. import storage
from .image import ImageError, decode_image, to_rgb8


def iter_inputs(inputs):
    """Yield (uri or None, item) where item is an ndarray or a uri still to be read."""
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, np.ndarray):
            yield None, item
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ImageError(f"input {item!r} is a {type(item).__name__}; pass an ndarray, a path, a URL or an s3:// URI")
        uri = os.fspath(item)
        if storage.is_url(uri):
            yield uri, uri
        elif storage.is_s3(uri):
            if storage.is_image_name(uri):
                yield uri, uri
            else:
                found = storage.list_images(uri)
                if not found:
                    raise storage.StorageError(f"no images under {uri}")
                yield from ((u, u) for u in found)
        elif os.path.isdir(uri):
            found = storage.list_images(uri)
            if not found:
                raise storage.StorageError(f"directory {uri!r} has no images ({', '.join(storage.IMAGE_SUFFIXES)})")
            yield from ((p, p) for p in found)
        else:
            yield uri, uri


def load_rgb(uri, item, max_pixels=None):
    """(uri, item) from iter_inputs -> (H, W, 3) uint8 RGB. Arrays are taken as OpenCV gives them
    (BGR, BGRA or gray; 8 or 16 bit), as PaddleX takes them."""
    if isinstance(item, np.ndarray):
        return to_rgb8(item, name="array input", max_pixels=max_pixels)
    return decode_image(storage.read_bytes(item), name=uri, max_pixels=max_pixels)
