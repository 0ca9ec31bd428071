"""precision: one model (default the bundled CamVid PP-LiteSeg-T, at its own 960x720) in fp32, bf16
and int8 side by side: the engine each runs on, its forward images/s on this process's threads, its
masks' agreement with fp32's, and mIoU on a dataset's val split. int8 is calibrated on the dataset's
train images (or --calibration-images) and quantized once per machine (infer/engines/quantize.py).

    python jobs/benchmark.py precision --dataset-dir ../shared/data/camvid
"""

import os

from ..data import BUNDLED_MODEL
from .common import Stopwatch, print_table, rate


def bench_precision(args, work):
    import numpy as np

    import raysegment

    from ..data.dataset import Sample, iter_split, read_pair
    from ..data.metrics import ConfusionMatrix

    val = [s for s in iter_split(args.dataset_dir, "val") if isinstance(s, Sample)][: args.n]
    calibration = args.calibration_images or args.dataset_dir  # a SegDataset: its train split
    pairs = [read_pair(s.image, s.label) for s in val]
    rows, reference, result = [], None, {"model_dir": args.model_dir, "val_images": len(val), "precisions": {}}
    for precision in args.precisions.split(","):
        config = {"precision": precision, **({"calibration_images": calibration} if precision == "int8" else {})}
        clock = Stopwatch()
        model = raysegment.create_model(model_dir=args.model_dir, device="cpu", engine_config=config)
        predictor = model.predictor
        batches = [predictor.preprocess(img)[None] for img, _ in pairs[: args.speed_images]]
        predictor.engine(batches[0])  # the first input of a shape picks (and, for int8, quantizes) the engine
        ready_s = clock()
        speed = rate(lambda: [predictor.engine(b) for b in batches], len(batches))
        cm, masks = ConfusionMatrix(predictor.info.num_classes), []
        for (_, label), res in zip(pairs, model.predict([s.image for s in val])):  # paths: arrays are taken as BGR, as PaddleX does
            cm.update(res.label_map, label)
            masks.append(res.label_map)
        reference = reference or masks
        agreement = float(np.mean([(m == r).mean() for m, r in zip(masks, reference)]))
        miou = cm.metrics()["mIoU"]
        engine = predictor.engine.run_mode
        result["precisions"][precision] = {"engine": engine, "images_per_s": speed, "val_mIoU": miou,
                                           "pixels_as_fp32": agreement, "first_input_s": ready_s,
                                           "reason": predictor.engine.reason}
        rows.append((precision, engine, speed, f"{miou:.4f}", f"{agreement:.2%}", ready_s))
    base = result["precisions"].get("fp32", {}).get("images_per_s")
    print_table(f"precision benchmark: {os.path.basename(args.model_dir)}, {len(val)} val images of {args.dataset_dir}, "
                f"{os.cpu_count()} CPUs", ("precision", "engine", "img/s", "val mIoU", "pixels = fp32", "first input s"), rows)
    if base:
        for precision, row in result["precisions"].items():
            row["speedup_over_fp32"] = row["images_per_s"] / base
            print(f"{precision}: {row['speedup_over_fp32']:.2f}x fp32, mIoU {100 * (row['val_mIoU'] - result['precisions']['fp32']['val_mIoU']):+.2f} points")
    for precision, row in result["precisions"].items():
        print(f"{precision}: {row['reason']}")
    return result


def precision_arguments(p):
    p.add_argument("--dataset-dir", required=True, help="a SegDataset whose val split is scored (e.g. CamVid)")
    p.add_argument("--model-dir", default=BUNDLED_MODEL, help="exported inference folder (default: the bundled CamVid model)")
    p.add_argument("--precisions", default="fp32,bf16,int8", help="comma-separated (default fp32,bf16,int8)")
    p.add_argument("--calibration-images", help="int8's calibration images (default: the dataset's train images)")
    p.add_argument("--n", type=int, default=None, help="val images scored (default all)")
    p.add_argument("--speed-images", type=int, default=16, help="val images the forward is timed on (default 16)")
