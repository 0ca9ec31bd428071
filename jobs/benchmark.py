"""Benchmarks: each subcommand prints a table and writes JSON; figures are ratios measured in one run.

    python jobs/benchmark.py predict                       # 100 bundled-size images (360x480)
    python jobs/benchmark.py predict --n 200 --batch-size 4 --model-dir output/best_model/inference
    python jobs/benchmark.py train                         # 256x256 crops, batch 4 per worker
    python jobs/benchmark.py train --dataset-dir ../shared/data/camvid --iters 40 -c configs/SegFormer-B0.yaml
    python jobs/benchmark.py bulk                          # 200 and 2000 images
    python jobs/benchmark.py plan                          # planning 10k, 100k, 1M inputs
    python jobs/benchmark.py serve                         # 1, 8, 32 clients, batching on and off
    python jobs/benchmark.py multiplex --model-dir raysegment/data/models/PP-LiteSeg-T_camvid   # 3 models, one app
    python jobs/benchmark.py slide                         # 2048, 4096, 10000 px squares: slide mode against whole-image
    python jobs/benchmark.py models                        # all 20 models: params, GFLOPs, CPU images/s
    python jobs/benchmark.py models --models SeaFormer_tiny,PP-LiteSeg-T --size 512
    python jobs/benchmark.py paddlex --paddlex-python /tmp/pdx/bin/python --images ../shared/data/camvid/images
    python jobs/benchmark.py paddlex-serve --paddlex-python /tmp/pdx/bin/python   # after `paddlex --install serving`

predict: images/s of `create_model().predict` with save_to_img + save_to_json, against the bare
exported-model forward on pre-decoded, pre-normalised arrays (the compute limit), and the forward
speed of every paddle.inference CPU mode and of dygraph.

bulk: images/s of the bulk job (jobs/predict.py, a fresh local Ray, outputs written) with no
tuning flags (it sizes itself) at N and 10 N images and, at 10 N, in each CPU layout set by hand
(1 actor x C threads, C actors x 1 thread); of a sequential create_model().predict + save loop; of
the bare forward on pre-decoded arrays (the compute limit, the faster layout); and each job's peak
memory summed over its process tree (driver, Ray's services, workers) as RSS (shared pages once
per process) and PSS (shared pages divided among the processes sharing them).

plan: seconds and driver memory (peak growth of its anonymous memory: heap, numpy, Arrow) of planning a bulk job over a URL list of N
inputs, half of them recorded by an earlier run: the streamed listing, the resume check and the
blocks put into the object store; then of merging the manifest as the commit does (N lines: the
earlier run's file and this run's part files, one per block).

slide: seconds and peak RSS of one huge image (a mosaic of a bundled street scene, no resize)
through create_model(slide_window=...) against whole-image inference, each in a fresh process, on
the bundled model with Paddle oneDNN pinned for both (no per-shape engine race); the whole-image run
is skipped where its memory, extrapolated from the smaller sizes, would pass 70% of what is free.

serve: a closed-loop load test of the Serve app (a fresh local Ray) at 1, 8 and 32 concurrent
clients, with dynamic batching and without, bounded by --requests and --seconds per row:
requests/s, p50 and p99 latency, errors; beside the bulk job's images/s on the same images, and
the time to write a 2048x1024 labelMap as JSON.

models: for every registered model (or --models), parameters, GFLOPs of one forward
(raysegment.models.flops) and CPU images/s of the exported model on every engine (plain Paddle,
oneDNN, ONNX Runtime, OpenVINO fp32 and bf16) with each one's pixel agreement with plain Paddle,
batch 1, all CPU threads, in one run.

train: training images/s of jobs/train.py's Ray Train path with 1 worker and with 2 workers
(gloo), against the bare Paddle forward + backward + step on random arrays in one process (the
compute limit): overhead = 1 - Ray 1 worker / bare. Without --dataset-dir a dataset is made from
the bundled images with random block labels.

paddlex: whole-process seconds of PaddleX 3.7.2 (its own virtualenv; create_model().predict +
save_to_img + save_to_json) and of jobs/predict.py with its defaults on the same N images, the
bundled CamVid model unless --model-dir.

paddlex-serve: `paddlex --serve` against jobs/serve.py, each with its default settings, one after
the other on the same port, at 1, 8 and 32 closed-loop clients (req/s, p50, p99, errors).

predict, bulk and serve use --model-dir, or an untrained PP-LiteSeg-T with 11 classes (speed does
not depend on the weights); every title names the model measured.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysegment.cli import run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "raysegment", "data", "samples")
BUNDLED_MODEL = os.path.join(ROOT, "raysegment", "data", "models", "PP-LiteSeg-T_camvid")


# ---- one timer, one table --------------------------------------------------------------------


def best_seconds(fn, repeats=2):
    """Seconds of fn(), best of `repeats` (the machine is shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rate(fn, n, repeats=2):
    """Items per second of fn() handling `n` items, best of `repeats`."""
    return n / best_seconds(fn, repeats)


def print_table(title, header, rows, decimals=2):
    """A titled table: the first column left-aligned, the rest right-aligned, floats rounded."""
    def cell(v):
        return f"{v:.{decimals}f}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [list(header)] + cells) for i in range(len(header))]
    print(f"\n{title}")
    for row in [list(header)] + cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


# ---- inputs ------------------------------------------------------------------------------------


def make_image_dir(folder, n):
    """n JPEGs of one size, cycling through the bundled CamVid samples."""
    samples = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES))
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        shutil.copyfile(samples[i % len(samples)], os.path.join(folder, f"img_{i:05d}.jpg"))
    return folder


def model_folder(args, work, model_name="PP-LiteSeg-T", num_classes=11):
    """(inference folder, model name): --model-dir, or an untrained model exported here (with its
    checkpoint beside it, for the dygraph row)."""
    from raysegment.infer.model_files import read_model_folder

    if args.model_dir:
        return args.model_dir, read_model_folder(args.model_dir).model_name
    import paddle

    from raysegment.data.labels import default_class_names
    from raysegment.infer import export_model, save_checkpoint
    from raysegment.models import build_model

    paddle.seed(0)
    layer = build_model(model_name, num_classes)
    names = default_class_names(num_classes)
    save_checkpoint(layer, os.path.join(work, "model", "checkpoint"), model_name, names)
    return export_model(layer, os.path.join(work, "model", "inference"), model_name, names), f"untrained {model_name}"


