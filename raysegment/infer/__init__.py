"""Inference: the Predictor, PaddleX-style result objects, export and checkpoints.

Names load on first use: export and the engines import Paddle, which code that only reads
results or model folders should not pay for.
"""

import importlib

_HOMES = {
    "Predictor": "predictor", "load_predictor": "predictor",
    "SegResult": "result", "decode_mask": "result",
    "ModelFolderError": "model_files", "read_model_folder": "model_files", "DEFAULT_TRANSFORMS": "model_files",
    "InferenceOptions": "options",
    "export_model": "export", "export_checkpoint": "export", "save_checkpoint": "export", "load_checkpoint": "export", "folder_weights": "export",
}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


__all__ = list(_HOMES)
