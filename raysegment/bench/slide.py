"""slide: seconds and peak RSS of one huge image (a mosaic of a bundled street scene, no resize)
through create_model(slide_window=...) against whole-image inference, each in a fresh process, on
the bundled model with Paddle oneDNN pinned for both (no per-shape engine race); the whole-image run
is skipped where its memory, extrapolated from the smaller sizes, would pass 70% of what is free.
"""

import os

from ..data import BUNDLED_MODEL, SAMPLES
from .common import Stopwatch, int_list, print_table


def _slide_worker(side, window, stride, results):
    """In a fresh process: one side x side image through the bundled model, whole or sliding."""
    import resource

    import cv2
    import numpy as np

    import raysegment

    tile = cv2.imread(os.path.join(SAMPLES, "0016E5_07959.jpg"))
    img = np.tile(tile, (side // tile.shape[0] + 1, side // tile.shape[1] + 1, 1))[:side, :side]
    slide = {"slide_window": window, "slide_stride": stride} if window else {}
    model = raysegment.create_model(model_dir=BUNDLED_MODEL,
                                    target_size=-1, engine="paddle", max_image_pixels=side * side, **slide)
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clock = Stopwatch()
    (res,) = model.predict(img, batch_size=2)
    seconds = clock()
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


def slide_arguments(p):
    p.add_argument("--sides", type=int_list, default=[2048, 4096, 10_000], help="square image sides (default 2048,4096,10000)")
    p.add_argument("--window", type=int, default=1024, help="slide window side (default 1024)")
    p.add_argument("--stride", type=int, default=768, help="slide stride (default 768)")