# ---- predict -----------------------------------------------------------------------------------


def bench_predict(args, work):
    import numpy as np

    import raysegment
    from raysegment.data.image import decode_image
    from raysegment.infer.engine_spec import CPU_RUN_MODES
    from raysegment.infer.engines import InferenceEngine, LayerEngine, resolve_device
    from raysegment.infer.export import load_checkpoint

    model_dir, model_name = model_folder(args, work)
    images = make_image_dir(os.path.join(work, "images"), args.n)
    out_dir = os.path.join(work, "out")
    model = raysegment.create_model(model_dir=model_dir, device=args.device)
    predictor = model.predictor
    paths = sorted(os.path.join(images, f) for f in os.listdir(images))
    rgb = [decode_image(open(p, "rb").read(), p) for p in paths]
    batches = [np.stack([predictor.preprocess(img) for img in rgb[i : i + args.batch_size]]) for i in range(0, len(rgb), args.batch_size)]
    predictor.engine(batches[0])  # warm-up

    def end_to_end():
        for res in model.predict(images, batch_size=args.batch_size):
            res.save_to_img(out_dir)
            res.save_to_json(out_dir)

    def forward(engine):
        return lambda: [engine(b) for b in batches]

    rows = {"create_model().predict + save (end to end)": rate(end_to_end, args.n),
            "bare forward, pre-decoded (compute limit)": rate(forward(predictor.engine), args.n)}
    stages = {"read + decode only": rate(lambda: [decode_image(open(p, "rb").read(), p) for p in paths], args.n),
              "preprocess only": rate(lambda: [predictor.preprocess(img) for img in rgb], args.n)}
    modes = {}
    device = resolve_device(args.device)
    for mode in [m for m in CPU_RUN_MODES if m != predictor.engine.run_mode] if device[0] == "cpu" else []:
        try:
            engine = InferenceEngine(predictor.info.graph_file, predictor.info.params_file, device, mode)
            engine(batches[0])
            modes[f"paddle.inference {mode}"] = rate(forward(engine), args.n)
        except Exception as e:  # a mode that fails is a result to report, not a crash
            modes[f"paddle.inference {mode}"] = f"fails: {str(e).strip().splitlines()[0][:90]}"
    checkpoint = os.path.join(os.path.dirname(model_dir), "checkpoint")
    if os.path.isdir(checkpoint):
        engine = LayerEngine(load_checkpoint(checkpoint)[0], device)
        engine(batches[0])
        modes["dygraph (checkpoint)"] = rate(forward(engine), args.n)

    ratio = rows["create_model().predict + save (end to end)"] / rows["bare forward, pre-decoded (compute limit)"]
    shown = {name: "fails (below)" if isinstance(value, str) else value for name, value in {**rows, **stages, **modes}.items()}
    print_table(f"predict benchmark: {args.n} images {rgb[0].shape[1]}x{rgb[0].shape[0]}, batch {args.batch_size}, {model_name}, "
                f"run mode {predictor.engine.run_mode}, {os.cpu_count()} CPUs",
                ("measurement", "images/s"), [*shown.items(), ("ratio end-to-end / compute limit", ratio)])
    for name, value in modes.items():
        if isinstance(value, str):
            print(f"{name} {value}")
    return {"n": args.n, "batch_size": args.batch_size, "image_size": [rgb[0].shape[1], rgb[0].shape[0]], "model": model_name,
            "run_mode": predictor.engine.run_mode, "images_per_s": rows, "stages_images_per_s": stages,
            "forward_modes_images_per_s": modes, "ratio_end_to_end_over_limit": ratio}


# ---- train -------------------------------------------------------------------------------------


def make_train_dir(folder, n, num_classes=11):
    """A SegDataset from the bundled images with random block labels (speed does not depend on them)."""
    import cv2
    import numpy as np

    from raysegment.data.labels import default_class_names

    samples = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES))
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    lines = []
    for i in range(n):
        shutil.copyfile(samples[i % len(samples)], os.path.join(folder, "images", f"{i}.jpg"))
        label = np.kron(rng.integers(0, num_classes, (9, 12)), np.ones((40, 40))).astype(np.uint8)  # 360 x 480
        cv2.imwrite(os.path.join(folder, "annotations", f"{i}.png"), label)
        lines.append(f"images/{i}.jpg annotations/{i}.png")
    for split, part in (("train", lines), ("val", lines[:4])):
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.write("\n".join(part) + "\n")
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("".join(f"{name}\n" for name in default_class_names(num_classes)))
    return folder


def bare_train_step_rate(cfg, iters, threads):
    """images/s of forward + the model's training loss + backward + optimizer step on random arrays, no data loading."""
    import numpy as np
    import paddle

    from raysegment.models import build_model
    from raysegment.train.loop import make_optimizer
    from raysegment.train.losses import training_loss

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(threads)
    t = cfg.Train
    net = build_model(cfg.Global.model, t.num_classes)
    net.train()
    opt = make_optimizer(t, net)
    w, h = t.crop_size
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((t.batch_size, 3, h, w)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, t.num_classes, (t.batch_size, h, w)).astype("int64"))

    def step():
        loss = training_loss(net, net(x), y, t.loss, t.ohem_min_kept, t.loss_coefs, lovasz_weight=t.lovasz_weight)
        loss.backward()
        opt.step()
        opt.clear_grad()
        return float(loss)  # sync point, as the loop's logging is

    step()
    return rate(lambda: [step() for _ in range(iters)], iters * t.batch_size, repeats=1)


