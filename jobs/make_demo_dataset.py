"""Make a tiny SegDataset from the bundled street frames (8 pairs, 11 classes), to try training.

    python jobs/make_demo_dataset.py output/demo_dataset
    python jobs/train.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=output/demo_dataset \
        -o Train.num_classes=11 -o Train.epochs_iters=10 -o Train.batch_size=2 -o Train.crop_size=[256,256]

The labels are the bundled model's own masks (see raysegment/train/demo.py).
"""

import argparse

from raysegment.cli import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="the dataset's folder")
    args = parser.parse_args(argv)

    from raysegment.train.demo import make_demo_dataset

    print(f"demo dataset written to {make_demo_dataset(args.output)}: 6 train and 2 val pairs, 11 classes")


if __name__ == "__main__":
    run(main)
