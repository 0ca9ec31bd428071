"""Benchmarks: each prints a table and writes JSON; figures are ratios measured in one run, on one
machine. One module a benchmark; `python jobs/benchmark.py NAME --help` lists each one's options.

    predict        create_model().predict against the bare forward (predict.py)
    precision      fp32, bf16 and int8 side by side: engine, images/s, val mIoU (precision.py)
    bulk           the bulk job at N and 10 N images against the compute limit (bulk.py)
    plan           planning a bulk job of 10k, 100k, 1M inputs (plan.py)
    slide          one huge image, slide mode against whole-image inference (slide.py)
    serve          closed-loop load test of the Serve app (serve.py); multiplex: many models, one app;
                   overload: the default app at 256 clients, 503s with Retry-After
    train          Ray Train 1 and 2 workers against the bare training step (train.py)
    models         every registered model: params, GFLOPs, CPU images/s per engine (models.py)
    paddlex        the bulk job against PaddleX; paddlex-serve: the Serve app against `paddlex --serve` (paddlex.py)

predict, bulk and serve use --model-dir, or an untrained PP-LiteSeg-T with 11 classes (speed does
not depend on the weights); every title names the model measured.
"""

import argparse
import json
import os
import platform
import tempfile

from . import bulk, models, paddlex, plan, precision, predict, serve, slide, train

# name -> (what it measures, its function, the function that adds its options)
BENCHMARKS = {
    "predict": ("create_model().predict against the bare forward", predict.bench_predict, predict.predict_arguments),
    "precision": ("fp32, bf16 and int8 side by side: engine, images/s, val mIoU", precision.bench_precision,
                  precision.precision_arguments),
    "train": ("Ray Train 1 and 2 workers against the bare training step", train.bench_train, train.train_arguments),
    "bulk": ("the bulk job at N and 10 N images against the compute limit", bulk.bench_bulk, bulk.bulk_arguments),
    "plan": ("planning a bulk job of 10k, 100k, 1M inputs: seconds and driver memory", plan.bench_plan, plan.plan_arguments),
    "slide": ("one huge image: slide mode against whole-image inference, seconds and peak RSS", slide.bench_slide,
              slide.slide_arguments),
    "serve": ("closed-loop load test of the Serve app", serve.bench_serve, serve.serve_arguments),
    "overload": ("the default Serve app under 256 clients: 200s or fast 503s", serve.bench_overload, serve.overload_arguments),
    "multiplex": ("many models behind one Serve app: cold and hot requests", serve.bench_multiplex, serve.multiplex_arguments),
    "models": ("every registered model: params, GFLOPs, CPU images/s", models.bench_models, models.models_arguments),
    "paddlex": ("whole-process bulk prediction against PaddleX", paddlex.bench_paddlex, paddlex.paddlex_arguments),
    "paddlex-serve": ("Serve app (defaults) against paddlex --serve", paddlex.bench_paddlex_serve, paddlex.paddlex_serve_arguments),
}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="where to write the results (default output/benchmarks/<benchmark>.json)")
    sub = p.add_subparsers(dest="which", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, (what, _, add_arguments) in BENCHMARKS.items():
        add_arguments(sub.add_parser(name, help=what))
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raysegment-bench-") as work:
        result = BENCHMARKS[args.which][1](args, work)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    path = args.json or os.path.join("output", "benchmarks", f"{args.which}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results written to {path}")
