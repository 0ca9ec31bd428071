"""Label maps: the ignore value, default class names, per-class counts and the one PNG format.

Every label map we write (bulk outputs, the Python API's JSON, the service's `/predict`) is the
same lossless PNG: a palette PNG whose pixel values are the class ids, shown in PaddleX's colours,
up to 256 classes; 16-bit gray beyond. `decode_label` reads it back (and any dataset label: 8-bit
gray or palette). OpenCV cannot read palette PNGs as indices, hence Pillow here.
"""

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_INDEX = 255  # label value of unlabelled pixels (PaddleSeg's convention)


def color_map(n=256):
    """(n, 3) uint8 RGB palette, PaddleX's choice: the PASCAL VOC bit pattern, shifted so class 0
    gets VOC colour 1 (dark red) rather than black."""
    ids = np.arange(1, n + 1)
    cmap = np.zeros((n, 3), np.uint8)
    for bit in range(8):
        for channel in range(3):
            cmap[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return cmap


PALETTE = color_map()


class LabelError(ValueError):
    pass


def default_class_names(num_classes):
    """Names for classes nobody named: class_0, class_1, ..."""
    return [f"class_{i}" for i in range(num_classes)]


def pixel_counts(label_map, class_names):
    """{class name: pixels} of the classes present (classes past `class_names` are class_<k>)."""
    counts = np.bincount(np.asarray(label_map).ravel(), minlength=len(class_names or ()))
    names = list(class_names or ()) + default_class_names(len(counts))[len(class_names or ()):]
    return {n: int(c) for n, c in zip(names, counts) if c}


def encode_label_png(label_map):
    """(H, W) class ids -> lossless PNG bytes: palette PNG up to 256 classes, 16-bit gray beyond."""
    label_map = np.asarray(label_map)
    if label_map.size and label_map.max() > 255:
        return cv2.imencode(".png", label_map.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    img = Image.fromarray(label_map.astype(np.uint8), mode="P")
    img.putpalette(PALETTE.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # labels compress nearly as well at level 1, much faster
    return buf.getvalue()


def decode_label(data, name="label"):
    """PNG bytes -> (H, W) integer class ids. Palette PNGs give their indices; colour labels are refused."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise LabelError(f"label {name} cannot be read ({e})") from None
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA"):
        raise LabelError(f"label {name} has {img.mode} colour channels; labels must be single-channel class ids "
                         "(gray or palette PNG). Convert colour masks with CheckDataset.convert (VOC)")
    if img.mode == "1":
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim != 2 or arr.size == 0:
        raise LabelError(f"label {name} has shape {arr.shape}; expected a non-empty H x W map")
    return arr
