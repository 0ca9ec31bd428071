"""Dry runs: a front door's Ray processes placed exactly as a real run places them (the same
Placement, the same Ray Train, Ray Data, Serve or Tune options), each reporting what it sees and
what it would compute with, and nothing computed. Every report stops where Paddle or an engine
would first touch CUDA, so GPU placement can be checked on a machine that only declares GPUs
(`ray start --num-gpus=2`, `ray.init(num_gpus=2)`): Ray still sets each process's
CUDA_VISIBLE_DEVICES to the GPUs it reserved.

    ray_train.plan(cfg)          training workers: rank, world, device, collective backend, SyncBatchNorm, AMP
    batch.plan_bulk(cfg)         the bulk job's actor pool: device and the engines each actor would open
    serve.run.plan(opts)         Serve replicas: the same, per replica
    tune.plan_trials(cfg, n)     Tune trials: each trial's process, or its training workers

Each returns {"placement": what every process reserves, "processes": one report per process}.
Reports travel back through a Ray queue (an actor), so they arrive from any node.
"""

import dataclasses
import os

REPORT_TIMEOUT_S = 300  # how long a planned process may take to start and report


def process_view():
    """What this Ray process was given: its node, pid, the GPU ids Ray assigned and the
    CUDA_VISIBLE_DEVICES Ray set from them (unset: Ray left it alone, as for processes without GPUs)."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "ray_gpu_ids": [str(i) for i in ray.get_gpu_ids()], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def reports_queue():
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})


def collect(queue, n, what):
    """The `n` reports the planned processes put in `queue`, sorted by rank, then pid."""
    from ray.util.queue import Empty

    reports = []
    try:
        for _ in range(n):
            reports.append(queue.get(timeout=REPORT_TIMEOUT_S))
    except Empty:
        raise TimeoutError(f"{what}: {len(reports)} of {n} processes reported within {REPORT_TIMEOUT_S} s; "
                           "the cluster may not hold them (see `ray status`)") from None
    return sorted(reports, key=lambda r: (r.get("rank", 0), r["pid"]))


def placement_fields(placement):
    return {**dataclasses.asdict(placement), "compute_device": placement.compute_device}
