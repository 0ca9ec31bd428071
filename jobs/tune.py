"""Search training settings on Ray Tune: each trial a training run, compared by best val mIoU.

    # the tutorial's learning-rate step: three learning rates, same iterations
    python jobs/tune.py -c configs/PP-LiteSeg-T.yaml -o Global.dataset_dir=../shared/data/camvid \
        -o Train.num_classes=11 -o Train.epochs_iters=5000 -o Global.output=output/tune_lr \
        --grid Train.learning_rate=0.01,0.005,0.0025
    # then longer runs at the best one
    python jobs/tune.py ... -o Train.learning_rate=0.005 --grid Train.epochs_iters=10000,20000
    # a larger random search, weak trials stopped early (ASHA, on val mIoU at each Train.eval_interval)
    python jobs/tune.py ... --loguniform Train.learning_rate=0.0005,0.05 --choice Train.batch_size=4,8 \
        --num-samples 16 --scheduler asha --grace-iters 1000
    ray job submit --working-dir . -- python jobs/tune.py ...   # on a cluster

Trials: each a Ray Train run of Ray.num_workers workers (null: 1) of Ray.cpus_per_worker CPUs
(null: 1), or with -o Ray.num_workers=0 each trains in its own process; as many run at once as the
cluster holds (--max-concurrent caps it). Outputs in Global.output: trials/<id>/ (each a training
run's outputs), tune/ (Tune's state: rerun the same command after a kill to resume),
tune_result.json and tune_result.png; the table is printed.
"""

import argparse


from raysegment.cli import add_config_arguments, config_from_args, run
from raysegment.config import ConfigError


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), required=True)
    search = parser.add_argument_group("search (repeatable; values are YAML, as in -o)")
    search.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="every value (grid search)")
    search.add_argument("--choice", action="append", default=[], metavar="KEY=V1,V2", help="one value drawn per trial")
    search.add_argument("--uniform", action="append", default=[], metavar="KEY=LO,HI", help="a float drawn uniformly")
    search.add_argument("--loguniform", action="append", default=[], metavar="KEY=LO,HI", help="a float drawn log-uniformly")
    search.add_argument("--randint", action="append", default=[], metavar="KEY=LO,HI", help="an int in [LO, HI)")
    parser.add_argument("--num-samples", type=int, default=1, help="trials per grid point (random draws for the other kinds)")
    parser.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo", help="asha: stop weak trials early on val mIoU")
    parser.add_argument("--grace-iters", type=int, help="ASHA: iterations every trial runs first (default Train.eval_interval)")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as many as fit)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser, "train")

    from raysegment.train.tune import Search, run_experiment, table

    try:
        searches = [Search.parse(kind, text) for kind in ("grid", "choice", "uniform", "loguniform", "randint")
                    for text in getattr(args, kind)]
    except ConfigError as e:
        parser.error(str(e))
    if args.num_samples < 1:
        parser.error("--num-samples must be at least 1")
    result = run_experiment(cfg, searches, args.num_samples, args.scheduler, args.grace_iters, args.max_concurrent)
    print(table(result))
    if result["best"]:
        best = ", ".join(f"{k}={v}" for k, v in result["best"]["config"].items())
        print(f"best: {best} (val mIoU {result['best']['best_mIoU']:.4f}); trials in {cfg.Global.output}/trials/")
    print(f"results in {cfg.Global.output}/tune_result.json and tune_result.png")


if __name__ == "__main__":
    run(main)
