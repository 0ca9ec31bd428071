"""Check a segmentation dataset (PaddleX SegDataset layout), optionally converting and re-splitting it.

    python jobs/check_dataset.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=/data/camvid \
        -o Global.output=output/check
    # LabelMe or VOC in, SegDataset out (in place), then an 80/20 split (old lists kept as .bak)
    python jobs/check_dataset.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=/data/my_labelme \
        -o CheckDataset.convert.enable=true -o CheckDataset.convert.src_dataset_type=LabelMe \
        -o CheckDataset.split.enable=true -o CheckDataset.split.train_percent=80 \
        -o CheckDataset.split.val_percent=20

Writes Global.output/check_dataset_result.json (PaddleX's shape, plus `errors` with file and line),
check_dataset/histogram.png and check_dataset/demo_img/. Exits 1 when the check fails.
Same as `python -m raysegment -c CONFIG -o Global.mode=check_dataset ...`.
"""

import argparse
import sys


from raysegment.cli import add_config_arguments, config_from_args, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), required=True)
    cfg = config_from_args(parser.parse_args(argv), parser, "check_dataset")

    from raysegment.cli import report_check
    from raysegment.batch import pair_checker
    from raysegment.data.check import check_from_config

    sys.exit(report_check(check_from_config(cfg, pair_checker(cfg)), cfg.Global.output))


if __name__ == "__main__":
    run(main)
