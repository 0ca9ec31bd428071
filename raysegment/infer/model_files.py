"""The two model folders we read and write, both described by a PaddleX-style `inference.yml`.

    inference folder (exported; PaddleX loads it too)    checkpoint folder (ours, from training)
      inference.json      static graph (PIR)               model.pdparams   state_dict
      inference.pdiparams weights                          inference.yml    same schema
      inference.yml       model name, Deploy transforms

inference.yml:
    Global: {model_name: PP-LiteSeg-T}
    Deploy: {model: inference.json, params: inference.pdiparams, output_op: argmax,
             output_dtype: int32, transforms: [{type: Normalize, mean: [...], std: [...]}]}
    label_list: [sky, building, ...]      # ours: class names (PaddleX ignores it)
"""

import os
from dataclasses import dataclass

import yaml

from ..data.labels import default_class_names
from ..models import MODELS

INFERENCE_YML = "inference.yml"
CHECKPOINT_PARAMS = "model.pdparams"
GRAPH_FILES = ("inference.json", "inference.pdmodel")  # PIR graph (Paddle 3), legacy ProgramDesc
DEFAULT_TRANSFORMS = ({"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},)


class ModelFolderError(ValueError):
    pass


@dataclass
class ModelInfo:
    model_name: str
    class_names: list[str]
    transforms: list[dict] | None = None  # None: DEFAULT_TRANSFORMS
    graph_file: str | None = None  # set for inference folders
    params_file: str | None = None

    def __post_init__(self):
        self.class_names = list(self.class_names)
        self.transforms = [dict(t) for t in (self.transforms or DEFAULT_TRANSFORMS)]

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def normalize(self):
        for t in self.transforms:
            if t["type"] == "Normalize":
                return t.get("mean", [0.5] * 3), t.get("std", [0.5] * 3)
        return [0.0] * 3, [1 / 255] * 3  # no Normalize: feed raw 0..255 values

    @property
    def resize(self):
        """The folder's Resize transform as keyword arguments, or None."""
        for t in self.transforms:
            if t["type"] == "Resize":
                return {k: v for k, v in t.items() if k != "type"}
        return None

    def to_yml(self, exported):
        deploy = {"transforms": self.transforms}
        if exported:
            deploy = {"model": "inference.json", "params": "inference.pdiparams", "output_op": "argmax", "output_dtype": "int32", **deploy}
        return {"Global": {"model_name": self.model_name}, "Deploy": deploy, "label_list": self.class_names}


def write_inference_yml(folder, info, exported):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, INFERENCE_YML), "w", encoding="utf-8") as f:
        yaml.safe_dump(info.to_yml(exported), f, sort_keys=False, allow_unicode=True)


def read_model_folder(folder, num_classes=None):
    """ModelInfo of an inference or checkpoint folder; ModelFolderError saying what is missing."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ModelFolderError(f"model folder {folder!r} does not exist; pass an exported inference folder or a checkpoint folder")
    yml_path = os.path.join(folder, INFERENCE_YML)
    if not os.path.isfile(yml_path):
        raise ModelFolderError(f"model folder {folder!r} has no {INFERENCE_YML}; is it an exported inference folder or a checkpoint?")
    try:
        with open(yml_path, encoding="utf-8") as f:
            meta = yaml.safe_load(f) or {}
        model_name = meta["Global"]["model_name"]
        deploy = meta.get("Deploy") or {}
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ModelFolderError(f"{yml_path} is not a valid inference.yml (needs Global.model_name): {e}") from None
    if model_name not in MODELS:
        raise ModelFolderError(f"{yml_path} names model {model_name!r}, which is not one of: {', '.join(MODELS)}")
    names = meta.get("label_list")
    if names is None:
        # A PaddleX folder carries no class names; the count comes from the caller or the weights.
        names = default_class_names(num_classes) if num_classes else []
    info = ModelInfo(model_name, names, deploy.get("transforms"))
    graph = next((g for g in GRAPH_FILES if os.path.isfile(os.path.join(folder, g))), None)
    if graph:
        params = os.path.join(folder, deploy.get("params", "inference.pdiparams"))
        if not os.path.isfile(params):
            raise ModelFolderError(f"inference folder {folder!r} has {graph} but no {os.path.basename(params)}")
        info.graph_file, info.params_file = os.path.join(folder, graph), params
    elif os.path.isfile(os.path.join(folder, CHECKPOINT_PARAMS)):
        info.params_file = os.path.join(folder, CHECKPOINT_PARAMS)
    else:
        raise ModelFolderError(
            f"model folder {folder!r} has neither inference.json/inference.pdmodel (an exported model) "
            f"nor {CHECKPOINT_PARAMS} (a checkpoint)"
        )
    return info