def bench_train(args, work):
    from raysegment.config import load_config
    from raysegment.train.ray_train import fit

    dataset = args.dataset_dir or make_train_dir(os.path.join(work, "data"), 24)
    base = [f"Global.dataset_dir={dataset}", "Train.num_classes=11", "Train.batch_size=4", "Train.crop_size=[256,256]",
            f"Train.epochs_iters={args.iters}", f"Train.eval_interval={args.iters}", "Train.log_interval=10"]
    cfg = load_config(args.config, base)
    bare1, bare2 = bare_train_step_rate(cfg, args.iters, 1), bare_train_step_rate(cfg, args.iters, 2)
    ray_rates = {}
    # On 2 cores a CPU must stay free for Ray Data's decode/augment tasks: 1 worker x 1 CPU, 2 x 0.5.
    for workers, cpus in ((1, 1.0), (2, 0.5)):
        run_cfg = load_config(args.config, base + [f"Global.output={work}/run{workers}", f"Ray.num_workers={workers}",
                                                   f"Ray.cpus_per_worker={cpus}"])
        ray_rates[workers] = fit(run_cfg)["images_per_s"]
    rows = {"bare forward+backward, 1 thread (compute limit for 1 worker)": bare1,
            "bare forward+backward, 2 threads": bare2,
            "Ray Train, 1 worker x 1 thread (jobs/train.py path)": ray_rates[1],
            "Ray Train, 2 workers x 1 thread (jobs/train.py path)": ray_rates[2]}
    ratios = {"ray1_over_bare": ray_rates[1] / bare1, "scaling_2_over_1": ray_rates[2] / ray_rates[1]}
    print_table(f"train benchmark: {cfg.Global.model}, 256x256 crops, batch 4 per worker, {args.iters} iterations, {os.cpu_count()} CPUs",
                ("measurement", "images/s"), [*rows.items(), ("Ray Train 1 worker / bare (1 - overhead)", ratios["ray1_over_bare"]),
                                              ("2 workers / 1 worker (scaling)", ratios["scaling_2_over_1"])])
    return {"model": cfg.Global.model, "images_per_s": rows, **ratios, "iters": args.iters}


# ---- bulk --------------------------------------------------------------------------------------


def tree_memory(root_pid):
    """(RSS, PSS) in bytes summed over a process and all its descendants, from /proc. RSS counts a
    page shared by several processes (libraries, the object store) once per process; PSS divides
    it among them, so the PSS sum is what the job takes from the machine."""
    children, totals = {}, [0, 0]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1] == "kB"}
        except (OSError, ValueError, IndexError):
            continue
        totals[0] += fields.get("Rss", 0) * 1024
        totals[1] += fields.get("Pss", 0) * 1024
    return tuple(totals)


