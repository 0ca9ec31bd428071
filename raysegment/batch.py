"""Ray Data jobs: sources -> Predictor actors -> sinks. Resource numbers come from the caller.

Bytes are read and decoded in CPU tasks with per-row error capture (Ray's own image reader fails
a whole read task on one corrupt file); one Predictor per actor does the forward passes.
"""

import json
import os

import numpy as np

from . import storage
from .data.dataset import LabelError, Problem, decode_label, iter_split
from .data.image import ImageError, decode_image
from .data.metrics import ConfusionMatrix


def init_ray(address=None):
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray; a no-op when already connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    return ray


class PredictorActor:
    """Holds one Predictor for the actor's lifetime (loaded once, in __init__)."""

    def __init__(self, model_dir, device=None, cpu_threads=None, target_size=None, run_mode=None):
        from .infer import Predictor

        self.predictor = Predictor.load(model_dir, device=device, target_size=target_size, run_mode=run_mode, cpu_threads=cpu_threads)


def read_pairs(batch):
    """Ray Data task: image/label URIs -> decoded arrays, or an error per row (the row is kept)."""
    images, labels, errors = [], [], []
    for image_uri, label_uri in zip(batch["image_uri"], batch["label_uri"]):
        try:
            img = decode_image(storage.read_bytes(image_uri), name=f"image {image_uri}")
            label = decode_label(storage.read_bytes(label_uri), name=label_uri)
            if label.shape != img.shape[:2]:
                raise LabelError(f"image {image_uri} is {img.shape[1]}x{img.shape[0]} but label {label_uri} is {label.shape[1]}x{label.shape[0]}")
            images.append(img)
            labels.append(label)
            errors.append("")
        except (ImageError, LabelError, storage.StorageError) as e:
            images.append(np.zeros((1, 1, 3), np.uint8))
            labels.append(np.zeros((1, 1), np.uint8))
            errors.append(str(e))
    return {**batch, "image": _ragged(images), "label": _ragged(labels), "error": np.array(errors, dtype=object)}


def _ragged(arrays):
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


class EvalActor(PredictorActor):
    """Predicts each good row and returns one confusion matrix per batch (masks stay in the actor)."""

    def __init__(self, model_dir, num_classes, **kw):
        super().__init__(model_dir, **kw)
        self.num_classes = num_classes

    def __call__(self, batch):
        good = [i for i, e in enumerate(batch["error"]) if not e]
        cm = ConfusionMatrix(self.num_classes)
        masks = self.predictor.predict([batch["image"][i] for i in good]) if good else []
        for i, mask in zip(good, masks):
            cm.update(mask, batch["label"][i])
        errors = [{"file": str(f), "line": int(n), "message": str(e)} for f, n, e in zip(batch["list_file"], batch["line"], batch["error"]) if e]
        return {"cm": cm.matrix[None], "n": np.array([len(good)]), "errors": np.array([json.dumps(errors)], dtype=object)}


def check_actor_resources(ray, concurrency, num_cpus, num_gpus):
    """Refuse an actor pool that leaves no CPU for the read/decode tasks: Ray Data would wait forever."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if num_gpus and concurrency * num_gpus > gpus:
        raise ValueError(f"{concurrency} actors x {num_gpus:g} GPUs (Ray.predict_concurrency x Ray.gpus_per_actor) "
                         f"need {concurrency * num_gpus:g} GPUs; the cluster has {gpus:g}")
    if concurrency * num_cpus > cpus - 1:
        raise ValueError(f"{concurrency} actors x {num_cpus:g} CPUs (Ray.predict_concurrency x Ray.cpus_per_actor) leave "
                         f"no CPU of the cluster's {cpus:g} for reading and decoding; lower one of them")


def evaluate(model_dir, dataset_dir, split="val", batch_size=8, concurrency=1, num_cpus=1.0, num_gpus=0.0,
             device=None, ray_address=None, class_names=None):
    """Confusion matrix and metrics of `model_dir` on a dataset split, on Ray Data actors."""
    ray = init_ray(ray_address)
    check_actor_resources(ray, concurrency, num_cpus, num_gpus)
    from .infer.model_files import read_model_folder

    info = read_model_folder(model_dir)
    names = class_names or info.class_names
    if not names:
        raise ValueError(f"model folder {model_dir!r} does not name its classes; pass class names (labels.txt)")
    if class_names and info.class_names and len(class_names) != len(info.class_names):
        raise ValueError(f"the dataset has {len(class_names)} classes (labels.txt) but the model {model_dir!r} predicts {len(info.class_names)}")
    problems, rows = [], []
    for item in iter_split(dataset_dir, split):
        if isinstance(item, Problem):
            problems.append(item.to_json())
        else:
            rows.append({"image_uri": item.image, "label_uri": item.label, "list_file": item.list_file, "line": item.line})
    if not rows:
        raise ValueError(f"{split}.txt of {dataset_dir!r} lists no usable pairs; run jobs/check_dataset.py to see why")
    actor_kw = {"num_classes": len(names), "device": device or ("gpu" if num_gpus else "cpu"), "cpu_threads": max(int(num_cpus), 1)}
    ds = (
        ray.data.from_items(rows)
        .map_batches(read_pairs, batch_size=batch_size, batch_format="numpy")
        .map_batches(EvalActor, fn_constructor_kwargs={"model_dir": model_dir, **actor_kw}, batch_size=batch_size,
                     compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus, num_gpus=num_gpus,
                     batch_format="numpy")
    )
    cm, evaluated = ConfusionMatrix(len(names)), 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        cm.merge(batch["cm"].sum(axis=0))
        evaluated += int(batch["n"].sum())
        problems += [e for errs in batch["errors"] for e in json.loads(errs)]
    return {"metrics": cm.metrics(names), "evaluated_samples": evaluated, "listed_samples": len(rows),
            "errors": sorted(problems, key=lambda p: (p["file"], p["line"] or 0)), "confusion_matrix": cm.matrix.tolist()}


def evaluate_from_config(cfg):
    """Global.mode=evaluate: Evaluate.weight_path on Global.dataset_dir's val split; writes
    Global.output/evaluate_result.json and returns it."""
    from .data.dataset import read_class_names

    weights = cfg.Evaluate.weight_path
    if not weights:
        raise ValueError("set Evaluate.weight_path to a checkpoint folder, its model.pdparams, or an inference folder")
    if not cfg.Global.dataset_dir:
        raise ValueError("set Global.dataset_dir to the SegDataset to evaluate on")
    # PaddleX points at best_model/model.pdparams; the folder around it is our checkpoint
    model_dir = os.path.dirname(weights) if weights.endswith(".pdparams") else weights
    r = cfg.Ray
    result = evaluate(model_dir, cfg.Global.dataset_dir, batch_size=r.predict_batch_size, concurrency=r.predict_concurrency,
                      num_cpus=r.cpus_per_actor, num_gpus=r.gpus_per_actor, ray_address=r.address,
                      class_names=read_class_names(cfg.Global.dataset_dir))
    result = {"done_flag": True, **result, "model_dir": model_dir, "dataset_dir": cfg.Global.dataset_dir, "split": "val"}
    storage.write_bytes(os.path.join(cfg.Global.output, "evaluate_result.json"), json.dumps(result, indent=2).encode())
    return result
