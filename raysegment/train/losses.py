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


def lovasz_softmax(logits, label):
    """Lovász-softmax (Berman, Rannen Triki and Blaschko, CVPR 2018; PaddleSeg's LovaszSoftmaxLoss):
    the Lovász extension of each class's Jaccard loss 1 - IoU, taken over the batch's labelled pixels
    and averaged over the classes present in `label`. On one-hot probabilities it equals the mean
    1 - IoU of the hard prediction; between them it is the convex surrogate the gradient follows.

    All classes at once: each column of per-pixel errors |[label = c] - p_c| is sorted, and the
    sorted errors are weighed by how much the Jaccard loss grows as each pixel joins the prediction."""
    num_classes = logits.shape[1]
    flat_label = label.reshape([-1])
    labelled = paddle.nonzero(flat_label != IGNORE_INDEX).reshape([-1])
    if labelled.shape[0] == 0:
        return logits.sum() * 0.0
    prob = F.softmax(logits, axis=1).transpose([0, 2, 3, 1]).reshape([-1, num_classes])
    prob = paddle.gather(prob, labelled)
    truth = F.one_hot(paddle.gather(flat_label, labelled), num_classes)  # (pixels, classes) float32
    errors = paddle.abs(truth - prob)
    errors_sorted, order = paddle.topk(errors, errors.shape[0], axis=0)  # descending, per class
    truth_sorted = paddle.take_along_axis(truth, order, axis=0)
    with paddle.no_grad():
        total = truth_sorted.sum(axis=0)
        intersection = total - paddle.cumsum(truth_sorted, axis=0)
        union = total + paddle.cumsum(1.0 - truth_sorted, axis=0)
        jaccard = 1.0 - intersection / union
        step = paddle.concat([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
        present = (total > 0).astype(prob.dtype)
    per_class = (errors_sorted * step).sum(axis=0)
    return (per_class * present).sum() / present.sum()


LOSSES = {"ohem": ohem_cross_entropy, "ce": cross_entropy}


def segmentation_loss(logit_list, label, kind="ohem", ohem_min_kept=130000, coefs=None, class_weights=None, lovasz_weight=0.0):
    """Sum of the loss over every head's logits (PP-LiteSeg trains all three), weighted by coefs;
    class_weights: a float32 tensor of one loss weight per class, or None. lovasz_weight > 0 adds
    that much Lovász-softmax to the main head's loss (PaddleSeg's MixedLoss of the two) and not to
    the auxiliary heads': it is the main head's masks that are read, and it sorts every pixel once
    per class (1.2 s with its backward for 4 crops of 384x384 and 11 classes on one CPU core)."""
    fn = LOSSES[kind]
    coefs = coefs or [1.0] * len(logit_list)
    if len(coefs) != len(logit_list):
        raise ValueError(f"Train.loss_coefs has {len(coefs)} values but the model returns {len(logit_list)} logits in training")
    kw = {"min_kept": ohem_min_kept} if kind == "ohem" else {}
    loss = sum(coef * fn(logits, label, weight=class_weights, **kw) for coef, logits in zip(coefs, logit_list))
    if lovasz_weight:
        loss = loss + coefs[0] * lovasz_weight * lovasz_softmax(logit_list[0], label)
    return loss


def training_loss(net, outputs, label, kind="ohem", ohem_min_kept=130000, coefs=None, class_weights=None, lovasz_weight=0.0):
    """The loss `net` trains with: its own when it defines one (MaskFormer's set-prediction loss),
    otherwise `kind` over every head's logits weighted by `coefs` (default: the model's published
    `loss_coefs`, e.g. OCRNet's 1 and 0.4, else 1 each) and by `class_weights`, plus `lovasz_weight`
    times Lovász-softmax."""
    if hasattr(net, "loss"):
        return net.loss(outputs, label)
    coefs = coefs or getattr(net, "loss_coefs", None)
    return segmentation_loss(outputs, label, kind, ohem_min_kept, coefs, class_weights, lovasz_weight)
