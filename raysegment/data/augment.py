"""Training augmentations (PaddleSeg's recipe) as small numpy/OpenCV functions on one image/label pair.

ResizeStepScaling -> RandomPaddingCrop -> RandomHorizontalFlip -> RandomDistort -> Normalize.
Images are resized bilinearly, labels with nearest neighbour (labels stay exact); padding is
mid-grey for the image (0 after normalisation) and 255 (ignore) for the label.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from .labels import IGNORE_INDEX
from .transforms import normalize_to_chw


@dataclass(frozen=True)
class AugmentSpec:
    crop_size: tuple[int, int]  # (width, height)
    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    flip: bool = True
    distort: float = 0.5  # brightness, contrast and saturation range; 0 turns distortion off
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    @classmethod
    def from_train(cls, train):
        return cls(tuple(train.crop_size), train.min_scale, train.max_scale, train.scale_step, train.flip, train.distort)


def random_scale(img, label, rng, min_scale, max_scale, step):
    """Scale by a factor drawn from min_scale, min_scale + step, ..., max_scale."""
    if min_scale == max_scale:
        scale = min_scale
    else:
        scale = rng.choice(np.arange(min_scale, max_scale + step / 2, step)) if step > 0 else rng.uniform(min_scale, max_scale)
    if scale == 1:
        return img, label
    h, w = label.shape
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR), cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)


def random_pad_crop(img, label, crop_wh, rng):
    """Pad up to the crop size when smaller, then cut a random crop_wh window."""
    cw, ch = crop_wh
    h, w = label.shape
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(127.5, 127.5, 127.5))
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        h, w = label.shape
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]


def random_distort(img, rng, strength):
    """Brightness, contrast and saturation, each applied with probability 0.5, factors in 1 +- strength."""
    out = img.astype(np.float32)
    if rng.random() < 0.5:
        out *= rng.uniform(1 - strength, 1 + strength)
    if rng.random() < 0.5:
        mean = out.mean()
        out = (out - mean) * rng.uniform(1 - strength, 1 + strength) + mean
    if rng.random() < 0.5:
        gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
        out = (out - gray[..., None]) * rng.uniform(1 - strength, 1 + strength) + gray[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def augment_pair(img, label, spec, rng):
    """(H, W, 3) uint8 RGB, (H, W) ids -> ((3, ch, cw) float32, (ch, cw) int64)."""
    img, label = random_scale(img, label, rng, spec.min_scale, spec.max_scale, spec.scale_step)
    img, label = random_pad_crop(img, label, spec.crop_size, rng)
    if spec.flip and rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    if spec.distort > 0:
        img = random_distort(img, rng, spec.distort)
    return normalize_to_chw(np.ascontiguousarray(img), spec.mean, spec.std), np.ascontiguousarray(label).astype(np.int64)
