"""The GPU check: every GPU path of the product run once on a GPU machine, with one JSON of figures
(jobs/gpu_check.py is its command line). Steps, each with its size and a time budget (8 minutes in
all on one H100-class GPU):

    engines   each engine and precision on GPU (Paddle fp32, ONNX Runtime CUDA/TensorRT fp32,
              TensorRT fp16) on the bundled frames at the bundled model's 960x720: images/s, and
              the share of pixels labelled as CPU Paddle labels them. First, so the TensorRT
              engines it builds are in the machine's cache when the bulk job and Serve start.
    train-1   training, 1 GPU worker, AMP, on a SegDataset made from the bundled frames
    train-2   the same on 2 GPU workers (NCCL, SyncBatchNorm), when the machine has 2 GPUs
    bulk      the bulk job on 300 copies of the bundled frames, one actor per GPU
    serve     the Serve app on the GPUs at 1, 8 and 32 clients

--dry-run plans every step instead: sizes and budgets printed, and each Ray front door started as
the step would start it, its processes reporting their GPUs, device and engine options
(raysegment/dry_run.py), and nothing run on CUDA. On a machine without GPUs, the local Ray it starts
declares --gpus GPUs (default 2), so a CPU machine shows what a 2-GPU machine would run.
--device cpu runs the real steps on CPUs (small with --quick): the script's own smoke test.
"""

import json
import os
import time
from dataclasses import dataclass

from ..data import BUNDLED_MODEL
from .common import free_port, make_image_dir, make_train_dir, request_bodies, sample_paths

# (engine, precision) pairs the engines step runs, per device
ENGINE_ROWS = {"gpu": (("paddle", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), (None, "fp32")),
               "cpu": (("paddle", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), (None, "fp32"))}
TOTAL_BUDGET_S = 480
STEP_NAMES = ("engines", "train-1", "train-2", "bulk", "serve")  # train-2 runs where there are 2 GPUs


@dataclass(frozen=True)
class Sizes:
    train_iters: int = 40
    train_batch: int = 8  # per worker
    crop: int = 512
    train_images: int = 64
    bulk_images: int = 300
    clients: tuple = (1, 8, 32)
    serve_seconds: float = 15.0
    engine_repeats: int = 10  # forward passes of the bundled frames per engine row

    @classmethod
    def quick(cls):
        return cls(train_iters=4, train_batch=2, crop=256, train_images=8, bulk_images=12, clients=(1, 4), serve_seconds=3.0,
                   engine_repeats=1)


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    budget_s: int


def steps(sizes, device, gpus, only=None):
    """The steps to run on `device` with `gpus` GPUs, in order; `only`: those of these names."""
    workers = "2 GPU workers (NCCL, SyncBatchNorm, AMP)"
    out = [
        Step("engines", f"{', '.join(_row_name(e, p) for e, p in ENGINE_ROWS[device])} on {device}: images/s and "
             f"agreement with CPU Paddle on the {len(sample_paths())} bundled frames at 960x720, {sizes.engine_repeats} passes each", 150),
        Step("train-1", f"PP-LiteSeg-T, {sizes.train_iters} iterations, 1 {device} worker" + (" with AMP" if device == "gpu" else "")
             + f", batch {sizes.train_batch}, {sizes.crop}x{sizes.crop} crops, {sizes.train_images} bundled frames", 75),
    ]
    if device == "gpu" and gpus >= 2:
        out.append(Step("train-2", f"the same on {workers}, batch {sizes.train_batch} each", 75))
    out += [
        Step("bulk", f"the bulk job on {sizes.bulk_images} copies of the bundled frames, one actor per "
             + ("GPU" if device == "gpu" else "CPU"), 60),
        Step("serve", f"the Serve app at {', '.join(map(str, sizes.clients))} clients, {sizes.serve_seconds:g} s each, "
             f"one replica per {'GPU' if device == 'gpu' else 'CPU'}", 30 + 10 * len(sizes.clients) + int(sizes.serve_seconds * len(sizes.clients))),
    ]
    return [step for step in out if not only or step.name in only]


def _row_name(engine, precision):
    return f"{engine or 'auto'} {precision}"


def _train_config(work, device, workers, sizes):
    from ..config import load_config

    data = make_train_dir(os.path.join(work, "train_data"), sizes.train_images)
    name = f"train-{workers}"
    return load_config(os.path.join(_configs(), "PP-LiteSeg-T.yaml"), [
        f"Global.dataset_dir={data}", "Train.num_classes=11", f"Global.output={os.path.join(work, name)}",
        f"Global.device={device if device == 'cpu' else 'gpu:' + ','.join(map(str, range(workers)))}",
        f"Ray.num_workers={workers}", f"Train.epochs_iters={sizes.train_iters}", f"Train.eval_interval={sizes.train_iters}",
        f"Train.batch_size={sizes.train_batch}", f"Train.crop_size=[{sizes.crop},{sizes.crop}]", f"Train.amp={device == 'gpu'}",
        f"Train.log_interval={max(sizes.train_iters // 4, 1)}"])


