"""train: training images/s of jobs/train.py's Ray Train path with 1 worker and with 2 workers
(gloo), against the bare Paddle forward + backward + step on random arrays in one process (the
compute limit): overhead = 1 - Ray 1 worker / bare. Without --dataset-dir a dataset is made from
the bundled images with random block labels.
"""

import os

from .common import CONFIGS, make_train_dir, print_table, rate


def bare_train_step_rate(cfg, iters, threads):
    """images/s of the training loop's own step (train.loop.TrainingStep: forward, the model's
    training loss, backward, optimizer step) on random arrays, no data loading."""
    import numpy as np
    import paddle

    from ..models import build_model
    from ..train.loop import TrainingStep, make_optimizer

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(threads)
    t = cfg.Train
    net = build_model(cfg.Global.model, t.num_classes)
    net.train()
    step = TrainingStep(t, net, net, make_optimizer(t, net))
    w, h = t.crop_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((t.batch_size, 3, h, w)).astype("float32")
    y = rng.integers(0, t.num_classes, (t.batch_size, h, w)).astype("int64")

    def run():
        for _ in range(iters):
            float(step(x, y))  # a sync point, as the loop's logging is

    run()  # warm-up
    return rate(run, iters * t.batch_size, repeats=1)


def bench_train(args, work):
    from ..config import load_config
    from ..train.ray_train import fit

    dataset = args.dataset_dir or make_train_dir(os.path.join(work, "data"), 24)
    base = [f"Global.dataset_dir={dataset}", "Train.num_classes=11", "Train.batch_size=4", "Train.crop_size=[256,256]",
            f"Train.epochs_iters={args.iters}", f"Train.eval_interval={args.iters}", "Train.log_interval=10"]
    cfg = load_config(args.config, base)
    bare1, bare2 = bare_train_step_rate(cfg, args.iters, 1), bare_train_step_rate(cfg, args.iters, 2)
    ray_rates = {}
    # On 2 cores a CPU must stay free for Ray Data's decode/augment tasks: 1 worker x 1 CPU, 2 x 0.5.
    for workers, cpus in ((1, 1.0), (2, 0.5)):
        run_cfg = load_config(args.config, base + [f"Global.output={work}/run{workers}", f"Ray.num_workers={workers}",
                                                   f"Ray.cpus_per_worker={cpus}"])
        ray_rates[workers] = fit(run_cfg)["images_per_s"]
    rows = {"bare forward+backward, 1 thread (compute limit for 1 worker)": bare1,
            "bare forward+backward, 2 threads": bare2,
            "Ray Train, 1 worker x 1 thread (jobs/train.py path)": ray_rates[1],
            "Ray Train, 2 workers x 1 thread (jobs/train.py path)": ray_rates[2]}
    ratios = {"ray1_over_bare": ray_rates[1] / bare1, "scaling_2_over_1": ray_rates[2] / ray_rates[1]}
    print_table(f"train benchmark: {cfg.Global.model}, 256x256 crops, batch 4 per worker, {args.iters} iterations, {os.cpu_count()} CPUs",
                ("measurement", "images/s"), [*rows.items(), ("Ray Train 1 worker / bare (1 - overhead)", ratios["ray1_over_bare"]),
                                              ("2 workers / 1 worker (scaling)", ratios["scaling_2_over_1"])])
    return {"model": cfg.Global.model, "images_per_s": rows, **ratios, "iters": args.iters}


def train_arguments(p):
    p.add_argument("-c", "--config", default=os.path.join(CONFIGS, "PP-LiteSeg-T.yaml"), help="model config")
    p.add_argument("--iters", type=int, default=30, help="iterations per measurement")
    p.add_argument("--dataset-dir", help="a SegDataset (default: one made from the bundled images)")
