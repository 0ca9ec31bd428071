"""Connecting to Ray, reading the cluster's resources, and sizing actors, replicas and workers.

`place()` is the one function that turns resource settings into what Ray reserves and what Paddle
runs with: the CPUs and GPUs each actor, replica or worker reserves, its Paddle thread count and
the device it computes on. The three front doors read their own keys and call it:

    predict_actors(cfg)      Global.device + Ray.predict_concurrency / cpus_per_actor / gpus_per_actor / threads_per_actor
    serve_replicas(opts)     ServeOptions device / num_replicas / cpus_per_replica / gpus_per_replica / threads_per_replica
    train_workers(cfg)       Global.device + Ray.num_workers / use_gpu / cpus_per_worker

Nothing here imports Paddle: on Ray, which GPU a process gets is Ray's choice (it sets
CUDA_VISIBLE_DEVICES), so a process always computes on "gpu" (its first visible GPU) or "cpu".
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """What `count` identical Ray processes each reserve and run with."""

    count: int
    cpus: float  # Ray CPUs reserved by each (scheduling only: Paddle may run more threads)
    gpus: float  # Ray GPUs reserved by each
    threads: int  # Paddle CPU threads in each
    device: str  # "cpu" or "gpu"
    keys: tuple = ("count", "CPUs", "GPUs")  # the settings behind count, cpus and gpus, for messages

    @property
    def ray_options(self):
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}


def parse_device(device):
    """'cpu' | 'gpu' | 'gpu:N' | 'gpu:0,1,2,3' -> ('cpu' | 'gpu', number of GPUs listed or None)."""
    kind, _, ids = str(device).strip().lower().partition(":")
    if kind == "cpu" and not ids:
        return "cpu", None
    if kind == "gpu" and all(i.strip().isdigit() for i in ids.split(",") if ids):
        return "gpu", len(ids.split(",")) if ids else None
    raise ValueError(f"device {device!r} is not one of cpu, gpu, gpu:N or gpu:0,1,...")


def place(count, cpus, gpus=None, threads=None, device=None, keys=("count", "CPUs", "GPUs", "device")):
    """The one place where device and thread defaults are decided.

    device None: 'gpu' when each reserves a GPU, else 'cpu'. gpus None: 1 on 'gpu', 0 on 'cpu'.
    threads None: the reserved CPUs, at least 1. A device that contradicts the GPUs asked for is
    refused by the names in `keys` (count, cpus, gpus, device).
    """
    kind = parse_device(device)[0] if device else ("gpu" if gpus else "cpu")
    if gpus is None:
        gpus = 1.0 if kind == "gpu" else 0.0
    if kind == "cpu" and gpus:
        raise ValueError(f"{keys[3]} is cpu but {keys[2]} is {gpus:g}; set {keys[3]}=gpu, or {keys[2]}=0 to run on CPUs")
    if kind == "gpu" and not gpus:
        raise ValueError(f"{keys[3]} is gpu but {keys[2]} is 0; set {keys[2]} (e.g. 1), or {keys[3]}=cpu")
    return Placement(count, float(cpus), float(gpus), threads or max(int(cpus), 1), kind, tuple(keys[:3]))


def predict_actors(cfg):
    """Predictor actors of the bulk job and of evaluation, from Global.device and the Ray section."""
    r = cfg.Ray
    kind, listed = parse_device(cfg.Global.device)
    count = listed or r.predict_concurrency  # gpu:0,1,2,3 means four GPU actors, as it means four workers in training
    return place(count, r.cpus_per_actor, r.gpus_per_actor, r.threads_per_actor, kind,
                 ("Ray.predict_concurrency", "Ray.cpus_per_actor", "Ray.gpus_per_actor", "Global.device"))


def serve_replicas(opts):
    """Serve replicas from ServeOptions (device None: gpu when gpus_per_replica > 0)."""
    return place(opts.num_replicas, opts.cpus_per_replica, opts.gpus_per_replica, opts.threads_per_replica, opts.device,
                 ("num_replicas", "cpus_per_replica", "gpus_per_replica", "device"))


def train_workers(cfg):
    """Ray Train workers, as PaddleX users expect: Global.device gpu:0,1,2,3 means four GPU
    workers; cpu means Ray.num_workers CPU workers (0: train in this process)."""
    r = cfg.Ray
    kind, listed = parse_device(cfg.Global.device)
    if kind == "cpu" and r.use_gpu:
        raise ValueError("Global.device is cpu but Ray.use_gpu is true; set one of them to match the other")
    count = listed or (max(r.num_workers, 1) if kind == "gpu" else r.num_workers)
    return place(count, r.cpus_per_worker, None, None, kind,
                 ("Ray.num_workers / Global.device", "Ray.cpus_per_worker", "GPU per worker", "Global.device"))


def init_ray(address=None):
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray; a no-op when already connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    return ray


def check_fits(ray, placement, spare_cpus=1):
    """Refuse a placement the cluster cannot hold, or that leaves fewer than `spare_cpus` CPUs for
    Ray Data's read/decode tasks (Ray would wait for resources forever)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    n, (count_key, cpu_key, gpu_key) = placement.count, placement.keys
    if placement.gpus and n * placement.gpus > gpus:
        raise ValueError(f"{n} x {placement.gpus:g} GPUs ({count_key} x {gpu_key}) need {n * placement.gpus:g} GPUs; "
                         f"the cluster has {gpus:g}")
    if n * placement.cpus > cpus - spare_cpus:
        raise ValueError(f"{n} x {placement.cpus:g} CPUs ({count_key} x {cpu_key}) leave no CPU of the cluster's {cpus:g} "
                         "for reading and decoding; lower one of them")
