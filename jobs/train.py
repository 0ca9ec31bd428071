"""Train a segmentation model on Ray Train (one CPU, one GPU or many GPUs across nodes).

    ray job submit --working-dir . -- python jobs/train.py -c configs/PP-LiteSeg-T.yaml \
        -o Global.dataset_dir=/data/camvid -o Train.num_classes=11
    python jobs/train.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=../shared/data/camvid \
        -o Train.num_classes=11 -o Global.device=gpu:0,1,2,3      # 4 GPU workers
    python jobs/train.py ... -o Ray.num_workers=0                # in this process, without Ray

Outputs in Global.output: train.log, config.yaml, train_result.json, iter_<N>/ checkpoints,
best_model/ (model.pdparams, model.pdopt, inference/). Same as `python -m raysegment -o Global.mode=train`.
"""

import argparse
import json


from raysegment.cli import add_config_arguments, config_from_args, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), required=True)
    cfg = config_from_args(parser.parse_args(argv), parser, "train")

    from raysegment.train.ray_train import fit

    result = fit(cfg)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run(main)
