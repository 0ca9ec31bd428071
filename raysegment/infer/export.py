"""Export a model to a PaddleX-format inference folder, read an exported folder's weights back into
the model, and save/load our checkpoints.

The exported graph takes x (N, 3, H, W) float32, any H and W, and returns the argmax label map
(N, H, W) int32, as PaddleSeg's `--output_op argmax` export does, so PaddleX runs it unchanged.
"""

import os

import paddle

from ..data.labels import default_class_names
from ..models import WeightsError, build_canonical, build_model, load_weights, save_weights
from ..models.weights import read_state_dict
from .model_files import CHECKPOINT_PARAMS, ModelInfo, read_model_folder, write_inference_yml

GENERATED = "generated_tensor_"  # Paddle's name for tensors made with paddle.to_tensor


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


def exported_weights(graph_file):
    """{Paddle's parameter name: array} of an exported graph, read through Paddle's static loader."""
    import numpy as np
    from paddle.base.framework import _dygraph_guard

    # static mode for this thread: paddle.enable_static() only leaves the dygraph mode that importing
    # Paddle enters in the main thread, and Ray Train runs the training function in another thread
    scope = paddle.static.Scope()
    with _dygraph_guard(None), paddle.static.scope_guard(scope):
        exe = paddle.static.Executor(paddle.CPUPlace())
        program, _, _ = paddle.static.load_inference_model(os.path.splitext(graph_file)[0], exe)
        names = [op.attrs()["parameter_name"] for op in program.global_block().ops if op.name() == "builtin.parameter"]
        return {name: np.array(scope.find_var(name).get_tensor()) for name in names}


def exported_layer(info):
    """export_model undone: (a fresh build of info.model_name in eval mode with an exported folder's
    weights, the state_dict keys the folder does not hold). Those are layers only training uses
    (PP-LiteSeg's auxiliary heads), which the traced graph leaves out; they keep the build's initial
    values. The graph names weights as build_canonical does, which pairs them with state_dict keys;
    WeightsError when they do not pair (a folder raysegment did not export)."""
    weights = exported_weights(info.graph_file)
    layer = build_canonical(info.model_name, info.num_classes)
    own = layer.state_dict()
    keys = {tensor.name: key for key, tensor in own.items()}
    # Tensors a model makes at build time (Swin's relative position index) are named by a counter no
    # guard resets; they follow from the architecture, so they pair up in creation order
    made = sorted((n for n in keys if n.startswith(GENERATED)), key=_counter)
    captured = sorted((n for n in weights if n.startswith(GENERATED)), key=_counter)
    if len(made) == len(captured):
        keys.update({old: keys.pop(new) for old, new in zip(captured, made)})
    unknown = [n for n in weights if n not in keys or tuple(own[keys[n]].shape) != weights[n].shape]
    if unknown:
        raise WeightsError(f"{len(unknown)} weights of {info.graph_file} (e.g. {unknown[0]}) do not match a fresh "
                           f"{info.model_name} build; the folder was not exported by raysegment")
    for name, value in weights.items():
        own[keys[name]].set_value(value)
    layer.eval()
    return layer, sorted(set(own) - {keys[name] for name in weights})


def folder_weights(folder):
    """(state_dict as numpy arrays, the keys the folder does not hold) of a checkpoint folder or an
    exported inference folder. An export traces only what prediction runs, so the layers only
    training uses (PP-LiteSeg's auxiliary heads) are missing: they hold a fresh build's values, and
    are listed for the caller to fill."""
    info = read_model_folder(folder)
    if not info.graph_file:
        return read_state_dict(info.params_file), []
    layer, kept = exported_layer(info)
    return {key: value.numpy() for key, value in layer.state_dict().items()}, kept


def _counter(name):
    return int(name.rsplit("_", 1)[1])


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
