"""MaskFormer's set-prediction loss for semantic segmentation labels.

Each image's targets are the classes present in its label (255 ignored) with one binary mask
each. Every decoder layer's 100 predictions are matched one-to-one to the targets by the
Hungarian algorithm on cost = 1 * (-P(class)) + 20 * focal + 1 * dice; matched queries learn
their target's class and mask (sigmoid focal loss, weight 20; dice loss, weight 1), every other
query learns "no object" (cross-entropy weight 0.1 for that class). The loss sums over all decoder
layers (deep supervision). Masks are compared at the prediction's resolution (stride 4), the
label resized to it by nearest neighbour, which keeps the cost matrices small; ignored pixels
(255) take no part in the mask costs and losses.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..data.labels import IGNORE_INDEX

CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT = 1.0, 20.0, 1.0, 0.1
ALPHA, GAMMA = 0.25, 2.0


def targets_from_labels(label, size_hw):
    """label (N, H, W) int64 -> per image (classes int64 (M,), masks float32 (M, h*w), valid float32 (h*w,)).
    Runs on the host (np.unique; the Hungarian solver needs the costs there too): one sync per step."""
    small = F.interpolate(label.unsqueeze(1).astype("float32"), size_hw, mode="nearest").squeeze(1).astype("int64")
    targets = []
    for lab in small.numpy():
        classes = np.unique(lab)
        classes = classes[classes != IGNORE_INDEX]
        masks = (lab.reshape(1, -1) == classes.reshape(-1, 1)).astype("float32")
        valid = (lab.reshape(-1) != IGNORE_INDEX).astype("float32")
        targets.append((paddle.to_tensor(classes.astype("int64")), paddle.to_tensor(masks), paddle.to_tensor(valid)))
    return targets


def focal_terms(logits):
    """Per-pixel sigmoid focal loss if the target were 1 (pos) and if it were 0 (neg)."""
    prob = F.sigmoid(logits)
    pos = ALPHA * (1 - prob) ** GAMMA * F.binary_cross_entropy_with_logits(logits, paddle.ones_like(logits), reduction="none")
    neg = (1 - ALPHA) * prob**GAMMA * F.binary_cross_entropy_with_logits(logits, paddle.zeros_like(logits), reduction="none")
    return pos, neg


def focal_cost(logits, targets, valid):
    """(Q, P) logits, (M, P) binary targets, (P,) valid -> (Q, M) focal loss of every pair, averaged over valid pixels."""
    pos, neg = focal_terms(logits)
    pos, neg = pos * valid, neg * valid
    return (paddle.matmul(pos, targets, transpose_y=True) + paddle.matmul(neg, 1 - targets, transpose_y=True)) / paddle.clip(valid.sum(), min=1.0)


def dice_cost(logits, targets, valid):
    """(Q, P), (M, P), (P,) -> (Q, M) dice loss of every pair over valid pixels."""
    prob = F.sigmoid(logits) * valid
    inter = 2 * paddle.matmul(prob, targets, transpose_y=True)
    return 1 - (inter + 1) / (prob.sum(-1).unsqueeze(1) + targets.sum(-1).unsqueeze(0) + 1)


@paddle.no_grad()
def match(class_logits, masks, targets):
    """Per image: (query indices, target indices) minimising the matching cost."""
    pairs = []
    for logits, mask, (classes, tmasks, valid) in zip(class_logits, masks, targets):
        if classes.shape[0] == 0:
            pairs.append((np.zeros(0, "int64"), np.zeros(0, "int64")))
            continue
        flat = mask.flatten(1)
        cost = (CLASS_WEIGHT * -paddle.index_select(F.softmax(logits, -1), classes, axis=1)
                + MASK_WEIGHT * focal_cost(flat, tmasks, valid) + DICE_WEIGHT * dice_cost(flat, tmasks, valid))
        q, t = linear_sum_assignment(cost.numpy())
        pairs.append((q.astype("int64"), t.astype("int64")))
    return pairs


def layer_loss(class_logits, masks, targets, num_classes, num_masks):
    pairs = match(class_logits, masks, targets)
    target_classes = np.full(class_logits.shape[:2], num_classes, "int64")  # "no object" by default
    focal, dice = 0.0, 0.0
    for b, ((q, t), (classes, tmasks, valid)) in enumerate(zip(pairs, targets)):
        if not len(q):
            continue
        target_classes[b, q] = classes.numpy()[t]
        pred = paddle.index_select(masks[b].flatten(1), paddle.to_tensor(q))  # (m, P), row i matched to tgt row i
        tgt = paddle.index_select(tmasks, paddle.to_tensor(t))
        # the matched pairs' losses are the diagonals of the (m, m) pairwise costs the matching used
        focal = focal + paddle.diagonal(focal_cost(pred, tgt, valid)).sum()
        dice = dice + paddle.diagonal(dice_cost(pred, tgt, valid)).sum()
    weight = paddle.to_tensor([1.0] * num_classes + [NO_OBJECT_WEIGHT])
    loss = CLASS_WEIGHT * F.cross_entropy(class_logits, paddle.to_tensor(target_classes), weight=weight, axis=-1)
    return loss + (MASK_WEIGHT * focal + DICE_WEIGHT * dice) / num_masks


def maskformer_loss(layers, label, num_classes):
    """layers: [(class logits (N, Q, K+1), masks (N, Q, h, w))] per decoder layer; label (N, H, W)."""
    targets = targets_from_labels(label, layers[-1][1].shape[2:])
    num_masks = max(sum(int(c.shape[0]) for c, _, _ in targets), 1)
    return sum(layer_loss(logits, masks, targets, num_classes, num_masks) for logits, masks in layers)
