"""Training: the plain `train(cfg)` loop and its Ray Train adapter (raysegment.train.ray_train)."""

from .loop import evaluate_layer, lr_at, train

__all__ = ["train", "lr_at", "evaluate_layer"]