def run_bulk_job(model_dir, images, out, batch_size, layout=None):
    """jobs/predict.py in a fresh process (its own local Ray): with no tuning flags (layout None:
    the actors, CPUs and threads it sizes itself), or `layout` = (actors, threads per actor), each
    actor reserving an equal share of the CPUs. Returns (summary, peak RSS sum, peak PSS sum)."""
    cpus = os.cpu_count()
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "predict.py"), "--model-dir", model_dir, "--input", images, "--output", out,
           "-o", f"Ray.predict_batch_size={batch_size}", "-o", f"Predict.batch_size={batch_size}"]
    if layout:
        actors, threads = layout
        cmd += ["-o", f"Ray.predict_concurrency={actors}", "-o", f"Ray.cpus_per_actor={cpus / actors:g}",
                "-o", f"Ray.threads_per_actor={threads}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    with open(os.path.join(out, "_SUCCESS.json")) as f:
        return json.load(f), peak_rss, peak_pss


def _forward_worker(model_dir, images, threads, batch_size, barrier, results):
    import numpy as np

    from raysegment.data.image import decode_image
    from raysegment.infer import Predictor
    from raysegment.infer.engine_spec import EngineSpec

    predictor = Predictor.load(model_dir, device="cpu", engine=EngineSpec(cpu_threads=threads))  # the default engine choice
    inputs = [predictor.preprocess(decode_image(open(p, "rb").read(), p)) for p in images]
    batches = [np.stack(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    predictor.engine(batches[0])
    barrier.wait()  # every process starts timing together
    results.put(best_seconds(lambda: [predictor.engine(b) for b in batches], repeats=1))


def bare_forward_rate(model_dir, images, processes, threads, batch_size, repeats=2):
    """images/s of the bare forward on pre-decoded arrays, `images` split over `processes` concurrent
    processes of `threads` Paddle threads each; best of `repeats`."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    best = float("inf")
    for _ in range(repeats):
        barrier, results = ctx.Barrier(processes), ctx.Queue()
        procs = [ctx.Process(target=_forward_worker, args=(model_dir, images[k::processes], threads, batch_size, barrier, results))
                 for k in range(processes)]
        for proc in procs:
            proc.start()
        best = min(best, max(results.get() for _ in procs))
        for proc in procs:
            proc.join()
    return len(images) / best


def bench_bulk(args, work):
    import raysegment

    n, cpus, batch = args.n, os.cpu_count(), args.batch_size
    model_dir, model_name = model_folder(args, work)
    small = make_image_dir(os.path.join(work, "images_n"), n)
    large = make_image_dir(os.path.join(work, "images_10n"), 10 * n)
    paths = sorted(os.path.join(small, f) for f in os.listdir(small))
    # Two ways to spend the CPUs on the bare forward; the faster is the compute limit. On 2 cores,
    # one process with 2 Paddle threads is slower than 2 single-thread processes side by side.
    layouts = {f"1 process x {cpus} threads": (1, cpus), f"{cpus} processes x 1 thread": (cpus, 1)}
    limits = {name: bare_forward_rate(model_dir, paths, p, t, batch) for name, (p, t) in layouts.items()}
    best = max(limits, key=limits.get)
    model = raysegment.create_model(model_dir=model_dir)

    def sequential():
        for res in model.predict(small, batch_size=batch):
            res.save_to_img(os.path.join(work, "seq"))
            res.save_to_json(os.path.join(work, "seq"))

    seq = rate(sequential, n, repeats=1)
    # the job as a user runs it (no tuning flags: it sizes itself to the machine), then each layout set by hand
    runs = {"defaults, N": run_bulk_job(model_dir, small, os.path.join(work, "bulk_n"), batch),
            "defaults, 10 N": run_bulk_job(model_dir, large, os.path.join(work, "bulk_10n"), batch)}
    for name, layout in layouts.items():
        runs[f"{name}, 10 N"] = run_bulk_job(model_dir, large, os.path.join(work, f"bulk_{layout[0]}x{layout[1]}"), batch, layout)
    assert all(summary["done"] == summary["inputs"] for summary, _, _ in runs.values()), runs
    speed = {name: summary["images_per_s"] for name, (summary, _, _) in runs.items()}
    best_set = max((name for name in speed if not name.startswith("defaults")), key=speed.get)
    limit = limits[best]
    ratios = {"defaults_over_best_layout_10n": speed["defaults, 10 N"] / speed[best_set],
              "bulk_n_over_limit": speed["defaults, N"] / limit, "bulk_10n_over_limit": speed["defaults, 10 N"] / limit,
              "bulk_n_over_sequential": speed["defaults, N"] / seq,
              "peak_pss_10n_over_n": runs["defaults, 10 N"][2] / runs["defaults, N"][2]}
    mb = {name: (round(rss / 2**20), round(pss / 2**20)) for name, (_, rss, pss) in runs.items()}
    print_table(f"bulk benchmark: {n} (N) and {10 * n} images 480x360, {cpus} CPUs, batch {batch}, {model_name}",
                ("measurement", "value"), [
                    *((f"bare forward, pre-decoded, {name} (images/s)", value) for name, value in limits.items()),
                    (f"sequential create_model().predict + save ({cpus} threads) (images/s)", seq),
                    *((f"bulk job, {name} (images/s)", value) for name, value in speed.items()),
                    (f"bulk defaults / best layout set by hand ({best_set}), 10 N", ratios["defaults_over_best_layout_10n"]),
                    (f"bulk defaults / compute limit ({best}), N / 10 N", f"{ratios['bulk_n_over_limit']:.2f} / {ratios['bulk_10n_over_limit']:.2f}"),
                    ("bulk defaults / sequential, N", ratios["bulk_n_over_sequential"]),
                    *((f"peak memory, {name}: RSS sum / PSS sum (MB)", f"{r} / {p}") for name, (r, p) in mb.items()),
                    ("peak PSS 10 N / N", ratios["peak_pss_10n_over_n"])])
    return {"n": n, "model": model_name, "batch_size": batch, "images_per_s": {**limits, "sequential": seq, **speed},
            "peak_mb_rss_pss": mb, "best_layout_by_hand": best_set, **ratios}


# ---- plan --------------------------------------------------------------------------------------


class HeapPeak:
    """Peak of this process's anonymous memory (heap, numpy, Arrow; not the object store's shared
    pages that ray.put maps in), sampled every 10 ms from /proc/self/smaps_rollup, in MB."""

    def __init__(self):
        import threading

        self.peak, self.base, self._stop = 0.0, self.now(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def now():
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Anonymous:")) / 1024

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def growth(self):
        """Peak so far above the level at start, MB."""
        self.peak = max(self.peak, self.now())
        return self.peak - self.base


def _plan_worker(listing, out, results):
    """In a fresh process: plan the bulk job over `listing` into `out` (whose earlier records are
    skipped) with the blocks put in a local Ray's object store, then merge the records as the
    commit does; report seconds and the driver's peak heap growth."""
    import ray

    from raysegment.batch import _blocks
    from raysegment.bulk_output import BulkRun
    from raysegment.data.sources import list_inputs

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    heap = HeapPeak()
    start = time.perf_counter()
    run = BulkRun(out)
    blocks, rows = _blocks(ray, run.plan(list_inputs(listing)), actors=2)
    plan_s, plan_mb = time.perf_counter() - start, heap.growth()
    for ref in blocks:  # the job records each block's results as they arrive (one part file each)
        uris = ray.get(ref).column("uri").to_pylist()
        run.record((u, "done", [f"{u}.png", f"{u}.json"], "") for u in uris)
    start = time.perf_counter()
    summary = run.commit({})  # the merge of every recorded line, as the job's end does it
    results.put({"to_do": rows, "skipped": run.skipped_done, "blocks": len(blocks), "plan_s": plan_s, "plan_mb": plan_mb,
                 "merge_s": time.perf_counter() - start, "merge_mb": heap.growth(), "merged_lines": summary["inputs"]})
    ray.shutdown()


def bench_plan(args, work):
    """Planning a bulk job of N inputs (a URL list of N lines), half of them recorded by an earlier
    run: seconds and driver memory of the plan (listing, resume check, blocks into the object
    store) and of merging the manifest (the earlier run's and this run's parts, one per block)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    rows, results = [], {}
    for n in args.sizes:
        listing, out = os.path.join(work, f"urls_{n}.txt"), os.path.join(work, f"out_{n}")
        with open(listing, "w") as f:
            f.writelines(f"http://127.0.0.1:9/camera-{i % 97:02d}/frame_{i:08d}.jpg\n" for i in range(n))
        os.makedirs(out)
        with open(os.path.join(out, "_manifest.jsonl"), "w") as f:  # an earlier run did every other input
            f.writelines(json.dumps({"uri": f"http://127.0.0.1:9/camera-{i % 97:02d}/frame_{i:08d}.jpg", "status": "done",
                                     "outputs": [f"127.0.0.1_9/camera-{i % 97:02d}/frame_{i:08d}.png",
                                                 f"127.0.0.1_9/camera-{i % 97:02d}/frame_{i:08d}.json"]}) + "\n" for i in range(0, n, 2))
        queue = ctx.Queue()
        proc = ctx.Process(target=_plan_worker, args=(listing, out, queue))
        proc.start()
        r = queue.get()
        proc.join()
        assert r["to_do"] == n // 2 and r["skipped"] == (n + 1) // 2 and r["merged_lines"] == n, r
        results[n] = r
        rows.append((f"{n:,}", r["to_do"], r["blocks"], r["plan_s"], round(r["plan_mb"]), r["merge_s"], round(r["merge_mb"])))
    print_table("bulk planning: N inputs in a URL list, half recorded by an earlier run (driver process)",
                ("inputs", "to do", "blocks", "plan s", "plan MB", "merge s", "merge MB"), rows)
    return {"sizes": results}


# ---- slide -------------------------------------------------------------------------------------


def _slide_worker(side, window, stride, results):
    """In a fresh process: one side x side image through the bundled model, whole or sliding."""
    import resource

    import cv2
    import numpy as np

    import raysegment

    tile = cv2.imread(os.path.join(ROOT, "raysegment", "data", "samples", "0016E5_07959.jpg"))
    img = np.tile(tile, (side // tile.shape[0] + 1, side // tile.shape[1] + 1, 1))[:side, :side]
    slide = {"slide_window": window, "slide_stride": stride} if window else {}
    model = raysegment.create_model(model_dir=os.path.join(ROOT, "raysegment", "data", "models", "PP-LiteSeg-T_camvid"),
                                    target_size=-1, engine="paddle", max_image_pixels=side * side, **slide)
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    (res,) = model.predict(img, batch_size=2)
    seconds = time.perf_counter() - start
    results.put({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_mb": base_mb,
                 "mask": res["pred"][0][:: max(side // 512, 1), :: max(side // 512, 1)].copy()})


def bench_slide(args, work):
    """One huge image: slide mode against whole-image inference (where it fits), seconds and peak RSS."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")

    def measure(side, window):
        queue = ctx.Queue()
        proc = ctx.Process(target=_slide_worker, args=(side, window, args.stride if window else None, queue))
        proc.start()
        result = queue.get()
        proc.join()
        return result

    free_mb = next(int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable"))
    rows, results, per_pixel = [], {}, None
    for side in args.sides:
        slid = measure(side, args.window)
        whole, note = None, ""
        estimate = per_pixel * side * side if per_pixel else 0
        if estimate < 0.7 * free_mb:
            whole = measure(side, None)
            per_pixel = max(per_pixel or 0, (whole["peak_mb"] - whole["base_mb"]) / (side * side))
        else:
            note = f"not run: ~{estimate / 1024:.0f} GB estimated, {free_mb / 1024:.0f} GB free"
        agree = float((whole["mask"] == slid["mask"]).mean()) if whole else None
        results[side] = {"slide": {k: v for k, v in slid.items() if k != "mask"},
                         "whole": {k: v for k, v in whole.items() if k != "mask"} if whole else note, "agreement": agree}
        rows.append((f"{side}x{side}", slid["seconds"], round(slid["peak_mb"]), whole["seconds"] if whole else "-",
                     round(whole["peak_mb"]) if whole else note, "-" if agree is None else f"{agree:.4f}"))
    print_table(f"one huge image, PP-LiteSeg-T (bundled), Paddle oneDNN: slide window {args.window} stride {args.stride} "
                "against whole-image (fresh process each; peak RSS includes the loaded model)",
                ("image", "slide s", "slide peak MB", "whole s", "whole peak MB", "masks agree"), rows)
    return {"window": args.window, "stride": args.stride, "sizes": results}


# ---- serve -------------------------------------------------------------------------------------


def load_test(url, bodies, clients, max_requests, max_seconds, headers=({},)):
    """Closed loop: `clients` threads, each with its own keep-alive connection, send the next body as
    soon as their previous answer is in, until `max_requests` are sent or `max_seconds` pass.
    Request i carries headers[i % len(headers)] (e.g. a model id). Returns requests/s, p50 and p99
    latency (ms) and the count of non-200 or non-zero errorCode answers."""
    import http.client
    import itertools
    import threading
    from urllib.parse import urlparse

    import numpy as np

    host, port = urlparse(url).hostname, urlparse(url).port
    tickets, lock = itertools.count(), threading.Lock()
    latencies, errors = [], []
    start = time.perf_counter()

    def client():
        conn = http.client.HTTPConnection(host, port, timeout=120)
        while True:
            with lock:
                i = next(tickets)
            if i >= max_requests or time.perf_counter() - start > max_seconds:
                break
            t = time.perf_counter()
            try:
                conn.request("POST", "/semantic-segmentation", bodies[i % len(bodies)],
                             {"Content-Type": "application/json", **headers[i % len(headers)]})
                resp = conn.getresponse()
                answer = resp.read()
                # the envelope's errorCode: first in ours, last in PaddleX's
                ok = resp.status == 200 and re.search(rb'"errorCode":\s*0[,}]', answer[:200] + answer[-200:]) is not None
            except OSError as e:
                ok, answer = False, repr(e).encode()
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=120)
            with lock:
                (latencies if ok else errors).append(time.perf_counter() - t if ok else answer[:200])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": len(errors), "requests": len(latencies) + len(errors),
            "first_error": errors[0].decode(errors="replace") if errors else None}


