"""PaddleX's main.py, for users who drive everything by Global.mode:

    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=check_dataset -o Global.dataset_dir=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=evaluate -o Evaluate.weight_path=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=predict -o Predict.input=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=export -o Export.weight_path=...
    python -m raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=train -o Global.dataset_dir=... -o Train.num_classes=11
"""

import argparse
import json
import sys

from .cli import add_config_arguments, config_from_args, print_progress, report_bulk, report_check, report_evaluation, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(prog="python -m raysegment", description=__doc__.split("\n")[0]), required=True)
    cfg = config_from_args(parser.parse_args(argv), parser)
    mode = cfg.Global.mode
    if mode == "check_dataset":
        from .data.check import check_from_config

        sys.exit(report_check(check_from_config(cfg), cfg.Global.output))
    elif mode == "evaluate":
        from .batch import evaluate

        report_evaluation(evaluate(cfg, progress=print_progress("val samples evaluated", every_s=0)), cfg.Global.output)
    elif mode == "predict":
        from .batch import predict_bulk

        sys.exit(report_bulk(predict_bulk(cfg, progress=print_progress("images"))))
    elif mode == "train":
        from .train.ray_train import fit

        print(json.dumps(fit(cfg), indent=2))
    elif mode == "export":
        from .infer.export import export_from_config

        print(f"exported to {export_from_config(cfg)}")


if __name__ == "__main__":
    run(main)
