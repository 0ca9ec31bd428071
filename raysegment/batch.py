"""Ray Data jobs: sources -> Predictor actors -> sinks. Both take the config whole.

    predict_bulk(cfg)   Predict.input -> masks and JSON in Predict.output (bulk_output.py's layout)
    evaluate(cfg)       Evaluate.weight_path on Global.dataset_dir's val split -> metrics

Bytes are read and decoded in `map_batches` steps with per-row error capture (Ray's own image
reader fails a whole read task on one corrupt file); one Predictor per actor does the forward
passes and, in the bulk job, writes each image's outputs. Actor resources come from
ray_env.predict_actors; the Predictor's settings from the Predict section.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np
import pyarrow

from . import storage
from .bulk_output import BulkRun, ImageWriter
from .data.check import check_batch, check_locally, checked_rows
from .data.dataset import Problem, iter_split, read_class_names, read_pair
from .data.image import ImageError, decode_image
from .data.labels import LabelError
from .data.metrics import ConfusionMatrix
from .data.pdf import is_pdf
from .data.sources import check_inputs, list_inputs, load_pages
from .infer.model_files import read_model_folder
from .telemetry import bulk_inputs
from .dry_run import REPORT_TIMEOUT_S
from .ray_env import READ_CPUS, Cluster, init_ray, predict_actors


def _ragged(arrays):
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def read_images(batch, max_pixels, max_bytes):
    """Ray Data step: URIs -> decoded RGB images; a row that fails keeps its error and a 1x1 image.
    A PDF is left to the actor (a 1x1 image, `pdf` true), so its pages stay one row and one
    manifest line, all written or none."""
    images, errors, seconds, pdf = [], [], [], []
    for uri in batch["uri"]:
        start = time.perf_counter()
        image, error = np.zeros((1, 1, 3), np.uint8), ""
        pdf.append(is_pdf(uri))
        if not pdf[-1]:
            try:
                image = decode_image(storage.read_bytes(uri, max_bytes=max_bytes), name=uri, max_pixels=max_pixels)
            except (ImageError, storage.StorageError) as e:
                error = f"{type(e).__name__}: {e}"
        images.append(image)
        errors.append(error)
        seconds.append(time.perf_counter() - start)
    return {**batch, "image": _ragged(images), "error": np.array(errors, dtype=object), "read_s": np.array(seconds),
            "pdf": np.array(pdf)}


def read_pairs(batch):
    """Ray Data step: image/label URIs -> decoded arrays, or an error per row (the row is kept)."""
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


class PredictorActor:
    """Holds one Predictor for the actor's lifetime (loaded once, in __init__), set up as the
    Predict section says (engine, forward batch size, target size) on the placement's device."""

    def __init__(self, model_dir, predict, placement):
        from .infer import Predictor  # Paddle and the engines load in the actor, not in the driver

        self.batch_size = predict.batch_size
        self.max_pixels, self.max_bytes = predict.max_image_pixels, predict.max_image_bytes
        self.predictor = Predictor.load(model_dir, predict, placement.compute_device, placement.threads)

    def predict_good_rows(self, batch):
        """(indices of the rows read without error, their label maps)."""
        pdf = batch.get("pdf")  # PDF rows (bulk job only) are the actor's own work: PredictActor._pdf
        good = [i for i, e in enumerate(batch["error"]) if not e and not (pdf is not None and pdf[i])]
        masks = self.predictor.predict([batch["image"][i] for i in good], batch_size=self.batch_size) if good else []
        return good, masks


