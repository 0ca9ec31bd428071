"""Evaluate a model on a dataset's val split with Ray Data actors: mIoU, per-class IoU, accuracy,
Kappa, Dice.

    python jobs/evaluate.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=/data/camvid \
        -o Evaluate.weight_path=output/best_model/model.pdparams -o Global.output=output/eval
    # an exported inference folder works too; more actors / GPUs come from the Ray section
    python jobs/evaluate.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=s3://bucket/camvid \
        -o Evaluate.weight_path=output/best_model/inference -o Ray.predict_concurrency=4 -o Global.device=gpu

Prints a progress line every Evaluate.log_interval actor batches; writes Global.output/evaluate_result.json. On a cluster: `ray job submit -- python jobs/evaluate.py ...`.
Same as `python -m raysegment -c CONFIG -o Global.mode=evaluate ...`.
"""

import argparse


from raysegment.cli import add_config_arguments, config_from_args, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), required=True)
    cfg = config_from_args(parser.parse_args(argv), parser, "evaluate")

    from raysegment.batch import evaluate
    from raysegment.cli import print_progress, report_evaluation

    report_evaluation(evaluate(cfg, progress=print_progress("val samples evaluated", every_s=0)), cfg.Global.output)


if __name__ == "__main__":
    run(main)
