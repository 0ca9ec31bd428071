"""Pictures of label maps with OpenCV: coloured maps (PaddleX's palette, labels.PALETTE), overlays, and a class histogram."""

import cv2
import numpy as np

from .labels import IGNORE_INDEX, PALETTE


def colorize(label_map):
    """(H, W) labels -> (H, W, 3) uint8 RGB pseudo-colour image."""
    label_map = np.asarray(label_map)
    return PALETTE[label_map if label_map.dtype == np.uint8 else label_map % 256]


def overlay(rgb, label_map, ignore_index=IGNORE_INDEX, alpha=0.5):
    """Blend the colour mask over the image; ignored pixels show the image alone."""
    blended = cv2.addWeighted(rgb, 1 - alpha, colorize(label_map), alpha, 0)
    keep = label_map == ignore_index
    blended[keep] = rgb[keep]
    return blended


def overlay_with_legend(rgb, label_map, class_names, alpha=0.5):
    """The overlay with a legend panel on its right: for each class present, most pixels first, its
    colour, name and share of the image's pixels. Text scales with the image (readable from 360 rows)."""
    blended = overlay(rgb, label_map, ignore_index=-1, alpha=alpha)
    height = blended.shape[0]
    ids, counts = np.unique(label_map, return_counts=True)
    scale = max(1.0, height / 720)
    row, margin, font = int(24 * scale), int(10 * scale), cv2.FONT_HERSHEY_SIMPLEX
    panel = np.full((height, int(230 * scale), 3), 255, np.uint8)
    rows = sorted(zip(counts.tolist(), ids.tolist()), reverse=True)
    fit = max((height - 2 * margin) // row, 1)
    for k, (count, cid) in enumerate(rows[:fit]):
        top = margin + k * row
        if k == fit - 1 and len(rows) > fit:  # no room left: say how many classes are not listed
            cv2.putText(panel, f"+ {len(rows) - k} more classes", (margin, top + row - int(8 * scale)), font, 0.5 * scale,
                        (0, 0, 0), max(int(scale), 1), cv2.LINE_AA)
            break
        name = class_names[cid] if cid < len(class_names) else f"class_{cid}"
        cv2.rectangle(panel, (margin, top + 3), (margin + row - 6, top + row - 3), PALETTE[cid % 256].tolist(), -1)
        cv2.putText(panel, f"{name[:16]} {100 * count / label_map.size:.1f}%", (margin + row, top + row - int(8 * scale)), font,
                    0.5 * scale, (0, 0, 0), max(int(scale), 1), cv2.LINE_AA)
    return np.concatenate([blended, panel], axis=1)


def draw_histogram(class_names, series, width=900, row_h=26):
    """Horizontal bars of each class's share of labelled pixels, one bar per series (e.g. train,
    val); returns an RGB image. `series` maps a name to per-class pixel counts."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # RGB
    label_w, margin = 170, 10
    bar_w = width - label_w - 2 * margin - 60
    height = margin * 3 + row_h * (len(class_names) + 1)
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k, name in enumerate(series):
        x = label_w + margin + k * 120
        cv2.rectangle(img, (x, margin), (x + 14, margin + 14), colours[k % 3], -1)
        cv2.putText(img, name, (x + 20, margin + 12), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    shares = {n: np.asarray(c, np.float64) / max(np.sum(c), 1) for n, c in series.items()}
    sub_h = (row_h - 6) // max(len(series), 1)
    for i, cname in enumerate(class_names):
        y = margin * 2 + row_h * (i + 1)
        cv2.putText(img, f"{i} {cname}"[:22], (margin, y + row_h // 2), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for k, (name, share) in enumerate(shares.items()):
            top = y + k * sub_h
            right = label_w + margin + int(bar_w * share[i])
            cv2.rectangle(img, (label_w + margin, top), (right, top + sub_h - 1), colours[k % 3], -1)
            cv2.putText(img, f"{100 * share[i]:.1f}%", (right + 4, top + sub_h - 2), font, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    return img
