"""Model registry: PaddleX model name -> builder(num_classes) returning a paddle.nn.Layer.

Every model has `num_classes` and `classifier_prefixes` (the state_dict prefixes of the layers
whose shape depends on num_classes) attributes.
Every model, in eval mode, maps x (N, 3, H, W) float32 to [logits (N, C, H, W)]; in train mode the
list may also carry auxiliary logits (all at the input size), weighted in the loss by the model's
`loss_coefs` (OCRNet: 1, 0.4). A model with its own training loss defines `loss(outputs, label)`
and returns in train mode what that loss takes (MaskFormer: every decoder layer's class logits and
masks); raysegment.train.losses.training_loss picks the right one.
"""

import importlib
from functools import partial

from .weights import WeightsError, load_weights, save_weights


def _build(module, builder, *args, **kw):
    # architectures import Paddle: load one only when it is built, so reading the registry
    # (config checks, Ray Data workers that only decode) stays light
    return getattr(importlib.import_module(f".{module}", __name__), builder)(*args, **kw)


MODELS = {
    "PP-LiteSeg-T": partial(_build, "pp_liteseg", "pp_liteseg_t"),
    "PP-LiteSeg-B": partial(_build, "pp_liteseg", "pp_liteseg_b"),
    **{f"SegFormer-B{i}": partial(_build, "segformer", "segformer", f"B{i}") for i in range(6)},
    **{f"Deeplabv3-R{n}": partial(_build, "deeplab", "deeplab", n) for n in (50, 101)},
    **{f"Deeplabv3_Plus-R{n}": partial(_build, "deeplab", "deeplab", n, plus=True) for n in (50, 101)},
    **{f"OCRNet_HRNet-W{w}": partial(_build, "ocrnet", "ocrnet", w) for w in (18, 48)},
    **{f"SeaFormer_{s}": partial(_build, "seaformer", "seaformer", s) for s in ("tiny", "small", "base", "large")},
    **{f"MaskFormer_{s}": partial(_build, "maskformer", "maskformer", s) for s in ("tiny", "small")},
}

# The models that train with a set-prediction loss of their own (`loss(outputs, label)`), which takes
# none of the per-pixel options (class weights, Lovász); config checks ask here without building one
OWN_LOSS = frozenset({"MaskFormer_tiny", "MaskFormer_small"})


class UnknownModelError(ValueError):
    pass


def check_model_name(name):
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return name


def build_model(name, num_classes=None, **kw):
    """Build `name` with `num_classes` outputs (None: the published default, 19 or 150)."""
    builder = MODELS[check_model_name(name)]
    if num_classes is not None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        kw["num_classes"] = num_classes
    return builder(**kw)


def build_canonical(name, num_classes=None):
    """build_model with Paddle's generated parameter names (conv2d_0.w_0, ...) counted from 0, as in
    a fresh process: what export traces, so an exported graph names its weights the same way
    whatever its process built before (infer/export.py's exported_layer maps them back by these names)."""
    import paddle

    with paddle.utils.unique_name.guard():
        return build_model(name, num_classes)


__all__ = ["MODELS", "OWN_LOSS", "build_canonical", "build_model", "check_model_name", "load_weights", "save_weights", "UnknownModelError", "WeightsError"]
