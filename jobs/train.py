"""Train a segmentation model on Ray Train (one CPU, one GPU or many GPUs across nodes).

    ray job submit --working-dir . -- python jobs/train.py -c configs/PP-LiteSeg-T.yaml \
        -o Global.dataset_dir=/data/camvid -o Train.num_classes=11
    python jobs/train.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=../shared/data/camvid \
        -o Train.num_classes=11 -o Global.device=gpu:0,1,2,3      # 4 GPU workers
    python jobs/train.py ... -o Ray.num_workers=0                # in this process, without Ray
    python jobs/train.py ... -o Global.device=gpu:0,1 --dry-run  # where the workers go and what each gets; no training

Outputs in Global.output: train.log, config.yaml, train_result.json, iter_<N>/ checkpoints,
best_model/ (model.pdparams, model.pdopt, inference/). Same as `python -m raysegment -o Global.mode=train`.
"""

import argparse
import json

from raysegment.cli import add_config_arguments, config_from_args, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), required=True)
    parser.add_argument("--dry-run", action="store_true", help="start the workers as this run would and print what each "
                        "gets (its GPU, device, collective backend, SyncBatchNorm, AMP); train nothing")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser, "train")

    from raysegment.train.ray_train import fit, plan

    result = plan(cfg) if args.dry_run else fit(cfg)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run(main)
