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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysegment.cli import add_config_arguments, config_from_args, run  # noqa: E402

FLAGS = {"model_dir": "Predict.model_dir", "input": "Predict.input", "output": "Predict.output",
         "batch_size": "Predict.batch_size", "device": "Global.device"}


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--model-dir", help="exported inference folder or checkpoint (Predict.model_dir)")
    parser.add_argument("--input", help="file, directory, URL or s3:// URI (Predict.input)")
    parser.add_argument("--output", help="output folder (Predict.output)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (Predict.batch_size)")
    parser.add_argument("--device", help="cpu, gpu or gpu:N (Global.device)")
    args = parser.parse_args(argv)
    args.override += [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    cfg = config_from_args(args, parser)
    if not cfg.Predict.model_dir or not cfg.Predict.input:
        parser.error("pass --model-dir and --input (or Predict.model_dir and Predict.input)")

    from raysegment.infer.model import predict_from_config

    n, seconds, name = predict_from_config(cfg)
    print(f"segmented {n} images with {name} in {seconds:.1f} s ({n / max(seconds, 1e-9):.2f} images/s); "
          f"results in {os.path.abspath(cfg.Predict.output)}")


if __name__ == "__main__":
    run(main)
