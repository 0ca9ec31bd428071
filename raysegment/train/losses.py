"""Losses over logits (N, C, H, W) and labels (N, H, W) int64, 255 ignored."""

import paddle
import paddle.nn.functional as F

from ..data.labels import IGNORE_INDEX


def cross_entropy(logits, label, weight=None):
    """Mean over the labelled pixels; with per-class `weight`, the mean weighted by each pixel's
    true-class weight."""
    return F.cross_entropy(logits, label, axis=1, ignore_index=IGNORE_INDEX, reduction="mean", weight=weight)


def ohem_cross_entropy(logits, label, thresh=0.7, min_kept=130000, weight=None):
    """Online hard example mining (PaddleSeg's OhemCrossEntropyLoss): average the loss over the
    pixels whose true-class probability is below max(thresh, the min_kept-th smallest probability).
    Per-class `weight` does not change which pixels are kept; it weighs their mean."""
    flat_label = label.reshape([-1])
    valid = flat_label != IGNORE_INDEX
    pixel_loss = F.cross_entropy(logits, label, axis=1, ignore_index=IGNORE_INDEX, reduction="none").reshape([-1])
    num_valid = int(valid.astype("int64").sum())  # host-device sync point
    if num_valid == 0:
        return pixel_loss.sum() * 0.0
    with paddle.no_grad():
        prob = paddle.exp(-pixel_loss)  # probability of the true class; ignored pixels give prob 1
        prob = paddle.where(valid, prob, paddle.ones_like(prob))
        threshold = thresh
        if min_kept > 0:
            k = min(num_valid, min_kept)
            kth = paddle.sort(prob)[k - 1]
            threshold = max(float(kth), thresh)
        keep = (prob < threshold) & valid
        pixel_weight = keep.astype(pixel_loss.dtype)
        if weight is not None:
            pixel_weight = pixel_weight * paddle.gather(weight, paddle.where(valid, flat_label, paddle.zeros_like(flat_label)))
    return (pixel_loss * pixel_weight).sum() / paddle.clip(pixel_weight.sum(), min=1e-12)


LOSSES = {"ohem": ohem_cross_entropy, "ce": cross_entropy}


def segmentation_loss(logit_list, label, kind="ohem", ohem_min_kept=130000, coefs=None, class_weights=None):
    """Sum of the loss over every head's logits (PP-LiteSeg trains all three), weighted by coefs;
    class_weights: a float32 tensor of one loss weight per class, or None."""
    fn = LOSSES[kind]
    coefs = coefs or [1.0] * len(logit_list)
    if len(coefs) != len(logit_list):
        raise ValueError(f"Train.loss_coefs has {len(coefs)} values but the model returns {len(logit_list)} logits in training")
    kw = {"min_kept": ohem_min_kept} if kind == "ohem" else {}
    return sum(coef * fn(logits, label, weight=class_weights, **kw) for coef, logits in zip(coefs, logit_list))


def training_loss(net, outputs, label, kind="ohem", ohem_min_kept=130000, coefs=None, class_weights=None):
    """The loss `net` trains with: its own when it defines one (MaskFormer's set-prediction loss),
    otherwise `kind` over every head's logits weighted by `coefs` (default: the model's published
    `loss_coefs`, e.g. OCRNet's 1 and 0.4, else 1 each) and by `class_weights`."""
    if hasattr(net, "loss"):
        return net.loss(outputs, label)
    return segmentation_loss(outputs, label, kind, ohem_min_kept, coefs or getattr(net, "loss_coefs", None), class_weights)