def _configs():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def _bulk_config(work, device, images):
    from ..config import load_config

    return load_config(None, [f"Predict.model_dir={BUNDLED_MODEL}", f"Predict.output={os.path.join(work, 'bulk')}",
                              f"Global.device={device}", *([f"Predict.input={images}"] if images else [])])


def _serve_options(device):
    from ..config import ServeOptions, parse_options

    return parse_options(ServeOptions, {"model_dir": BUNDLED_MODEL, "device": device, "port": free_port()}, "args")


def plan(work, chosen, sizes, device):
    """--dry-run: each step sized and its Ray processes placed (dry_run.py); nothing on CUDA."""
    from ..batch import plan_bulk
    from ..infer.engines.choice import engine_plan
    from ..infer.engines.spec import EngineSpec
    from ..serve.run import plan as plan_serve
    from ..train.ray_train import plan as plan_training

    planned = []
    for step in chosen:
        if step.name == "engines":
            where = ("gpu", 0) if device == "gpu" else ("cpu", None)
            detail = {_row_name(engine, precision): engine_plan(where, EngineSpec(engine, precision=precision), 1)
                      for engine, precision in ENGINE_ROWS[device]}
            detail["reference: paddle fp32 on cpu"] = engine_plan(("cpu", None), EngineSpec("paddle"), os.cpu_count())
        elif step.name.startswith("train-"):
            detail = plan_training(_train_config(work, device, int(step.name[-1]), sizes))
        elif step.name == "bulk":
            detail = plan_bulk(_bulk_config(work, device, None))
            detail["inputs"] = sizes.bulk_images
        else:
            detail = plan_serve(_serve_options(device))
        planned.append({"step": step.name, "what": step.what, "budget_s": step.budget_s, "plan": detail})
        print(summary_line(planned[-1]), flush=True)
    return planned


def summary_line(row):
    """One line per planned step: what, budget, and where its processes went."""
    detail = row["plan"]
    if "processes" in detail:
        p = detail["placement"]
        seen = "; ".join(f"{'rank ' + str(r['rank']) + ' ' if 'rank' in r else ''}CUDA_VISIBLE_DEVICES={r.get('cuda_visible_devices')} "
                         f"-> {r['device']}" + (f" {r['backend']}" if r.get("backend") else "") for r in detail["processes"])
        where = f"\n    {p['count']} x ({p['cpus']:g} CPU, {p['gpus']:g} GPU, {p['threads']} threads): {seen}"
    else:
        where = "".join(f"\n    {name}: " + ", ".join(_engine_words(e) for e in engines) for name, engines in detail.items())
    return f"{row['step']} (budget {row['budget_s']} s): {row['what']}{where}"


def _engine_words(e):
    if "error" in e:
        return f"{e['engine']} cannot ({e['error']})"
    if "providers" in e:
        return f"{e['engine']} [{' > '.join(name.removesuffix('ExecutionProvider') for name, _ in e['providers'])}]"
    return f"{e['engine']} {e.get('mode', '')}".strip()


def run(work, chosen, sizes, device):
    """The chosen steps for real; returns the figures per step."""
    figures = []
    for step in chosen:
        print(f"{step.name}: {step.what} (budget {step.budget_s} s)", flush=True)
        started = time.perf_counter()
        try:
            result = STEP_RUNNERS[step.name.split("-")[0]](work, sizes, device, step)
            error = None
        except Exception as e:  # a step that fails is a figure too; the others still run
            result, error = {}, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        seconds = round(time.perf_counter() - started, 1)
        figures.append({"step": step.name, "what": step.what, "budget_s": step.budget_s, "seconds": seconds, "error": error, **result})
        print(f"  {seconds} s" + (f", FAILED: {error}" if error else "") + "".join(f", {k} {v}" for k, v in result.items() if not isinstance(v, (dict, list))),
              flush=True)
    return figures


