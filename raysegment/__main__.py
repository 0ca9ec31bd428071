"""PaddleX's main.py, for users who drive everything by Global.mode:

    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=check_dataset -o Global.dataset_dir=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=evaluate -o Evaluate.weight_path=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=predict -o Predict.input=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=export -o Export.weight_path=...
"""

import argparse
import sys

from .cli import add_config_arguments, config_from_args, report_check, report_evaluation, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(prog="python -m raysegment", description=__doc__.split("\n")[0]), required=True)
    cfg = config_from_args(parser.parse_args(argv), parser)
    mode = cfg.Global.mode
    if mode == "check_dataset":
        from .data.check import check_from_config

        sys.exit(report_check(check_from_config(cfg), cfg.Global.output))
    elif mode == "evaluate":
        from .batch import evaluate_from_config

        report_evaluation(evaluate_from_config(cfg), cfg.Global.output)
    elif mode == "predict":
        from .infer.model import predict_from_config

        n, seconds, name = predict_from_config(cfg)
        print(f"segmented {n} images with {name} in {seconds:.1f} s; results in {cfg.Predict.output}")
    elif mode == "export":
        from .infer.export import export_from_config

        print(f"exported to {export_from_config(cfg)}")
    else:
        parser.error(f"Global.mode={mode} is not available yet; use check_dataset, evaluate, predict or export")


if __name__ == "__main__":
    run(main)