class PredictActor(PredictorActor):
    """Predicts a batch, writes each good row's outputs, returns only the manifest fields."""

    def __init__(self, model_dir, predict, placement):
        super().__init__(model_dir, predict, placement)
        info = self.predictor.info
        self.writer = ImageWriter(predict.output, info.model_name, info.class_names, predict.save_visualization)

    def __call__(self, batch):
        start = time.perf_counter()
        good, masks = self.predict_good_rows(batch)
        per_image = (time.perf_counter() - start) / max(len(good), 1)
        outputs, errors = ["[]"] * len(batch["uri"]), list(batch["error"])
        for i, mask in zip(good, masks):
            timings = {"read_decode": round(float(batch["read_s"][i]), 4), "inference": round(per_image, 4)}
            outputs[i] = json.dumps(self.writer.write(batch["uri"][i], batch["rel"][i], batch["image"][i], mask, timings))
        for i in np.flatnonzero(batch["pdf"]):
            try:
                outputs[i] = json.dumps(self._pdf(batch["uri"][i], batch["rel"][i]))
            except (ImageError, storage.StorageError) as e:
                errors[i] = f"{type(e).__name__}: {e}"
        status = ["error" if e else "done" for e in errors]
        for outcome in {*status}:
            bulk_inputs().inc(status.count(outcome), {"status": outcome})
        engine = self.predictor.engine
        return {"uri": batch["uri"], "status": np.array(status, dtype=object), "outputs": np.array(outputs, dtype=object),
                "error": np.array(errors, dtype=object), "engine": np.array([engine.run_mode] * len(status), dtype=object),
                "engine_reasons": np.array(["\n".join(engine.reasons)] * len(status), dtype=object)}

    def _pdf(self, uri, rel):
        """Every page of a PDF: outputs named <stem>_<page index> (PaddleX's naming); all or none."""
        start = time.perf_counter()
        pages = load_pages(uri, uri, self.max_pixels, self.max_bytes)
        read_s = (time.perf_counter() - start) / len(pages)
        start = time.perf_counter()
        masks = self.predictor.predict([img for _, img in pages], batch_size=self.batch_size)
        timings = {"read_decode": round(read_s, 4), "inference": round((time.perf_counter() - start) / len(pages), 4)}
        stem, ext = os.path.splitext(rel)
        return [name for (index, img), mask in zip(pages, masks)
                for name in self.writer.write(uri, f"{stem}_{index}{ext}", img, mask, timings, page_index=index)]


class PlanActor:
    """A dry run's stand-in for PredictActor (raysegment/dry_run.py), placed by the same pool
    options: it reports what it was given and what its Predictor would run (Predictor.plan), and
    loads nothing."""

    def __init__(self, model_dir, predict, placement, reports):
        from .dry_run import process_view
        from .infer import Predictor

        reports.put({**process_view(), **Predictor.plan(model_dir, predict, placement.compute_device, placement.threads)})

    def __call__(self, batch):
        return {"uri": batch["uri"]}


class EvalActor(PredictorActor):
    """Predicts each good row and returns one confusion matrix per batch (masks stay in the actor).
    Images are scored as the model folder says (no Predict.target_size)."""

    def __init__(self, model_dir, predict, placement, num_classes):
        super().__init__(model_dir, dataclasses.replace(predict, target_size=None), placement)
        self.num_classes = num_classes

    def __call__(self, batch):
        good, masks = self.predict_good_rows(batch)
        cm = ConfusionMatrix(self.num_classes)
        for i, mask in zip(good, masks):
            cm.update(mask, batch["label"][i])
        errors = [{"file": str(f), "line": int(n), "message": str(e)} for f, n, e in zip(batch["list_file"], batch["line"], batch["error"]) if e]
        return {"cm": cm.matrix[None], "n": np.array([len(good)]), "errors": np.array([json.dumps(errors)], dtype=object)}


def _actor_pool(ray, cfg):
    """The Predict/Ray settings every actor pool shares, sized to the cluster and checked before
    anything starts; also the resources of the read step in front of the actors."""
    placement = predict_actors(cfg, Cluster.of(ray))
    batch_size = cfg.Ray.predict_batch_size
    if cfg.Predict.batch_size > batch_size:
        raise ValueError(f"Predict.batch_size ({cfg.Predict.batch_size}) is above Ray.predict_batch_size ({batch_size}), "
                         "the images an actor gets at a time; raise Ray.predict_batch_size")
    # CPU actors: the read step reserves what an actor does, so Ray Data fuses it into the actors
    # and decoded images never enter the object store. GPU actors: reads run in CPU tasks.
    read = {"num_cpus": READ_CPUS if placement.gpus else placement.cpus}
    return placement, read, {"batch_size": batch_size, "compute": ray.data.ActorPoolStrategy(size=placement.count),
                             **placement.ray_options, "batch_format": "numpy"}


MAX_BLOCK_ROWS = 128