def _engines(work, sizes, device, step):
    import numpy as np

    from ..data.image import decode_image
    from ..infer import Predictor
    from ..infer.options import EngineConfig, InferenceOptions

    images = [decode_image(open(p, "rb").read(), name=p) for p in sample_paths()]
    reference = Predictor.load(BUNDLED_MODEL, InferenceOptions(engine="paddle"), "cpu").predict(images)
    rows = {}
    for engine, precision in ENGINE_ROWS[device]:
        key = _row_name(engine, precision)
        try:
            options = InferenceOptions(engine=engine, engine_config=EngineConfig(precision=None if precision == "fp32" else precision))
            started = time.perf_counter()
            predictor = Predictor.load(BUNDLED_MODEL, options, "gpu:0" if device == "gpu" else "cpu")
            masks = predictor.predict(images)  # the first pass: conversion, TensorRT build or the engine race
            load_s = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(sizes.engine_repeats):
                predictor.predict(images)
            rate = sizes.engine_repeats * len(images) / (time.perf_counter() - started)
            agreement = float(np.mean([(m == r).mean() for m, r in zip(masks, reference)]))
            rows[key] = {"engine": predictor.engine.run_mode, "images_per_s": round(rate, 2), "agreement_with_cpu_paddle": round(agreement, 5),
                         "first_pass_s": round(load_s, 1)}
        except Exception as e:  # an engine this machine cannot run is a row, not the end of the check
            rows[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        print(f"  {key}: {rows[key]}", flush=True)
    return {"rows": rows}


def _train(work, sizes, device, step):
    from ..train.ray_train import fit

    result = fit(_train_config(work, device, int(step.name[-1]), sizes))
    return {"images_per_s": result["images_per_s"], "train_time_s": result["train_time_s"], "workers": result["workers"],
            "workers_in_sync": result["workers_in_sync"], "best_mIoU": (result.get("best_metrics") or {}).get("mIoU")}


def _bulk(work, sizes, device, step):
    from ..batch import predict_bulk

    images = make_image_dir(os.path.join(work, "bulk_images"), sizes.bulk_images)
    summary = predict_bulk(_bulk_config(work, device, images))
    return {"images": summary["processed_this_run"], "images_per_s": summary["images_per_s"], "seconds_in_job": summary["seconds"],
            "engine": summary["engine"]}


def _serve(work, sizes, device, step):
    from ray import serve

    from ..serve.run import start
    from .serve import load_test

    bodies = request_bodies(sample_paths())
    opts = _serve_options(device)
    url = start(opts, name="gpu-check")
    try:
        load_test(url, bodies, 4, 16, 60)  # warm-up: each replica's first forward pass
        rows = {f"{clients} clients": load_test(url, bodies, clients, 10**6, sizes.serve_seconds) for clients in sizes.clients}
    finally:
        serve.delete("gpu-check")
    return {"rows": rows}


STEP_RUNNERS = {"engines": _engines, "train": _train, "bulk": _bulk, "serve": _serve}


def gpus_found():
    """The CUDA GPUs Paddle sees here (0 on a CPU-only build)."""
    import paddle

    return paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0


def main(args):
    """The whole check as jobs/gpu_check.py runs it; returns the JSON written to args.out."""
    import platform
    import tempfile

    import ray

    from ..ray_env import init_ray

    sizes = Sizes.quick() if args.quick else Sizes()
    found = gpus_found()
    device = args.device or ("gpu" if found or args.dry_run else "cpu")
    if device == "gpu" and not found and not args.dry_run:
        raise ValueError("no CUDA GPU found (paddlepaddle-gpu and a GPU are needed); use --dry-run to plan, or --device cpu")
    declared = None
    if args.dry_run and not found and device == "gpu" and not (args.address or os.environ.get("RAY_ADDRESS")):
        declared = args.gpus
        # as a GPU node has them: a few CPUs a GPU to feed it (a 2-core laptop could not place 2 GPU workers)
        init_ray(num_gpus=declared, num_cpus=args.cpus or max(os.cpu_count(), 4 * declared))
    else:
        init_ray(args.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "gpu" and not gpus:
        raise ValueError("the Ray cluster has no GPUs; start its nodes with GPUs (or --num-gpus), or use --device cpu")
    chosen = steps(sizes, device, gpus, args.steps.split(",") if args.steps else None)
    if not chosen:
        raise ValueError(f"--steps {args.steps}: none of them runs here ({device}, {gpus} GPUs)")
    print(f"gpu check ({'dry run' if args.dry_run else 'run'}): device {device}, {gpus} GPUs in the Ray cluster"
          + (f" (declared: no GPU here; --gpus {declared})" if declared else "") + f", {len(chosen)} steps, "
          f"budget {sum(s.budget_s for s in chosen)} s of {TOTAL_BUDGET_S}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raysegment-gpu-check-") as work:
        rows = (plan if args.dry_run else run)(work, chosen, sizes, device)
    result = {"dry_run": args.dry_run, "device": device, "gpus": gpus, "declared_gpus": declared, "sizes": sizes.__dict__,
              "steps": rows, "seconds": round(time.perf_counter() - started, 1),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "gpu_names": _gpu_names() if found else []}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=str)
    failed = [r["step"] for r in rows if r.get("error")]
    print(f"{'planned' if args.dry_run else 'ran'} {len(rows)} steps in {result['seconds']} s"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; written to {args.out}", flush=True)
    return result


def _gpu_names():
    import paddle

    return [paddle.device.cuda.get_device_name(i) for i in range(paddle.device.cuda.device_count())]
