"""The one Predictor: load once, preprocess, batched forward, map back to the original size.

`create_model().predict`, each Ray Data actor and each Serve replica hold one of these. It works
on decoded RGB arrays; reading bytes and decoding stay with the caller (storage, data.image).
"""

import os

import numpy as np

from ..data import transforms as T
from ..models import build_model, check_model_name, load_weights
from .engines.choice import engine_plan, open_engine
from .engines.paddle import LayerEngine, device_parts, resolve_device
from .model_files import ModelFolderError, ModelInfo, read_model_folder
from ..ray_env import process_cpus
from .options import InferenceOptions, check_target_size

# PaddleX's Resize defaults when a target size is asked for and the folder has no Resize transform.
RESIZE_DEFAULTS = {"keep_ratio": True, "size_divisor": 32, "interp": "LINEAR"}


class Predictor:
    def __init__(self, engine, info: ModelInfo, target_size=None, slide=None):
        self.engine, self.info = engine, info
        self.target_size = check_target_size(target_size)
        self.slide = slide  # ((w, h) window, (w, h) stride) from check_slide, or None: whole images
        self.mean, self.std = info.normalize
        resize = info.resize or {}
        self._resize_args = {k: resize.get(k, v) for k, v in RESIZE_DEFAULTS.items()}
        self._folder_size = resize.get("target_size", -1)

    @classmethod
    def load(cls, model_dir, options=None, device=None, threads=None, model_name=None, num_classes=None):
        """From an exported inference folder (on the engine `options` ask for; by default the fastest
        that gives Paddle's masks) or a checkpoint folder (dygraph). options: InferenceOptions (None:
        the defaults); threads: what the process computes with (a Ray Placement's), unless
        engine_config says; None: this process's cores."""
        options = options or InferenceOptions()
        spec = options.engine_spec(threads)
        info = read_model_folder(model_dir, num_classes)
        if model_name is not None and check_model_name(model_name) != info.model_name:
            raise ModelFolderError(f"model folder {os.fspath(model_dir)!r} holds a {info.model_name}, not a {model_name}")
        device = resolve_device(device)
        if info.graph_file:
            engine = open_engine(info, device, spec)
        elif spec.engine not in (None, "paddle") or spec.run_mode or spec.precision != "fp32":
            raise ModelFolderError(f"{os.fspath(model_dir)!r} is a checkpoint, which runs in Paddle dygraph in fp32; "
                                   "export it (Global.mode=export) to choose an engine, run mode or precision")
        else:
            if not info.class_names:
                raise ModelFolderError(f"checkpoint {os.fspath(model_dir)!r} has no label_list in inference.yml; pass num_classes")
            layer = build_model(info.model_name, info.num_classes)
            load_weights(layer, info.params_file)
            engine = LayerEngine(layer, device, spec.cpu_threads)
        return cls(engine, info, options.target_size, options.slide)

    @classmethod
    def plan(cls, model_dir, options=None, device="cpu", threads=None):
        """What load() would run `model_dir` with on `device` ('cpu' or 'gpu:N', taken as given:
        nothing asks CUDA): {"device", "threads", "model", "engines": engine_plan's list}. A dry
        run's bulk actors and Serve replicas report it."""
        options = options or InferenceOptions()
        spec = options.engine_spec(threads)
        info = read_model_folder(model_dir)
        threads = spec.cpu_threads or threads or process_cpus()
        if info.graph_file:
            engines = engine_plan(device_parts(device), spec, threads)
        else:
            engines = [{"engine": "paddle", "role": "engine", "mode": "dygraph", "device": device}]
        return {"device": device, "threads": threads, "model": info.model_name, "engines": engines}

    @classmethod
    def from_layer(cls, layer, model_name, class_names, transforms=None, device="cpu", target_size=None, cpu_threads=None):
        """Wrap an in-memory model (e.g. during training) without saving it."""
        info = ModelInfo(model_name, class_names, transforms)
        return cls(LayerEngine(layer, resolve_device(device), cpu_threads), info, target_size)

    @property
    def model_name(self):
        return self.info.model_name

    @property
    def class_names(self):
        return self.info.class_names

    def _input_size(self, img, target_size):
        size = target_size if target_size is not None else self.target_size
        size = self._folder_size if size is None else size
        h, w = img.shape[:2]
        return T.resized_size(w, h, size, self._resize_args["keep_ratio"], self._resize_args["size_divisor"])

    def preprocess(self, img, target_size=None):
        """(H, W, 3) uint8 RGB -> (3, h, w) float32 network input."""
        return T.normalize_to_chw(img, self.mean, self.std, self._input_size(img, target_size), self._resize_args["interp"])

    def predict(self, images, target_size=None, batch_size=None):
        """RGB uint8 arrays (any sizes) -> (H, W) int32 label maps at each image's own size.

        Images whose network inputs share a shape go through the engine together, at most
        `batch_size` per forward pass (None: all of them). In slide mode, each image larger than
        the window is predicted window by window instead (`_predict_slide`).
        """
        target_size = check_target_size(target_size)
        labels = [None] * len(images)
        whole = []
        for i, img in enumerate(images):
            size = self._input_size(img, target_size)
            if self.slide and (size[0] > self.slide[0][0] or size[1] > self.slide[0][1]):
                labels[i] = self._predict_slide(img, size, batch_size)
            else:
                whole.append(i)
        inputs = {i: self.preprocess(images[i], target_size) for i in whole}
        by_shape = {}
        for i, x in inputs.items():
            by_shape.setdefault(x.shape, []).append(i)
        step = batch_size or len(images)
        for same_shape in by_shape.values():
            for start in range(0, len(same_shape), step):
                idx = same_shape[start : start + step]
                out = self.engine(np.stack([inputs[i] for i in idx]))  # (n, h, w) int32
                for i, label_map in zip(idx, out):
                    h, w = images[i].shape[:2]
                    labels[i] = T.restore_mask(label_map, w, h)
        return labels

    def _predict_slide(self, img, size, batch_size=None):
        """One image resized to `size` (w, h), window by window: (H, W) int32 label map at the
        image's own size. Memory holds the resized uint8 image, `batch_size` (default 4)
        normalised windows and the label map, never class scores for the whole image. Each pixel takes the label of the window it lies deepest in
        (transforms.window_spans), so window borders, which lack context, never decide a pixel
        that another window sees from further inside."""
        (ww, wh), (sw, sh) = self.slide
        resized = T.resize(img, size, self._resize_args["interp"])
        h, w = resized.shape[:2]
        label = np.empty((h, w), np.int32)
        windows = [(x, y) for y in T.window_spans(h, wh, sh) for x in T.window_spans(w, ww, sw)]
        step = batch_size or 4
        for start in range(0, len(windows), step):
            chunk = windows[start : start + step]
            crops = [resized[y[0] : y[0] + min(wh, h), x[0] : x[0] + min(ww, w)] for x, y in chunk]
            out = self.engine(np.stack([T.normalize_to_chw(c, self.mean, self.std) for c in crops]))
            for ((x0, xa, xb), (y0, ya, yb)), window_label in zip(chunk, out):
                label[ya:yb, xa:xb] = window_label[ya - y0 : yb - y0, xa - x0 : xb - x0]
        return T.restore_mask(label, img.shape[1], img.shape[0])


__all__ = ["Predictor"]