def time_label_map_encoding(h=1024, w=2048, num_classes=19):
    """ms to write a label map as the JSON labelMap list: the app's orjson path and json.dumps(tolist())."""
    import numpy as np
    import orjson

    mask = np.random.default_rng(0).integers(0, num_classes, (h, w), dtype=np.int32)
    fast = best_seconds(lambda: orjson.dumps({"labelMap": mask.ravel()}, option=orjson.OPT_SERIALIZE_NUMPY), 3)
    slow = best_seconds(lambda: json.dumps({"labelMap": mask.ravel().tolist()}), 3)
    return fast * 1000, slow * 1000


def start_local_serve(cpus, request_timeout_s):
    """A fresh local Ray of `cpus` CPUs with Serve's proxy on a free 127.0.0.1 port; its base URL."""
    import socket

    import ray
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": request_timeout_s})
    return f"http://127.0.0.1:{port}"


def bench_serve(args, work):
    """Load test of the Serve app on a local Ray, batching on and off, plus the bulk job on the same images."""
    import base64

    import ray
    from ray import serve

    from raysegment.serve import build_app

    model_dir, model_name = model_folder(args, work)
    samples = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES))
    bodies = [json.dumps({"image": base64.b64encode(open(p, "rb").read()).decode()}).encode() for p in samples]
    # the layout bench_bulk finds fastest on CPU: one single-thread replica (and bulk actor) per CPU
    cpus, batch_size = os.cpu_count(), args.batch_size
    bulk, _, _ = run_bulk_job(model_dir, make_image_dir(os.path.join(work, "images"), args.n), os.path.join(work, "bulk"), batch_size)
    url = start_local_serve(cpus, request_timeout_s=120)
    rows = {}
    for batch in (batch_size, 1):
        serve.run(build_app({"model_dir": model_dir, "max_batch_size": batch, "batch_wait_timeout_s": 0.01, "max_ongoing_requests": 64,
                             "num_replicas": cpus, "cpus_per_replica": 1, "threads_per_replica": 1}), name="bench", route_prefix="/")
        load_test(url, bodies, 2 * cpus, 4 * cpus, 60)  # warm-up: every replica's first forward pass
        for clients in (1, 8, 32):
            key = f"{f'batching (max {batch})' if batch > 1 else 'no batching'}, {clients} clients"
            rows[key] = load_test(url, bodies, clients, max(args.requests, 4 * clients), args.seconds)
    serve.shutdown()
    ray.shutdown()
    fast, slow = time_label_map_encoding()
    batched, unbatched = rows[f"batching (max {batch_size}), 32 clients"], rows["no batching, 32 clients"]
    ratios = {"batched_over_unbatched_32": batched["requests_per_s"] / unbatched["requests_per_s"],
              "batched_32_over_bulk": batched["requests_per_s"] / bulk["images_per_s"]}
    print_table(f"serve benchmark: POST /semantic-segmentation with base64 JPEGs 480x360, {cpus} replicas x 1 thread, "
                f"{cpus} CPUs, {model_name}; closed loop, at most {args.requests} requests or {args.seconds:g} s per row",
                ("setting", "req/s", "p50 ms", "p99 ms", "errors", "requests"),
                [(name, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]), r["errors"], r["requests"]) for name, r in rows.items()]
                + [("bulk job, same images (images/s)", bulk["images_per_s"], "", "", "", "")])
    print(f"batched / unbatched at 32 clients: {ratios['batched_over_unbatched_32']:.3f}; "
          f"batched at 32 clients / bulk job: {ratios['batched_32_over_bulk']:.3f}")
    print(f"labelMap JSON for a 2048x1024 map: {fast:.1f} ms (orjson, as served) vs {slow:.0f} ms (json.dumps of .tolist())")
    return {"model": model_name, "rows": rows, "bulk_images_per_s": bulk["images_per_s"], **ratios,
            "label_map_encoding_ms": {"orjson": fast, "json_tolist": slow, "shape": [1024, 2048]}}


