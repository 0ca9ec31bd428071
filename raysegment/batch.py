"""Ray Data jobs: sources -> Predictor actors -> sinks. Resource numbers come from the caller.

Bytes are read and decoded in CPU tasks with per-row error capture (Ray's own image reader fails
a whole read task on one corrupt file); one Predictor per actor does the forward passes (and, in
the bulk job, writes each image's outputs, so label maps never travel through the object store).
"""

import json
import os
import time
import uuid

import cv2
import numpy as np

from . import storage
from .data.dataset import LabelError, Problem, iter_split, read_pair
from .data.image import ImageError, decode_image
from .data.metrics import ConfusionMatrix
from .data.visualize import encode_label_png, overlay
from .infer.result import pixel_counts
from .data.sources import list_inputs


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
            img, label = read_pair(image_uri, label_uri)
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


def check_cluster_fits(ray, count, cpus_each, gpus_each, keys=("Ray.predict_concurrency", "Ray.cpus_per_actor", "Ray.gpus_per_actor")):
    """Refuse `count` actors or workers the cluster cannot hold, or that leave no CPU for Ray Data's
    read/decode tasks (Ray would wait for resources forever). `keys` name the config keys behind
    count, CPUs and GPUs, for the message."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if gpus_each and count * gpus_each > gpus:
        raise ValueError(f"{count} x {gpus_each:g} GPUs ({keys[0]} x {keys[2]}) need {count * gpus_each:g} GPUs; "
                         f"the cluster has {gpus:g}")
    if count * cpus_each > cpus - 1:
        raise ValueError(f"{count} x {cpus_each:g} CPUs ({keys[0]} x {keys[1]}) leave no CPU of the cluster's {cpus:g} "
                         "for reading and decoding; lower one of them")


def evaluate(model_dir, dataset_dir, split="val", batch_size=8, concurrency=1, num_cpus=1.0, num_gpus=0.0,
             device=None, ray_address=None, class_names=None, threads=None):
    """Confusion matrix and metrics of `model_dir` on a dataset split, on Ray Data actors."""
    ray = init_ray(ray_address)
    check_cluster_fits(ray, concurrency, num_cpus, num_gpus)
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
    actor_kw = {"num_classes": len(names), "device": device or ("gpu" if num_gpus else "cpu"), "cpu_threads": threads or max(int(num_cpus), 1)}
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
                      class_names=read_class_names(cfg.Global.dataset_dir), threads=r.threads_per_actor)
    result = {"done_flag": True, **result, "model_dir": model_dir, "dataset_dir": cfg.Global.dataset_dir, "split": "val"}
    storage.write_bytes(os.path.join(cfg.Global.output, "evaluate_result.json"), json.dumps(result, indent=2).encode())
    return result


# ---- bulk prediction ------------------------------------------------------------------------
#
# OUT/<rel stem>.png       single-channel label map (palette PNG), lossless
# OUT/<rel stem>.json      source URI, size, model, class names, per-class pixel counts, timings
# OUT/<rel stem>_vis.jpg   overlay (Predict.save_visualization)
# OUT/_manifest.jsonl      one line per input: uri, status (done | error), outputs
# OUT/_errors.jsonl        uri, error type, message
# OUT/_SUCCESS.json        counts, throughput, model, config
# While a job runs, manifest and error lines go to OUT/_parts/ (one file per batch, written as
# results arrive); the end of the job merges them. A rerun skips every input already listed.

PARTS = "_parts"
def read_images(batch, max_pixels, max_bytes):
    """Ray Data task: URIs -> decoded RGB images; a row that fails keeps its error and a 1x1 image."""
    images, errors, seconds = [], [], []
    for uri in batch["uri"]:
        start = time.perf_counter()
        try:
            images.append(decode_image(storage.read_bytes(uri, max_bytes=max_bytes), name=uri, max_pixels=max_pixels))
            errors.append("")
        except (ImageError, storage.StorageError) as e:
            images.append(np.zeros((1, 1, 3), np.uint8))
            errors.append(f"{type(e).__name__}: {e}")
        seconds.append(time.perf_counter() - start)
    return {**batch, "image": _ragged(images), "error": np.array(errors, dtype=object), "read_s": np.array(seconds)}


class PredictActor(PredictorActor):
    """Predicts the good rows of a batch and writes their outputs itself, so label maps never cross
    the object store; returns only the manifest fields."""

    def __init__(self, model_dir, output, visualize=False, **kw):
        from .infer.model_files import read_model_folder

        super().__init__(model_dir, **kw)
        info = read_model_folder(model_dir)
        self.output, self.visualize, self.model_name = output, visualize, info.model_name
        self.class_names = info.class_names

    def __call__(self, batch):
        good = [i for i, e in enumerate(batch["error"]) if not e]
        start = time.perf_counter()
        masks = self.predictor.predict([batch["image"][i] for i in good]) if good else []
        per_image = (time.perf_counter() - start) / max(len(good), 1)
        outputs = ["[]"] * len(batch["uri"])
        for i, mask in zip(good, masks):
            timings = {"read_decode": round(float(batch["read_s"][i]), 4), "inference": round(per_image, 4)}
            outputs[i] = json.dumps(self.write(batch["uri"][i], batch["rel"][i], batch["image"][i], mask, timings))
        status = ["error" if e else "done" for e in batch["error"]]
        return {"uri": batch["uri"], "status": np.array(status, dtype=object), "outputs": np.array(outputs, dtype=object),
                "error": batch["error"]}

    def write(self, uri, rel, image, mask, timings):
        """Mask PNG, overlay and JSON of one image, each file written atomically; JSON last."""
        stem = os.path.splitext(rel)[0]
        files = [f"{stem}.png", f"{stem}.json"]
        storage.write_bytes(storage.join(self.output, files[0]), encode_label_png(mask))
        counts = pixel_counts(mask, self.class_names)
        meta = {"uri": str(uri), "width": int(mask.shape[1]), "height": int(mask.shape[0]), "model": self.model_name,
                "mask": os.path.basename(files[0]), "class_names": self.class_names or [f"class_{k}" for k in range(int(mask.max(initial=0)) + 1)], "pixel_counts": counts,
                "timings_s": timings}
        if self.visualize:
            vis = overlay(image, mask, ignore_index=-1)
            files.append(f"{stem}_vis.jpg")
            storage.write_bytes(storage.join(self.output, files[2]), cv2.imencode(".jpg", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))[1].tobytes())
        storage.write_bytes(storage.join(self.output, files[1]), json.dumps(meta).encode())
        return files


def _read_jsonl(uri):
    return [json.loads(line) for line in storage.read_bytes(uri).decode("utf-8").splitlines() if line.strip()]


def previous_results(output):
    """Manifest and error lines already written into `output` (merged files and unmerged parts)."""
    manifest, errors = [], []
    for name, into in (("_manifest.jsonl", manifest), ("_errors.jsonl", errors)):
        if storage.exists(storage.join(output, name)):
            into += _read_jsonl(storage.join(output, name))
    for part in _list_parts(output):
        (errors if part.rsplit("/", 1)[-1].startswith("errors-") else manifest).extend(_read_jsonl(part))
    return manifest, errors


def _has_parts(output):
    return storage.is_s3(output) or os.path.isdir(storage.join(output, PARTS))


def _list_parts(output):
    return storage.list_files(storage.join(output, PARTS), (".jsonl",)) if _has_parts(output) else []


def predict_bulk(model_dir, inputs, output, batch_size=8, concurrency=1, num_cpus=1.0, num_gpus=0.0, threads=None,
                 device=None, target_size=None, max_pixels=None, max_bytes=None, visualize=False,
                 ray_address=None, config=None, progress=None):
    """Segment every input image into `output` (local folder or s3:// prefix); returns the summary
    also written to OUT/_SUCCESS.json. Inputs already in the manifest are skipped."""
    from .infer.model_files import read_model_folder

    info = read_model_folder(model_dir)
    ray = init_ray(ray_address)
    check_cluster_fits(ray, concurrency, num_cpus, num_gpus)
    started = time.perf_counter()
    manifest, _ = previous_results(output)
    seen = {m["uri"] for m in manifest}
    # outputs already written keep their names: a new input may not overwrite them
    rels = {os.path.splitext(m["outputs"][0])[0]: m["uri"] for m in manifest if m["outputs"]}
    rows, collisions = [], []
    for item in list_inputs(inputs):
        if item["uri"] in seen:
            continue
        seen.add(item["uri"])
        stem = os.path.splitext(item["rel"])[0]
        if stem in rels:
            collisions.append({"uri": item["uri"], "error": "OutputCollision",
                               "message": f"its outputs {stem}.png/.json would overwrite those of {rels[stem]}; rename one of them"})
            continue
        rels[stem] = item["uri"]
        rows.append(item)
    skipped = len(manifest)
    _write_part(output, "manifest", [{"uri": c["uri"], "status": "error", "outputs": []} for c in collisions])
    _write_part(output, "errors", collisions)
    processed = len(collisions)  # inputs recorded by this run, as done or as errors
    if rows:
        actor_kw = {"device": device or ("gpu" if num_gpus else "cpu"), "cpu_threads": threads or max(int(num_cpus), 1),
                    "target_size": target_size, "output": output, "visualize": visualize}
        ds = (
            ray.data.from_items(rows)
            # CPU actors: reading with the actors' CPU reservation lets Ray Data fuse it into them, so
            # decoded images never enter the object store. GPU actors: reads stay in CPU tasks.
            .map_batches(read_images, fn_kwargs={"max_pixels": max_pixels, "max_bytes": max_bytes}, batch_size=batch_size,
                         num_cpus=1 if num_gpus else num_cpus, batch_format="numpy")
            .map_batches(PredictActor, fn_constructor_kwargs={"model_dir": model_dir, **actor_kw}, batch_size=batch_size,
                         compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus, num_gpus=num_gpus, batch_format="numpy")
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            lines, errs = [], []
            for uri, status, outputs, error in zip(batch["uri"], batch["status"], batch["outputs"], batch["error"]):
                lines.append({"uri": str(uri), "status": str(status), "outputs": json.loads(outputs)})
                if error:
                    kind, _, message = str(error).partition(": ")
                    errs.append({"uri": str(uri), "error": kind, "message": message})
            _write_part(output, "manifest", lines)  # as results arrive: a killed job loses at most this batch
            _write_part(output, "errors", errs)
            processed += len(lines)
            if progress:
                progress(processed, len(rows), time.perf_counter() - started)
    manifest, errors = _merge_parts(output)
    done = sum(m["status"] == "done" for m in manifest)
    elapsed = time.perf_counter() - started
    summary = {"inputs": len(manifest), "done": done, "errors": len(manifest) - done, "processed_this_run": processed,
               "skipped_already_done": skipped, "seconds": round(elapsed, 2), "images_per_s": round(processed / elapsed, 3) if processed else 0.0,
               "model": info.model_name, "model_dir": model_dir, "output": output, "config": config or {}}
    storage.write_bytes(storage.join(output, "_SUCCESS.json"), json.dumps(summary, indent=2).encode())
    return summary


def _write_part(output, kind, lines):
    if lines:
        name = f"{kind}-{time.time_ns()}-{uuid.uuid4().hex[:6]}.jsonl"
        storage.write_bytes(storage.join(output, f"{PARTS}/{name}"), "".join(json.dumps(x) + "\n" for x in lines).encode())


def _merge_parts(output):
    """Fold the parts into _manifest.jsonl and _errors.jsonl (written whole), then remove them."""
    manifest, errors = previous_results(output)
    by_uri = {m["uri"]: m for m in manifest}  # a rerun after a kill between part and merge: keep one line
    storage.write_bytes(storage.join(output, "_manifest.jsonl"), "".join(json.dumps(m) + "\n" for m in by_uri.values()).encode())
    errs = {e["uri"]: e for e in errors}
    storage.write_bytes(storage.join(output, "_errors.jsonl"), "".join(json.dumps(e) + "\n" for e in errs.values()).encode())
    for part in _list_parts(output):
        storage.delete(part)
    if not storage.is_s3(output) and os.path.isdir(storage.join(output, PARTS)):
        os.rmdir(storage.join(output, PARTS))
    return list(by_uri.values()), list(errs.values())


def predict_from_config(cfg, progress=None):
    """Global.mode=predict: the bulk job over Predict.input into Predict.output."""
    p, r = cfg.Predict, cfg.Ray
    if not p.model_dir or not p.input:
        raise ValueError("set Predict.model_dir and Predict.input (--model-dir and --input)")
    return predict_bulk(p.model_dir, p.input, p.output, batch_size=r.predict_batch_size, concurrency=r.predict_concurrency,
                        num_cpus=r.cpus_per_actor, num_gpus=r.gpus_per_actor, threads=r.threads_per_actor, target_size=p.target_size,
                        max_pixels=p.max_image_pixels, max_bytes=p.max_image_bytes, visualize=p.save_visualization,
                        ray_address=r.address, config=cfg.to_dict(), progress=progress)
