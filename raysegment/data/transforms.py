"""Inference transforms as small numpy/OpenCV functions, mirroring the `Deploy.transforms` of a
PaddleX `inference.yml` (Resize, Normalize), and their inverse for the predicted mask."""

import math

import cv2
import numpy as np

INTERP = {
    "NEAREST": cv2.INTER_NEAREST,
    "LINEAR": cv2.INTER_LINEAR,
    "CUBIC": cv2.INTER_CUBIC,
    "AREA": cv2.INTER_AREA,
    "LANCZOS4": cv2.INTER_LANCZOS4,
}


def resized_size(width, height, target_size, keep_ratio=True, size_divisor=None):
    """(w, h) an image is resized to; target_size -1 (or None) keeps the image as it is.

    With keep_ratio, the scale is the largest that fits the long side in max(target) and the short
    side in min(target); size_divisor rounds both sides up to a multiple.
    """
    if target_size is None or target_size == -1 or target_size == (-1, -1):
        return width, height
    tw, th = (target_size, target_size) if isinstance(target_size, int) else target_size
    if keep_ratio:
        scale = min(max(tw, th) / max(width, height), min(tw, th) / min(width, height))
        tw, th = round(width * scale), round(height * scale)
    if size_divisor:
        tw, th = (math.ceil(s / size_divisor) * size_divisor for s in (tw, th))
    return int(tw), int(th)


def resize(img, size_wh, interp="LINEAR"):
    if (img.shape[1], img.shape[0]) == tuple(size_wh):
        return img
    return cv2.resize(img, tuple(size_wh), interpolation=INTERP[interp])


def normalize_to_chw(img, mean, std, size_wh=None, interp="LINEAR"):
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 ((x / 255) - mean) / std, resized to `size_wh`
    first when given. One OpenCV pass (dnn.blobFromImageWithParams: resize, scale, subtract, HWC to
    CHW): 3x the numpy steps at 960x720, with the same values."""
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = (*(1.0 / (255.0 * s) for s in std), 0.0)
    params.mean = (*(255.0 * m for m in mean), 0.0)
    params.ddepth, params.datalayout = cv2.CV_32F, cv2.DNN_LAYOUT_NCHW
    if size_wh is not None and (img.shape[1], img.shape[0]) != tuple(size_wh):
        params.size, params.interpolation = tuple(size_wh), INTERP[interp]
    return cv2.dnn.blobFromImageWithParams(np.ascontiguousarray(img), params)[0]


def restore_mask(label_map, width, height):
    """A (h, w) label map -> the original (height, width) with nearest neighbour: labels stay labels."""
    if label_map.shape == (height, width):
        return label_map
    return cv2.resize(label_map, (width, height), interpolation=cv2.INTER_NEAREST)


def window_spans(length, window, stride):
    """Sliding windows along one side of `length` pixels -> [(start, core_start, core_end)].

    Windows of `window` pixels start every `stride` pixels, the last one flush with the end (so
    every window is whole and they all share one shape); a window as long as the side or longer is
    the side itself. Each pixel belongs to the core of exactly one window: where two windows
    overlap, the boundary is the middle of the overlap, so every pixel is predicted by the window
    in which it lies furthest from an edge (the context a window's border lacks is what makes seams).
    """
    if window >= length:
        return [(0, 0, length)]
    starts = list(range(0, length - window, stride)) + [length - window]
    cuts = [0] + [(nxt + cur + window) // 2 for cur, nxt in zip(starts, starts[1:])] + [length]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]