def bench_multiplex(args, work):
    """Many models behind one Serve app: the first request for each model (it loads), requests/s on
    a loaded model, and requests/s cycling over the models with room for all of them on every
    replica, and with room for one (every switch a reload)."""
    import base64

    import ray
    from ray import serve

    from raysegment.serve import build_app

    model_dir, model_name = model_folder(args, work)
    models = {}
    for i in range(args.models):  # separate folders (ids), as fine-tuned copies would be
        models[f"site_{i}"] = shutil.copytree(model_dir, os.path.join(work, f"site_{i}"))
    sample = os.path.join(SAMPLES, sorted(os.listdir(SAMPLES))[0])
    bodies = [json.dumps({"image": base64.b64encode(open(sample, "rb").read()).decode()}).encode()]
    cpus = os.cpu_count()
    url = start_local_serve(cpus, request_timeout_s=300)
    ids = sorted(models)
    every = [{"serve_multiplexed_model_id": m} for m in ids]
    rows, cold = {}, {}
    for room in (len(ids), 1):
        serve.run(build_app({"model_dir": model_dir, "models": models, "max_models_per_replica": room, "num_replicas": cpus,
                             "cpus_per_replica": 1, "threads_per_replica": 1, "max_batch_size": args.batch_size,
                             "max_ongoing_requests": 64}), name="bench", route_prefix="/")
        load_test(url, bodies, 1, 2, 120)  # the default model's first forward
        if room == len(ids):
            for m in ids:  # each model's first request on this app: it loads on a replica
                cold[m] = load_test(url, bodies, 1, 1, 300, [{"serve_multiplexed_model_id": m}])["p50_ms"]
            rows["one model, loaded (8 clients)"] = load_test(url, bodies, 8, args.requests, args.seconds, every[:1])
            rows[f"{len(ids)} models in turn, all resident (8 clients)"] = load_test(url, bodies, 8, args.requests, args.seconds, every)
        else:
            rows[f"{len(ids)} models in turn, 1 per replica (8 clients)"] = load_test(url, bodies, 8, args.requests, args.seconds, every)
        serve.delete("bench")
    serve.shutdown()
    ray.shutdown()
    hot = rows["one model, loaded (8 clients)"]
    print_table(f"many models: {len(ids)} copies of {model_name} behind one app, {cpus} replicas x 1 thread, POST "
                "/semantic-segmentation with serve_multiplexed_model_id, 480x360 JPEG",
                ("setting", "req/s", "p50 ms", "p99 ms", "errors", "requests"),
                [(name, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]), r["errors"], r["requests"]) for name, r in rows.items()])
    print("first request for each model (it loads on a replica): " + ", ".join(f"{m} {ms:.0f} ms" for m, ms in cold.items())
          + f"; a loaded model's p50 {hot['p50_ms']:.0f} ms at 8 clients")
    return {"model": model_name, "models": len(ids), "cold_first_request_ms": cold, "rows": rows}


# ---- models ------------------------------------------------------------------------------------


def forward_rate(engine, x, seconds):
    """images/s of engine(x) (batch 1) over at least 3 runs and `seconds`, after a warm-up run."""
    engine(x)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        engine(x)
        runs += 1
    return runs / (time.perf_counter() - start)


