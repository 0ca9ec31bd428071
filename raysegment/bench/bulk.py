"""bulk: images/s of the bulk job (jobs/predict.py, a fresh local Ray, outputs written) with no
tuning flags (it sizes itself) at N and 10 N images and, at 10 N, in each CPU layout set by hand
(1 actor x C threads, C actors x 1 thread); of a sequential create_model().predict + save loop; of
the bare forward on pre-decoded arrays (the compute limit, the faster layout); and each job's peak
memory summed over its process tree (driver, Ray's services, workers) as RSS (shared pages once
per process) and PSS (shared pages divided among the processes sharing them).
"""

import os

from .common import (
    add_inputs,
    best_seconds,
    make_image_dir,
    model_folder,
    print_table,
    rate,
    run_bulk_job,
)


def _forward_worker(model_dir, images, threads, batch_size, barrier, results):
    import numpy as np

    from ..data.image import decode_image
    from ..infer import Predictor
    from ..infer.options import InferenceOptions

    predictor = Predictor.load(model_dir, InferenceOptions(), "cpu", threads)  # the default engine choice
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
    for name, layout in layouts.items() if not args.defaults_only else ():
        runs[f"{name}, 10 N"] = run_bulk_job(model_dir, large, os.path.join(work, f"bulk_{layout[0]}x{layout[1]}"), batch, layout)
    assert all(summary["done"] == summary["inputs"] for summary, _, _ in runs.values()), runs
    speed = {name: summary["images_per_s"] for name, (summary, _, _) in runs.items()}
    best_set = max((name for name in speed if not name.startswith("defaults")), key=speed.get, default=None)
    limit = limits[best]
    ratios = {"defaults_over_best_layout_10n": speed["defaults, 10 N"] / speed[best_set] if best_set else None,
              "bulk_n_over_limit": speed["defaults, N"] / limit, "bulk_10n_over_limit": speed["defaults, 10 N"] / limit,
              "bulk_n_over_sequential": speed["defaults, N"] / seq,
              "peak_pss_10n_over_n": runs["defaults, 10 N"][2] / runs["defaults, N"][2]}
    mb = {name: (round(rss / 2**20), round(pss / 2**20)) for name, (_, rss, pss) in runs.items()}
    print_table(f"bulk benchmark: {n} (N) and {10 * n} images 480x360, {cpus} CPUs, batch {batch}, {model_name}",
                ("measurement", "value"), [
                    *((f"bare forward, pre-decoded, {name} (images/s)", value) for name, value in limits.items()),
                    (f"sequential create_model().predict + save ({cpus} threads) (images/s)", seq),
                    *((f"bulk job, {name} (images/s)", value) for name, value in speed.items()),
                    *([(f"bulk defaults / best layout set by hand ({best_set}), 10 N", ratios["defaults_over_best_layout_10n"])]
                      if best_set else []),
                    (f"bulk defaults / compute limit ({best}), N / 10 N", f"{ratios['bulk_n_over_limit']:.2f} / {ratios['bulk_10n_over_limit']:.2f}"),
                    ("bulk defaults / sequential, N", ratios["bulk_n_over_sequential"]),
                    *((f"peak memory, {name}: RSS sum / PSS sum (MB)", f"{r} / {p}") for name, (r, p) in mb.items()),
                    ("peak PSS 10 N / N", ratios["peak_pss_10n_over_n"])])
    return {"n": n, "model": model_name, "batch_size": batch, "images_per_s": {**limits, "sequential": seq, **speed},
            "peak_mb_rss_pss": mb, "best_layout_by_hand": best_set, **ratios}


def bulk_arguments(p):
    add_inputs(p, n=200, batch_size=1, model=True)  # 1: the job's own Predict.batch_size
    p.add_argument("--defaults-only", action="store_true", help="skip the bulk jobs with CPU layouts set by hand")
