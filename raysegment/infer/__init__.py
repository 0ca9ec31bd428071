"""Inference: the Predictor, PaddleX-style result objects, export and checkpoints."""

from .export import export_checkpoint, export_model, load_checkpoint, save_checkpoint
from .model_files import ModelFolderError
from .predictor import Predictor, load_predictor
from .result import SegResult, decode_mask

__all__ = [
    "Predictor", "load_predictor", "SegResult", "decode_mask", "ModelFolderError",
    "export_model", "export_checkpoint", "save_checkpoint", "load_checkpoint",
]
