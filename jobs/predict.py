"""Segment images with an exported model or checkpoint and save PaddleX-style results.

    python jobs/predict.py --model-dir output/best_model/inference --input images/ --output output/predict
    python jobs/predict.py -c configs/PP-LiteSeg-T.yaml -o Predict.model_dir=... -o Predict.input=... \
        -o Predict.output=...

--input takes a file, a directory (recursively), an http(s) URL or an s3:// URI or prefix.
For every image it writes <stem>_res.png (colour mask) and <stem>_res.json (compact JSON whose
`pred` is the label map as a base64 lossless PNG). This version runs in one process; the Ray Data
bulk job (raysegment.batch) replaces it for large inputs.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysegment.cli import add_config_arguments, config_from_args, run  # noqa: E402


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--model-dir", help="exported inference folder or checkpoint (Predict.model_dir)")
    parser.add_argument("--input", help="file, directory, URL or s3:// URI (Predict.input)")
    parser.add_argument("--output", help="output folder (Predict.output)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (Predict.batch_size)")
    parser.add_argument("--device", help="cpu, gpu or gpu:N (Global.device)")
    args = parser.parse_args(argv)
    for flag, key in (("model_dir", "Predict.model_dir"), ("input", "Predict.input"), ("output", "Predict.output"),
                      ("batch_size", "Predict.batch_size"), ("device", "Global.device")):
        if getattr(args, flag) is not None:
            args.override.append(f"{key}={getattr(args, flag)}")
    cfg = config_from_args(args, parser)
    p = cfg.Predict
    if not p.model_dir or not p.input:
        parser.error("pass --model-dir and --input (or Predict.model_dir and Predict.input)")

    import raysegment

    model = raysegment.create_model(cfg.Global.model or None, model_dir=p.model_dir, device=cfg.Global.device,
                                    target_size=p.target_size, run_mode=p.kernel_option.run_mode,
                                    max_image_pixels=p.max_image_pixels)
    start, n = time.perf_counter(), 0
    for res in model.predict(p.input, batch_size=p.batch_size):
        res.save_to_img(p.output)
        res.save_to_json(p.output)
        n += 1
    elapsed = time.perf_counter() - start
    print(f"segmented {n} images with {model.model_name} in {elapsed:.1f} s ({n / elapsed:.2f} images/s); "
          f"results in {os.path.abspath(p.output)}")


if __name__ == "__main__":
    run(main)
