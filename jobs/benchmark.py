"""Benchmarks: each prints a table and writes JSON; figures are ratios measured in one run.

    python jobs/benchmark.py predict                       # 100 bundled-size images (360x480)
    python jobs/benchmark.py predict --n 200 --batch-size 4 --model-dir output/best_model/inference

predict: images/s of `create_model().predict` with save_to_img + save_to_json, against the bare
exported-model forward on pre-decoded, pre-normalised arrays (the compute limit), and the forward
speed of every paddle.inference CPU mode and of dygraph. Without --model-dir an untrained
PP-LiteSeg-T is exported (speed does not depend on the weights).
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysegment.cli import run  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raysegment", "data", "samples")


def make_image_dir(folder, n):
    """n JPEGs of one size, cycling through the bundled CamVid samples."""
    samples = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES))
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        shutil.copyfile(samples[i % len(samples)], os.path.join(folder, f"img_{i:05d}.jpg"))
    return folder


def untrained_model_dir(folder, model_name="PP-LiteSeg-T", num_classes=11):
    import paddle

    from raysegment.infer import export_model, save_checkpoint
    from raysegment.infer.model_files import default_class_names
    from raysegment.models import build_model

    paddle.seed(0)
    layer = build_model(model_name, num_classes)
    names = default_class_names(num_classes)
    save_checkpoint(layer, os.path.join(folder, "checkpoint"), model_name, names)
    return export_model(layer, os.path.join(folder, "inference"), model_name, names)


def timed(fn, n_images, repeats=2):
    """images/s of fn(), best of `repeats` (the machine is shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_images / best


def bench_predict(args, work):
    import numpy as np

    import raysegment
    from raysegment.data.image import decode_image
    from raysegment.infer import Predictor
    from raysegment.infer.engines import CPU_RUN_MODES, InferenceEngine, LayerEngine, resolve_device
    from raysegment.infer.export import load_checkpoint

    model_dir = args.model_dir or untrained_model_dir(os.path.join(work, "model"))
    images = make_image_dir(os.path.join(work, "images"), args.n)
    out_dir = os.path.join(work, "out")
    model = raysegment.create_model(model_dir=model_dir, device=args.device)
    predictor = model.predictor
    paths = sorted(os.path.join(images, f) for f in os.listdir(images))
    rgb = [decode_image(open(p, "rb").read(), p) for p in paths]
    batches = [np.stack([predictor.preprocess(img) for img in rgb[i : i + args.batch_size]]) for i in range(0, len(rgb), args.batch_size)]
    predictor.engine(batches[0])  # warm-up; settles the CPU run mode

    def end_to_end():
        for res in model.predict(images, batch_size=args.batch_size):
            res.save_to_img(out_dir)
            res.save_to_json(out_dir)

    def forward(engine):
        return lambda: [engine(b) for b in batches]

    rows = {}
    rows["create_model().predict + save (end to end)"] = timed(end_to_end, args.n)
    rows["bare forward, pre-decoded (compute limit)"] = timed(forward(predictor.engine), args.n)
    stages = {
        "read + decode only": timed(lambda: [decode_image(open(p, "rb").read(), p) for p in paths], args.n),
        "preprocess only": timed(lambda: [predictor.preprocess(img) for img in rgb], args.n),
    }
    modes = {}
    device = resolve_device(args.device)
    for mode in [m for m in CPU_RUN_MODES if m != predictor.engine.run_mode] if device[0] == "cpu" else []:
        try:
            engine = InferenceEngine(predictor.info.graph_file, predictor.info.params_file, device, mode if device[0] == "cpu" else None)
            engine(batches[0])
            modes[f"paddle.inference {mode}"] = timed(forward(engine), args.n)
        except Exception as e:  # a mode that fails is a result to report, not a crash
            modes[f"paddle.inference {mode}"] = f"fails: {str(e).strip().splitlines()[0][:90]}"
    ckpt = os.path.join(os.path.dirname(model_dir), "checkpoint")
    if os.path.isdir(ckpt):
        layer, _ = load_checkpoint(ckpt)
        engine = LayerEngine(layer, device)
        engine(batches[0])
        modes["dygraph (checkpoint)"] = timed(forward(engine), args.n)

    e2e, limit = rows["create_model().predict + save (end to end)"], rows["bare forward, pre-decoded (compute limit)"]
    print(f"\npredict benchmark: {args.n} images {rgb[0].shape[1]}x{rgb[0].shape[0]}, batch {args.batch_size}, "
          f"{predictor.model_name}, run mode {predictor.engine.run_mode}, {os.cpu_count()} CPUs")
    print(f"{'measurement':52s} {'images/s':>10s}")
    for name, value in {**rows, **stages, **modes}.items():
        print(f"{name:52s} {value:>10.2f}" if isinstance(value, float) else f"{name:52s} {value}")
    print(f"{'ratio end-to-end / compute limit':52s} {e2e / limit:>10.3f}")
    return {"n": args.n, "batch_size": args.batch_size, "image_size": [rgb[0].shape[1], rgb[0].shape[0]],
            "model": predictor.model_name, "run_mode": predictor.engine.run_mode, "images_per_s": rows,
            "stages_images_per_s": stages, "forward_modes_images_per_s": modes, "ratio_end_to_end_over_limit": e2e / limit}


BENCHMARKS = {"predict": bench_predict}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=sorted(BENCHMARKS))
    parser.add_argument("--n", type=int, default=100, help="number of images")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--model-dir", help="exported inference folder (default: an untrained PP-LiteSeg-T)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="where to write the results (default output/benchmarks/<which>.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raysegment-bench-") as work:
        result = BENCHMARKS[args.which](args, work)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    path = args.json or os.path.join("output", "benchmarks", f"{args.which}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results written to {path}")


if __name__ == "__main__":
    run(main)
