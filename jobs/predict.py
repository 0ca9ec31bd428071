"""Bulk prediction on Ray Data: folders, globs, URL lists and s3:// prefixes in, masks and JSON out.

    python jobs/predict.py --model-dir output/best_model/inference --input images/ --output output/masks
    ray job submit --working-dir . -- python jobs/predict.py --model-dir /shared/models/inference \
        --input s3://bucket/images/ --output s3://bucket/masks/ -o Global.device=gpu -o Ray.predict_concurrency=8 -o Predict.batch_size=8
    python jobs/predict.py -c configs/PP-LiteSeg-T.yaml -o Predict.model_dir=... -o Predict.input=... -o Predict.output=...
    python jobs/predict.py --model-dir MODEL --input images/ --output out/ --retry-errors   # after fixing broken inputs
    python jobs/predict.py --model-dir MODEL --input images/ --output out/ -o Global.device=gpu --dry-run   # where the actors go

Actors, their CPUs and threads are sized to the cluster when unset (one single-thread actor per CPU,
one per GPU on gpu): set Ray.* keys only to override that.

--input is repeatable: a folder (recursive), a glob, an image file, a .txt of URIs (one a line),
an s3:// prefix or key, or an http(s) URL. For OUT/a/b/img.png (label map), OUT/a/b/img.json
(size, model, class names, per-class pixel counts, timings) per input, plus OUT/_manifest.jsonl,
OUT/_errors.jsonl and OUT/_SUCCESS.json. A bad input is recorded and the job goes on; a rerun
skips what is done (--retry-errors: and runs the recorded errors again). Exit code 0 when every input is
done, 3 when some are errors, 1 (one `error:` line) when nothing can start: a missing input, no
images in it, S3 unreachable.
Same as `python -m raysegment -c CONFIG -o Global.mode=predict ...`.
"""

import argparse
import json
import sys


from raysegment.cli import add_config_arguments, config_from_args, print_progress, report_bulk, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--model-dir", help="exported inference folder or checkpoint (Predict.model_dir)")
    parser.add_argument("--input", action="append", help="input (Predict.input); repeatable")
    parser.add_argument("--output", help="output folder or s3:// prefix (Predict.output)")
    parser.add_argument("--batch-size", type=int, help="images per actor call (Ray.predict_batch_size)")
    parser.add_argument("--visualize", action="store_true", help="also write <name>_vis.jpg overlays")
    parser.add_argument("--retry-errors", action="store_true",
                        help="run the inputs an earlier run recorded as errors again (Predict.retry_errors)")
    parser.add_argument("--dry-run", action="store_true", help="start the actors as this job would and print what each gets "
                        "(its GPU, device, engines and their options) and the inputs found; predict nothing")
    args = parser.parse_args(argv)
    for flag, key in (("model_dir", "Predict.model_dir"), ("output", "Predict.output"), ("batch_size", "Ray.predict_batch_size")):
        if getattr(args, flag) is not None:
            args.override.append(f"{key}={getattr(args, flag)}")
    if args.visualize:
        args.override.append("Predict.save_visualization=true")
    if args.retry_errors:
        args.override.append("Predict.retry_errors=true")
    cfg = config_from_args(args, parser, "predict")
    if args.input:
        cfg.Predict.input = args.input  # kept as given: paths are not YAML
    if not cfg.Predict.model_dir or not cfg.Predict.input:
        parser.error("pass --model-dir and --input (or Predict.model_dir and Predict.input)")

    from raysegment.batch import plan_bulk, predict_bulk

    if args.dry_run:
        print(json.dumps(plan_bulk(cfg), indent=2))
        return
    sys.exit(report_bulk(predict_bulk(cfg, progress=print_progress("images"))))


if __name__ == "__main__":
    run(main)
