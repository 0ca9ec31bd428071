"""Export a model to a PaddleX-format inference folder and save/load our checkpoints.

The exported graph takes x (N, 3, H, W) float32, any H and W, and returns the argmax label map
(N, H, W) int32, as PaddleSeg's `--output_op argmax` export does, so PaddleX runs it unchanged.
"""

import os

import paddle

from ..data.labels import default_class_names
from ..models import build_canonical, build_model, load_weights, save_weights
from .model_files import CHECKPOINT_PARAMS, ModelInfo, read_model_folder, write_inference_yml


class ArgmaxHead(paddle.nn.Layer):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return paddle.argmax(self.net(x)[0], axis=1, dtype="int32")


def save_checkpoint(layer, folder, model_name, class_names, transforms=None):
    """folder/model.pdparams + folder/inference.yml (model name, class names, transforms)."""
    info = ModelInfo(model_name, class_names, transforms)
    save_weights(layer, os.path.join(folder, CHECKPOINT_PARAMS))
    write_inference_yml(folder, info, exported=False)
    return folder


def load_checkpoint(folder):
    """(layer in eval mode, ModelInfo) from a checkpoint folder, loaded strictly."""
    info = read_model_folder(folder)
    layer = build_model(info.model_name, info.num_classes)
    load_weights(layer, info.params_file)
    layer.eval()
    return layer, info


def export_model(layer, folder, model_name, class_names, transforms=None):
    """Write inference.json + inference.pdiparams + inference.yml to `folder`."""
    info = ModelInfo(model_name, class_names, transforms)
    canonical = build_canonical(model_name, layer.num_classes)  # weight names as a fresh build's (onnx_export.py)
    load_weights(canonical, layer.state_dict())
    canonical.eval()
    static = paddle.jit.to_static(
        ArgmaxHead(canonical),
        input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")],
        full_graph=True,
    )
    paddle.jit.save(static, os.path.join(folder, "inference"))
    write_inference_yml(folder, info, exported=True)
    return folder


def export_checkpoint(checkpoint_folder, folder):
    layer, info = load_checkpoint(checkpoint_folder)
    return export_model(layer, folder, info.model_name, info.class_names, info.transforms)


def export_from_config(cfg, untrained=False):
    """Global.mode=export: Export.weight_path (checkpoint folder or .pdparams) -> Global.output."""
    weights, out = cfg.Export.weight_path, cfg.Global.output
    if untrained == (weights is not None):
        raise ValueError("pass exactly one of -o Export.weight_path=... or --untrained")
    if weights and os.path.isdir(weights):
        return export_checkpoint(weights, out)
    if not cfg.Global.model:
        raise ValueError("set Global.model (the config file usually does)")
    paddle.seed(0)
    layer = build_model(cfg.Global.model, cfg.Train.num_classes)
    if weights:
        load_weights(layer, weights)
    return export_model(layer, out, cfg.Global.model, default_class_names(layer.num_classes))
