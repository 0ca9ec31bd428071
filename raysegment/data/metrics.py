"""Segmentation metrics from a confusion matrix accumulated batch by batch (masks are not kept).

    cm = ConfusionMatrix(num_classes)
    for pred, label in batches:      # integer maps of any shape; label 255 is ignored
        cm.update(pred, label)
    cm.metrics()                     # mIoU, per-class IoU, accuracies, Kappa, Dice

Conventions: a class with no pixels in the labels or the predictions has IoU/Dice/accuracy
`None` and is left out of the means (nanmean). PaddleSeg counts such a class as IoU 0, which
lowers mIoU on splits missing a class; when every class occurs (e.g. CamVid val) the two agree.
`class_accuracy` is per-class recall (TP / labelled pixels); `class_precision` is TP / predicted
pixels (what PaddleSeg calls class accuracy).
"""

import numpy as np

from .labels import IGNORE_INDEX


class ConfusionMatrix:
    def __init__(self, num_classes, ignore_index=IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)  # [label, pred]

    def update(self, pred, label):
        pred, label = np.asarray(pred).ravel(), np.asarray(label).ravel()
        if pred.shape != label.shape:
            raise ValueError(f"prediction has {pred.size} pixels but the label has {label.size}")
        keep = label != self.ignore_index
        label, pred = label[keep].astype(np.int64), pred[keep].astype(np.int64)
        if label.size and (label.max() >= self.num_classes or label.min() < 0):
            raise ValueError(f"label values must be in 0..{self.num_classes - 1} or {self.ignore_index}, found {label.max()}")
        if pred.size and (pred.max() >= self.num_classes or pred.min() < 0):
            raise ValueError(f"predicted class {pred.max()} is outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(label * self.num_classes + pred, minlength=self.num_classes**2).reshape(self.matrix.shape)
        return self

    def merge(self, other):
        self.matrix += other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other, np.int64)
        return self

    def metrics(self, class_names=None):
        m = self.matrix.astype(np.float64)
        tp, labelled, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
        total = m.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            union = labelled + predicted - tp
            iou = np.where(union > 0, tp / union, np.nan)
            dice = np.where(labelled + predicted > 0, 2 * tp / (labelled + predicted), np.nan)
            acc = np.where(labelled > 0, tp / labelled, np.nan)
            precision = np.where(predicted > 0, tp / predicted, np.nan)
        po = tp.sum() / total if total else np.nan
        pe = (labelled * predicted).sum() / total**2 if total else np.nan
        kappa = (po - pe) / (1 - pe) if total and pe != 1 else np.nan

        def listed(values):
            return [None if np.isnan(v) else float(v) for v in values]

        def mean(values):
            return None if np.all(np.isnan(values)) else float(np.nanmean(values))

        out = {
            "mIoU": mean(iou),
            "pixel_accuracy": None if np.isnan(po) else float(po),
            "mean_accuracy": mean(acc),
            "kappa": None if np.isnan(kappa) else float(kappa),
            "mDice": mean(dice),
            "class_IoU": listed(iou),
            "class_accuracy": listed(acc),
            "class_precision": listed(precision),
            "class_Dice": listed(dice),
            "labelled_pixels": int(total),
        }
        if class_names is not None:
            out["class_names"] = list(class_names)
        return out