def plan_blocks(ray, chunks, actors):
    """Planned chunks of inputs -> (Arrow blocks in the object store, rows). The plan streams, so
    the driver keeps only references however long the listing. Ray Data hands an actor a whole
    block, so a chunk is cut in about 8 blocks per actor (every actor gets work on a short list)
    of at most MAX_BLOCK_ROWS rows (a million inputs make ~8,000 blocks)."""
    refs, rows = [], 0
    for chunk in chunks:
        per_block = min(max(math.ceil(len(chunk) / (8 * actors)), 1), MAX_BLOCK_ROWS)
        refs += [ray.put(pyarrow.Table.from_pylist(chunk[i : i + per_block])) for i in range(0, len(chunk), per_block)]
        rows += len(chunk)
    return refs, rows


def predict_bulk(cfg, progress=None):
    """Segment every Predict.input image into Predict.output (local folder or s3:// prefix); returns
    the summary also written to OUT/_SUCCESS.json. Inputs already recorded there are skipped.
    progress(recorded, to_do, seconds) is called as results arrive."""
    p = cfg.Predict
    if not p.model_dir or not p.input:
        raise ValueError("set Predict.model_dir and Predict.input (--model-dir and --input)")
    info = read_model_folder(p.model_dir)
    check_inputs(p.input)  # a missing path or an empty folder is refused before Ray starts
    ray = init_ray(cfg.Ray.address)
    placement, read, pool = _actor_pool(ray, cfg)
    started = time.perf_counter()
    run = BulkRun(p.output, retry_errors=p.retry_errors)
    blocks, to_do = plan_blocks(ray, run.plan(list_inputs(p.input)), placement.count)
    processed = run.collisions  # inputs this run recorded
    engines, reasons = set(), set()  # what each actor runs (per input shape), and why
    if blocks:
        ds = (
            ray.data.from_arrow_refs(blocks)
            .map_batches(read_images, fn_kwargs={"max_pixels": p.max_image_pixels, "max_bytes": p.max_image_bytes},
                         batch_size=pool["batch_size"], **read, batch_format="numpy")
            .map_batches(PredictActor, fn_constructor_args=(p.model_dir, p, placement), **pool)
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            # recorded as results arrive: a killed job loses at most this batch
            run.record(zip(batch["uri"], batch["status"], map(json.loads, batch["outputs"]), batch["error"]))
            processed += len(batch["uri"])
            engines.update(batch["engine"][-1:])
            reasons.update(batch["engine_reasons"][-1].split("\n"))
            if progress:
                progress(processed, to_do, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    return run.commit({"processed_this_run": processed, "skipped_already_done": run.skipped_done,
                       "skipped_errors": run.skipped_errors, "seconds": round(elapsed, 2),
                       "images_per_s": round(processed / elapsed, 3) if processed else 0.0, "model": info.model_name,
                       "model_dir": p.model_dir, "engine": sorted(engines),
                       "engine_reasons": sorted(reasons), "output": p.output, "config": cfg.to_dict()})


def plan_bulk(cfg):
    """A dry run of predict_bulk(cfg): its actor pool started as the job starts it, each actor
    reporting its GPUs, device and engines (PlanActor); the inputs are listed and counted, and
    nothing is read, predicted or written."""
    from .dry_run import collect, placement_fields, reports_queue

    p = cfg.Predict
    if not p.model_dir:
        raise ValueError("set Predict.model_dir (--model-dir)")
    read_model_folder(p.model_dir)
    inputs = sum(1 for _ in list_inputs(p.input)) if p.input else None
    ray = init_ray(cfg.Ray.address)
    placement, read, pool = _actor_pool(ray, cfg)
    context = ray.data.DataContext.get_current()
    waited = context.wait_for_min_actors_s
    context.wait_for_min_actors_s = REPORT_TIMEOUT_S  # every actor of the pool starts before a row moves
    queue = reports_queue()
    try:
        rows = [{"uri": f"planned-{i}"} for i in range(placement.count)]
        ray.data.from_items(rows).map_batches(PlanActor, fn_constructor_args=(p.model_dir, p, placement, queue), **pool).materialize()
        processes = collect(queue, placement.count, "bulk actors")
    finally:
        context.wait_for_min_actors_s = waited
    return {"placement": placement_fields(placement), "read_step": read, "inputs": inputs,
            "batch_size": pool["batch_size"], "processes": processes}


def evaluate(cfg, progress=None):
    """Evaluate.weight_path on Global.dataset_dir's val split, on Ray Data actors; writes
    Global.output/evaluate_result.json and returns it. progress(evaluated, listed, seconds) is
    called every Evaluate.log_interval batches and at the end."""
    weights, dataset_dir = cfg.Evaluate.weight_path, cfg.Global.dataset_dir
    if not weights:
        raise ValueError("set Evaluate.weight_path to a checkpoint folder, its model.pdparams, or an inference folder")
    if not dataset_dir:
        raise ValueError("set Global.dataset_dir to the SegDataset to evaluate on")
    # PaddleX points at best_model/model.pdparams; the folder around it is our checkpoint
    model_dir = os.path.dirname(weights) if weights.endswith(".pdparams") else weights
    names = _class_names(model_dir, read_class_names(dataset_dir))
    ray = init_ray(cfg.Ray.address)
    placement, read, pool = _actor_pool(ray, cfg)
    rows, problems = _val_rows(dataset_dir)
    ds = (
        ray.data.from_items(rows)
        .map_batches(read_pairs, batch_size=pool["batch_size"], **read, batch_format="numpy")
        .map_batches(EvalActor, fn_constructor_args=(model_dir, cfg.Predict, placement, len(names)), **pool)
    )
    started, cm, evaluated = time.perf_counter(), ConfusionMatrix(len(names)), 0
    for n, batch in enumerate(ds.iter_batches(batch_size=None, batch_format="numpy"), start=1):
        cm.merge(batch["cm"].sum(axis=0))
        evaluated += int(batch["n"].sum())
        problems += [e for errs in batch["errors"] for e in json.loads(errs)]
        if progress and n % cfg.Evaluate.log_interval == 0:
            progress(evaluated, len(rows), time.perf_counter() - started)
    if progress:
        progress(evaluated, len(rows), time.perf_counter() - started)
    result = {"done_flag": True, "metrics": cm.metrics(names), "evaluated_samples": evaluated, "listed_samples": len(rows),
              "errors": sorted(problems, key=lambda p: (p["file"], p["line"] or 0)), "confusion_matrix": cm.matrix.tolist(),
              "model_dir": model_dir, "dataset_dir": dataset_dir, "split": "val"}
    storage.write_bytes(os.path.join(cfg.Global.output, "evaluate_result.json"), json.dumps(result, indent=2).encode())
    return result


def _val_rows(dataset_dir):
    """(rows for Ray Data, problems as JSON) of the val split's list file."""
    rows, problems = [], []
    for item in iter_split(dataset_dir, "val"):
        if isinstance(item, Problem):
            problems.append(item.to_json())
        else:
            rows.append({"image_uri": item.image, "label_uri": item.label, "list_file": item.list_file, "line": item.line})
    if not rows:
        raise ValueError(f"val.txt of {dataset_dir!r} lists no usable pairs; run jobs/check_dataset.py to see why")
    return rows, problems


def _class_names(model_dir, dataset_names):
    """The class names to score with: the dataset's labels.txt, else the model folder's."""
    model_names = read_model_folder(model_dir).class_names
    if dataset_names and model_names and len(dataset_names) != len(model_names):
        raise ValueError(f"the dataset has {len(dataset_names)} classes (labels.txt) but the model {model_dir!r} predicts {len(model_names)}")
    if not (dataset_names or model_names):
        raise ValueError(f"model folder {model_dir!r} does not name its classes; add a labels.txt to the dataset")
    return dataset_names or model_names


RAY_MIN_SAMPLES = 2000  # below this, checking pairs in one local loop is quicker than starting Ray


def pair_checker(cfg, min_samples=RAY_MIN_SAMPLES):
    """A check_pairs for data.check.check_dataset: from `min_samples` pairs up, Ray Data tasks check
    Ray.predict_batch_size pairs each (reserving READ_CPUS) on the cluster of Ray.address."""

    def check_pairs(samples, num_classes):
        if len(samples) < min_samples:
            yield from check_locally(samples, num_classes)
            return
        ray = init_ray(cfg.Ray.address)
        rows = [{"image": s.image, "label": s.label, "list_file": s.list_file, "line": s.line} for s in samples]
        ds = ray.data.from_items(rows).map_batches(check_batch, fn_kwargs={"num_classes": num_classes}, num_cpus=READ_CPUS,
                                                   batch_size=cfg.Ray.predict_batch_size, batch_format="numpy")
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # in any order: each row names its pair
            yield from checked_rows(batch)

    return check_pairs