def bench_models(args, work):
    """Per model: size, GFLOPs, and every CPU engine's images/s and pixel agreement with plain Paddle
    on a bundled CamVid frame resized to --size (real content: few near-ties between classes)."""
    import cv2
    import paddle

    from raysegment.data.image import decode_image
    from raysegment.data.labels import default_class_names
    from raysegment.infer import export_model
    from raysegment.infer.engines import InferenceEngine, default_cpu_threads
    from raysegment.infer.model_files import read_model_folder
    from raysegment.infer.onnx_export import ConversionError, onnx_file
    from raysegment.infer.runtimes import OnnxRuntimeEngine, OpenVinoEngine
    from raysegment.models import MODELS, build_model
    from raysegment.models.flops import count_gmacs

    names = args.models.split(",") if args.models else list(MODELS)
    size, threads = args.size, default_cpu_threads()
    sample = sorted(os.listdir(SAMPLES))[0]
    frame = cv2.resize(decode_image(open(os.path.join(SAMPLES, sample), "rb").read()), (size, size), interpolation=cv2.INTER_LINEAR)
    x = ((frame.astype("float32") / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]

    def onnx(info):
        try:
            return onnx_file(info)
        except ConversionError:  # PP-LiteSeg: static shapes only
            return onnx_file(info, (size, size))

    engines = {  # plain Paddle first: the reference
        "paddle": lambda info: InferenceEngine(info.graph_file, info.params_file, ("cpu", None), "paddle", threads),
        "mkldnn": lambda info: InferenceEngine(info.graph_file, info.params_file, ("cpu", None), "mkldnn", threads),
        "onnxruntime": lambda info: OnnxRuntimeEngine(onnx(info), ("cpu", None), threads),
        "openvino": lambda info: OpenVinoEngine(onnx(info), threads),
        "openvino_bf16": lambda info: OpenVinoEngine(onnx(info), threads, "bf16"),
    }
    timed = args.engines.split(",") if args.engines else list(engines)
    rows = {}
    for name in names:
        paddle.seed(0)
        layer = build_model(name, 11)
        row = {"params_m": round(sum(int(p.size) for p in layer.parameters() if not p.stop_gradient) / 1e6, 2),
               "weights_mb": round(sum(int(v.size) * 4 for v in layer.state_dict().values()) / 2**20, 1),
               "gflops": round(count_gmacs(layer, size), 2), "images_per_s": {}, "agreement_with_paddle": {}}
        info = read_model_folder(export_model(layer, os.path.join(work, name), name, default_class_names(11)))
        masks = {}
        for mode, make in engines.items():
            try:
                engine = make(info)
                masks[mode] = engine(x)
                row["agreement_with_paddle"][mode] = float((masks[mode] == masks["paddle"]).mean())
                # an engine not timed still runs once: plain Paddle's mask is the reference
                row["images_per_s"][mode] = round(forward_rate(engine, x, args.seconds_per_model), 3) if mode in timed else "not timed"
                del engine
            except Exception as e:  # an engine that cannot run a model is a result, not a crash
                row["images_per_s"][mode] = f"fails: {str(e).strip().splitlines()[0][:90]}"
        rows[name] = row
        print(name, json.dumps(row), flush=True)  # one line as each model finishes
        del layer
    modes = [m for m in engines if m in timed]
    print_table(f"models benchmark: {size}x{size} CamVid frame, batch 1, CPU, {threads} threads, untrained weights",
                ("model", "params (M)", "GFLOPs", *(f"{m} img/s" for m in modes), *(f"{m} = paddle" for m in modes if m != "paddle")),
                [(name, r["params_m"], r["gflops"], *(r["images_per_s"][m] if isinstance(r["images_per_s"][m], float) else "fails"
                                                       for m in modes),
                  *(f"{r['agreement_with_paddle'][m]:.4%}" if m in r["agreement_with_paddle"] else "-" for m in modes if m != "paddle"))
                 for name, r in rows.items()])
    return {"size": size, "cpu_threads": threads, "image": sample, "models": rows}


def paddlex_side_by_side(args):
    """(PaddleX's Python, the absolute model folder, its model name) for the paddlex benchmarks."""
    from raysegment.infer.model_files import read_model_folder

    python = args.paddlex_python or os.environ.get("RAYSEGMENT_PADDLEX_PYTHON")
    if not python:
        raise SystemExit("pass --paddlex-python (a Python with paddlex installed, and for paddlex-serve its serving "
                         "plugin: paddlex --install serving)")
    model_dir = os.path.abspath(args.model_dir or BUNDLED_MODEL)
    return python, model_dir, read_model_folder(model_dir).model_name


PADDLEX_SCRIPT = """
import sys
from paddlex import create_model
model_dir, images, out, name = sys.argv[1:5]
for res in create_model(model_name=name, model_dir=model_dir).predict(images, batch_size=1):
    res.save_to_img(out)
    res.save_to_json(out)
"""


def bench_paddlex(args, work):
    """Whole processes side by side on the same N images: PaddleX (its own virtualenv, its CPU
    default) predict + save_to_img + save_to_json, against jobs/predict.py with its defaults, run
    twice: with an empty engine cache (ONNX conversion included) and with the cache it left."""
    python, model_dir, name = paddlex_side_by_side(args)
    images = os.path.join(work, "images")
    os.makedirs(images)
    source = args.images or SAMPLES
    files = sorted(f for f in os.listdir(source) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    for i in range(args.n):
        shutil.copy(os.path.join(source, files[i % len(files)]), os.path.join(images, f"{i:05d}_{files[i % len(files)]}"))
    script = os.path.join(work, "paddlex_predict.py")
    with open(script, "w") as f:
        f.write(PADDLEX_SCRIPT)
    cache = os.path.join(work, "engine-cache")

    def timed(cmd, **env):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
        return round(time.perf_counter() - start, 2)

    ours = [sys.executable, os.path.join(ROOT, "jobs", "predict.py"), "--model-dir", model_dir, "--input", images]
    seconds = {
        "paddlex": timed([python, script, model_dir, images, os.path.join(work, "out_paddlex"), name]),
        "raysegment_cold_cache": timed([*ours, "--output", os.path.join(work, "out_cold")], RAYSEGMENT_CACHE_DIR=cache),
        "raysegment": timed([*ours, "--output", os.path.join(work, "out_warm")], RAYSEGMENT_CACHE_DIR=cache),
    }
    if args.option:  # the same job with other settings, e.g. one single-thread actor per core
        options = [arg for option in args.option for arg in ("-o", option)]
        seconds[f"raysegment {' '.join(args.option)}"] = timed([*ours, "--output", os.path.join(work, "out_opts"), *options],
                                                               RAYSEGMENT_CACHE_DIR=cache)
    with open(os.path.join(work, "out_warm", "_SUCCESS.json")) as f:
        engine = json.load(f)["engine"]
    print_table(f"paddlex benchmark: whole processes, {args.n} images from {source}, {name}, {os.cpu_count()} CPUs",
                ("run", "seconds", "images/s", "PaddleX / this"),
                [(k, v, round(args.n / v, 2), round(seconds["paddlex"] / v, 2)) for k, v in seconds.items()])
    return {"n": args.n, "images": source, "model_dir": model_dir, "seconds": seconds, "engine": engine,
            "speedup_over_paddlex": round(seconds["paddlex"] / seconds["raysegment"], 2),
            "speedup_over_paddlex_cold_cache": round(seconds["paddlex"] / seconds["raysegment_cold_cache"], 2)}


PADDLEX_PIPELINE = """pipeline_name: semantic_segmentation
SubModules:
  SemanticSegmentation:
    module_name: semantic_segmentation
    model_name: {name}
    model_dir: {model_dir}
    batch_size: 1
    target_size: None
"""


def bench_paddlex_serve(args, work):
    """Closed-loop load tests, one server at a time on the same port and images: PaddleX's
    `paddlex --serve` (its own virtualenv, CPU default) and jobs/serve.py with its default settings,
    both asked for the label map without the overlay (visualize: false)."""
    import base64
    import signal
    import socket
    import urllib.request

    python, model_dir, name = paddlex_side_by_side(args)
    pipeline = os.path.join(work, "pipeline.yaml")
    with open(pipeline, "w") as f:
        f.write(PADDLEX_PIPELINE.format(name=name, model_dir=model_dir))
    samples = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES))
    bodies = [json.dumps({"image": base64.b64encode(open(p, "rb").read()).decode(), "visualize": False}).encode() for p in samples]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    servers = {
        "paddlex": [os.path.join(os.path.dirname(python), "paddlex"), "--serve", "--pipeline", pipeline, "--host", "127.0.0.1",
                    "--port", str(port), "--device", "cpu"],
        "raysegment": [sys.executable, os.path.join(ROOT, "jobs", "serve.py"), "--model-dir", model_dir, "--port", str(port),
                       *[arg for option in args.option for arg in ("-o", option)]],
    }
    if args.skip_paddlex:
        del servers["paddlex"]
    rows = {}
    for server, cmd in servers.items():
        with open(os.path.join(work, f"{server}.log"), "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""})
        try:
            deadline = time.time() + 300
            while True:
                try:
                    request = urllib.request.Request(f"{url}/semantic-segmentation", bodies[0], {"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=60):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise SystemExit(f"{server} server did not answer; see {os.path.join(work, server + '.log')}") from None
                    time.sleep(1)
            load_test(url, bodies, 4, 16, 60)  # warm-up
            for clients in (1, 8, 32):
                rows[f"{server}, {clients} clients"] = load_test(url, bodies, clients, max(args.requests, 4 * clients), args.seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    ratio = rows["raysegment, 32 clients"]["requests_per_s"] / rows["paddlex, 32 clients"]["requests_per_s"] if not args.skip_paddlex else None
    print_table(f"paddlex-serve benchmark: POST /semantic-segmentation, base64 JPEGs 480x360, visualize false, {name}, "
                f"default settings of both, {os.cpu_count()} CPUs; closed loop, at most {args.requests} requests or {args.seconds:g} s per row",
                ("server, clients", "req/s", "p50 ms", "p99 ms", "errors", "requests"),
                [(k, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]), r["errors"], r["requests"]) for k, r in rows.items()])
    if ratio:
        print(f"raysegment / PaddleX at 32 clients: {ratio:.2f}")
    return {"model": name, "rows": rows, "raysegment_over_paddlex_32": ratio}


# ---- command line ------------------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="where to write the results (default output/benchmarks/<benchmark>.json)")
    sub = p.add_subparsers(dest="which", required=True, metavar="{predict,train,bulk,plan,slide,serve,multiplex,models,paddlex,paddlex-serve}")

    def add(name, fn, help, n=None, batch_size=None, model=False):
        s = sub.add_parser(name, help=help)
        s.set_defaults(fn=fn)
        if n:
            s.add_argument("--n", type=int, default=n, help=f"number of images (default {n})")
        if batch_size:
            s.add_argument("--batch-size", type=int, default=batch_size, help=f"images per forward (default {batch_size})")
        if model:
            s.add_argument("--model-dir", help="exported inference folder (default: an untrained PP-LiteSeg-T, 11 classes)")
        return s

    s = add("predict", bench_predict, "create_model().predict against the bare forward", n=100, batch_size=1, model=True)
    s.add_argument("--device", default="cpu")
    add("bulk", bench_bulk, "the bulk job at N and 10 N images against the compute limit", n=200, batch_size=4, model=True)
    s = add("plan", bench_plan, "planning a bulk job of 10k, 100k, 1M inputs: seconds and driver memory")
    s.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[10_000, 100_000, 1_000_000],
                   help="comma-separated input counts (default 10000,100000,1000000)")
    s = add("slide", bench_slide, "one huge image: slide mode against whole-image inference, seconds and peak RSS")
    s.add_argument("--sides", type=lambda v: [int(x) for x in v.split(",")], default=[2048, 4096, 10_000],
                   help="square image sides (default 2048,4096,10000)")
    s.add_argument("--window", type=int, default=1024, help="slide window side (default 1024)")
    s.add_argument("--stride", type=int, default=768, help="slide stride (default 768)")
    s = add("multiplex", bench_multiplex, "many models behind one Serve app: cold and hot requests", batch_size=4, model=True)
    s.add_argument("--models", type=int, default=3, help="model ids (copies of the model folder; default 3)")
    s.add_argument("--requests", type=int, default=120, help="most requests per row")
    s.add_argument("--seconds", type=float, default=30, help="most seconds per row")
    s = add("serve", bench_serve, "closed-loop load test of the Serve app", n=200, batch_size=4, model=True)
    s.add_argument("--requests", type=int, default=120, help="most requests per row")
    s.add_argument("--seconds", type=float, default=40, help="most seconds per row")
    s = add("train", bench_train, "Ray Train 1 and 2 workers against the bare training step")
    s.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "PP-LiteSeg-T.yaml"), help="model config")
    s.add_argument("--iters", type=int, default=30, help="iterations per measurement")
    s.add_argument("--dataset-dir", help="a SegDataset (default: one made from the bundled images)")
    s = add("paddlex", bench_paddlex, "whole-process bulk prediction against PaddleX", n=300, model=True)
    s.add_argument("--paddlex-python", help="a Python with paddlex installed (default: $RAYSEGMENT_PADDLEX_PYTHON)")
    s.add_argument("--images", help="folder of images to cycle through (default: the bundled samples)")
    s.add_argument("-o", "--option", action="append", default=[], help="also time our job with this override (repeatable)")
    s = add("paddlex-serve", bench_paddlex_serve, "Serve app (defaults) against paddlex --serve", model=True)
    s.add_argument("--paddlex-python", help="a Python with paddlex and its serving plugin (default: $RAYSEGMENT_PADDLEX_PYTHON)")
    s.add_argument("--requests", type=int, default=200, help="most requests per row")
    s.add_argument("--seconds", type=float, default=30, help="most seconds per row")
    s.add_argument("-o", "--option", action="append", default=[], help="a Serve option for our server (key=value; repeatable)")
    s.add_argument("--skip-paddlex", action="store_true", help="time only our server (e.g. to compare settings)")
    s = add("models", bench_models, "every registered model: params, GFLOPs, CPU images/s")
    s.add_argument("--models", help="comma-separated names (default: every registered model)")
    s.add_argument("--size", type=int, default=512, help="square input size")
    s.add_argument("--seconds-per-model", type=float, default=5.0, help="timing budget per model (at least 3 runs)")
    s.add_argument("--engines", help="comma-separated engines to time (default: paddle,mkldnn,onnxruntime,openvino,openvino_bf16); "
                                     "plain Paddle always runs once, as the reference")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raysegment-bench-") as work:
        result = args.fn(args, work)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    path = args.json or os.path.join("output", "benchmarks", f"{args.which}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results written to {path}")


if __name__ == "__main__":
    run(main)
