"""paddlex: whole-process seconds of PaddleX 3.7.2 (its own virtualenv; create_model().predict +
save_to_img + save_to_json) and of jobs/predict.py with its defaults on the same N images, the
bundled CamVid model unless --model-dir, with each run's peak memory summed over its process tree
(RSS and PSS) and the processes of our warm-cache run at its peak.

paddlex-serve: `paddlex --serve` against jobs/serve.py, each with its default settings, one after
the other on the same port, at 1, 8 and 32 closed-loop clients (req/s, p50, p99, errors).
"""

import json
import os
import shutil
import subprocess
import sys
import time

from ..data import BUNDLED_MODEL, SAMPLES
from .common import JOBS, add_inputs, free_port, print_table, request_bodies, run_measured, sample_paths
from .serve import load_test


def paddlex_side_by_side(args):
    """(PaddleX's Python, the absolute model folder, its model name) for the paddlex benchmarks."""
    from ..infer.model_files import read_model_folder

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
    memory = {}  # run -> peak RSS and PSS sums of its process tree, and its processes at the peak

    def timed(run, cmd, **env):
        seconds, rss, pss, processes = run_measured(cmd, {**os.environ, **env})
        memory[run] = {"peak_rss_mb": round(rss / 2**20), "peak_pss_mb": round(pss / 2**20), "processes_at_peak": processes}
        return round(seconds, 2)

    ours = [sys.executable, os.path.join(JOBS, "predict.py"), "--model-dir", model_dir, "--input", images]
    seconds = {
        "paddlex": timed("paddlex", [python, script, model_dir, images, os.path.join(work, "out_paddlex"), name]),
        "raysegment_cold_cache": timed("raysegment_cold_cache", [*ours, "--output", os.path.join(work, "out_cold")],
                                       RAYSEGMENT_CACHE_DIR=cache),
        "raysegment": timed("raysegment", [*ours, "--output", os.path.join(work, "out_warm")], RAYSEGMENT_CACHE_DIR=cache),
    }
    if args.option:  # the same job with other settings, e.g. one single-thread actor per core
        options = [arg for option in args.option for arg in ("-o", option)]
        run = f"raysegment {' '.join(args.option)}"
        seconds[run] = timed(run, [*ours, "--output", os.path.join(work, "out_opts"), *options], RAYSEGMENT_CACHE_DIR=cache)
    with open(os.path.join(work, "out_warm", "_SUCCESS.json")) as f:
        engine = json.load(f)["engine"]
    print_table(f"paddlex benchmark: whole processes, {args.n} images from {source}, {name}, {os.cpu_count()} CPUs",
                ("run", "seconds", "images/s", "PaddleX / this", "peak RSS sum MB", "peak PSS sum MB"),
                [(k, v, round(args.n / v, 2), round(seconds["paddlex"] / v, 2), memory[k]["peak_rss_mb"], memory[k]["peak_pss_mb"])
                 for k, v in seconds.items()])
    print("\nprocesses of our warm-cache run at its peak RSS sum (RSS MB / PSS MB):")
    for process, rss, pss in memory["raysegment"]["processes_at_peak"]:
        print(f"  {process:<60} {rss:>6} {pss:>6}")
    return {"n": args.n, "images": source, "model_dir": model_dir, "seconds": seconds, "engine": engine, "memory": memory,
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
    import signal
    import urllib.request

    python, model_dir, name = paddlex_side_by_side(args)
    pipeline = os.path.join(work, "pipeline.yaml")
    with open(pipeline, "w") as f:
        f.write(PADDLEX_PIPELINE.format(name=name, model_dir=model_dir))
    samples = sample_paths()
    bodies = request_bodies(samples, visualize=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers = {
        "paddlex": [os.path.join(os.path.dirname(python), "paddlex"), "--serve", "--pipeline", pipeline, "--host", "127.0.0.1",
                    "--port", str(port), "--device", "cpu"],
        "raysegment": [sys.executable, os.path.join(JOBS, "serve.py"), "--model-dir", model_dir, "--port", str(port),
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
    limit = compute_limit(model_dir, samples)
    print_table(f"paddlex-serve benchmark: POST /semantic-segmentation, base64 JPEGs 480x360, visualize false, {name}, "
                f"default settings of both, {os.cpu_count()} CPUs; closed loop, at most {args.requests} requests or {args.seconds:g} s per row",
                ("server, clients", "req/s", "p50 ms", "p99 ms", "errors", "requests"),
                [(k, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]), r["errors"], r["requests"]) for k, r in rows.items()])
    if ratio:
        print(f"raysegment / PaddleX at 32 clients: {ratio:.2f}")
    over_limit = rows["raysegment, 32 clients"]["requests_per_s"] / limit
    print(f"compute limit (bare forward of the same images, best CPU layout): {limit:.2f} images/s; "
          f"raysegment at 32 clients / compute limit: {over_limit:.2f}")
    return {"model": name, "rows": rows, "raysegment_over_paddlex_32": ratio, "compute_limit_images_per_s": limit,
            "raysegment_32_over_compute_limit": over_limit}


def compute_limit(model_dir, images, n=40):
    """images/s of the bare forward (pre-decoded, the default engine) on `images` cycled to n, the
    faster of one process with every CPU's threads and one single-thread process per CPU."""
    from .bulk import bare_forward_rate

    paths = [images[i % len(images)] for i in range(n)]
    cpus = os.cpu_count()
    return max(bare_forward_rate(model_dir, paths, 1, cpus, 1), bare_forward_rate(model_dir, paths, cpus, 1, 1))


def paddlex_arguments(p):
    add_inputs(p, n=300, model=True)
    p.add_argument("--paddlex-python", help="a Python with paddlex installed (default: $RAYSEGMENT_PADDLEX_PYTHON)")
    p.add_argument("--images", help="folder of images to cycle through (default: the bundled samples)")
    p.add_argument("-o", "--option", action="append", default=[], help="also time our job with this override (repeatable)")


def paddlex_serve_arguments(p):
    add_inputs(p, model=True)
    p.add_argument("--paddlex-python", help="a Python with paddlex and its serving plugin (default: $RAYSEGMENT_PADDLEX_PYTHON)")
    p.add_argument("--requests", type=int, default=200, help="most requests per row")
    p.add_argument("--seconds", type=float, default=30, help="most seconds per row")
    p.add_argument("-o", "--option", action="append", default=[], help="a Serve option for our server (key=value; repeatable)")
    p.add_argument("--skip-paddlex", action="store_true", help="time only our server (e.g. to compare settings)")
