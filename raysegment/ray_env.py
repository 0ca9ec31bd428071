"""Connecting to Ray, reading the cluster's nodes, and sizing actors, replicas and workers to fit them.

`size()` is the one function that turns resource settings into what Ray reserves and what Paddle
runs with. Every setting left unset (null) is chosen from the cluster Ray reports (each alive
node's CPUs and GPUs); a value the user sets always wins, and one the cluster cannot hold is
refused with the largest value that would fit. The three front doors read their own keys:

    predict_actors(cfg, cluster)    Global.device + Ray.predict_concurrency / cpus_per_actor / gpus_per_actor /
                                    threads_per_actor (or Predict.engine_config.cpu_threads)
    serve_replicas(opts, cluster)   ServeOptions device / num_replicas / cpus_per_replica / gpus_per_replica /
                                    threads_per_replica (or engine_config.cpu_threads)
    train_workers(cfg, cluster)     Global.device + Ray.num_workers / use_gpu / cpus_per_worker
    tune_trials(cfg, cluster, n)    the same keys, per trial of a Tune experiment (jobs/tune.py)

Defaults (what `jobs/benchmark.py bulk` measured fastest: on 2 cores, two single-thread
processes beat one of two threads by 1.2-1.4x):

    process count   on GPUs: one per GPU. Bulk/evaluation actors and Serve replicas on CPUs: one
                    per whole CPU. Training on CPUs: one worker per node (Paddle's own threads use
                    the node; more workers on one node only add gradient exchange).
    CPUs reserved   CPU processes: the cluster's CPUs shared out evenly, after the share kept for
                    Ray Data's read tasks (`spare`), in steps of 1/20 CPU and at least
                    MIN_AUTO_CPUS. GPU processes: one CPU each (the rest feed them).
    Paddle threads  the CPUs of the process's node divided by the processes placed on it.
    read share      TRAIN_DATA_CPUS (1 CPU) somewhere in the cluster for training's data pipeline
                    (its shuffle tasks take a whole CPU), READ_CPUS (0.5) for the reads in front of
                    GPU actors; none for CPU actors, which decode inside themselves (Ray Data fuses
                    the read step into them).

Ray decides where processes go; `Cluster.spread` places them as Ray Data and Serve do (each on the
node with the most free CPUs that holds it) to judge what fits and how many share a node.
Nothing here imports Paddle: on Ray, which GPU a process gets is Ray's choice (it sets
CUDA_VISIBLE_DEVICES), so a process always computes on "gpu" (its first visible GPU) or "cpu".
"""

import math
import os
from dataclasses import dataclass

READ_CPUS = 0.5  # what one Ray Data read/decode task reserves (training batches; reads before GPU actors)
# kept free for training's data pipeline: its random_shuffle tasks take a whole CPU each (with half
# a CPU left, -o Ray.num_workers=2 on 2 CPUs waited forever for one)
TRAIN_DATA_CPUS = 1.0
MIN_AUTO_CPUS = 0.25  # the smallest reservation chosen automatically: more processes per core only thrash
STEP = 20  # reservations are chosen in steps of 1/STEP CPU


def process_cpus():
    """The cores this process may run on: the Paddle, ONNX Runtime and OpenVINO threads of a process
    that no Placement sized (create_model, training in one process). Not OMP_NUM_THREADS: importing
    paddle sets it to 1 when unset, which would make every CPU forward single-threaded (3.2 vs 5.3
    images/s on 2 cores)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Cluster:
    """The alive nodes' (CPUs, GPUs) as Ray schedules them."""

    nodes: tuple  # ((cpus, gpus), ...)

    @classmethod
    def of(cls, ray):
        return cls(tuple((float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                         for n in ray.nodes() if n.get("Alive")))

    @property
    def cpus(self):
        return sum(c for c, _ in self.nodes)

    @property
    def gpus(self):
        return sum(g for _, g in self.nodes)

    def __str__(self):
        shape = " + ".join(f"{c:g}" for c, _ in self.nodes)
        many = f"{len(self.nodes)} nodes of {shape}" if len(self.nodes) > 1 else f"1 node of {shape}"
        return f"{many} CPUs, {self.gpus:g} GPUs"

    def spread(self, count, cpus, gpus, spare=0.0):
        """Processes per node when `count` processes reserving (cpus, gpus) each go one at a time to
        the node with the most free CPUs that holds one, and some node still has `spare` CPUs
        free; None when they do not all fit."""
        free = [list(node) for node in self.nodes]
        placed = [0] * len(free)
        for _ in range(count):
            fits = [i for i, (c, g) in enumerate(free) if c >= cpus - 1e-9 and g >= gpus - 1e-9]
            if not fits:
                return None
            i = max(fits, key=lambda i: (free[i][1] if gpus else 0, free[i][0]))
            free[i][0] -= cpus
            free[i][1] -= gpus
            placed[i] += 1
        if spare and max((c for c, _ in free), default=0) < spare - 1e-9:
            return None
        return placed

    def most(self, cpus, gpus, spare=0.0):
        """The most processes reserving (cpus, gpus) each that fit with `spare` CPUs left."""
        n = 0
        while self.spread(n + 1, cpus, gpus, spare) is not None and n < 10_000:
            n += 1
        return n


@dataclass(frozen=True)
class Placement:
    """What `count` identical Ray processes each reserve and run with."""

    count: int
    cpus: float  # Ray CPUs reserved by each (scheduling only: Paddle may run more threads)
    gpus: float  # Ray GPUs reserved by each
    threads: int  # Paddle CPU threads in each
    device: str  # "cpu" or "gpu"

    @property
    def ray_options(self):
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    @property
    def compute_device(self):
        """The device each process hands Paddle and the engines: Ray sets a GPU process's
        CUDA_VISIBLE_DEVICES to the GPU it reserved, so that GPU is always the process's gpu:0."""
        return "gpu:0" if self.device == "gpu" else "cpu"


def parse_device(device):
    """'cpu' | 'gpu' | 'gpu:N' | 'gpu:0,1,2,3' -> ('cpu' | 'gpu', number of GPUs listed or None)."""
    kind, _, ids = str(device).strip().lower().partition(":")
    if kind == "cpu" and not ids:
        return "cpu", None
    if kind == "gpu" and all(i.strip().isdigit() for i in ids.split(",") if ids):
        return "gpu", len(ids.split(",")) if ids else None
    raise ValueError(f"device {device!r} is not one of cpu, gpu, gpu:N or gpu:0,1,...")


@dataclass(frozen=True)
class Keys:
    """The setting names behind each number, for messages."""

    count: str
    cpus: str
    gpus: str
    device: str


def device_and_gpus(device, gpus, keys):
    """device None: 'gpu' when each process reserves a GPU, else 'cpu'. gpus None: 1 on 'gpu', 0 on
    'cpu'. A device that contradicts the GPUs asked for is refused by name."""
    kind = parse_device(device)[0] if device else ("gpu" if gpus else "cpu")
    if gpus is None:
        gpus = 1.0 if kind == "gpu" else 0.0
    if kind == "cpu" and gpus:
        raise ValueError(f"{keys.device} is cpu but {keys.gpus} is {gpus:g}; set {keys.device}=gpu, or {keys.gpus}=0 to run on CPUs")
    if kind == "gpu" and not gpus:
        raise ValueError(f"{keys.device} is gpu but {keys.gpus} is 0; set {keys.gpus} (e.g. 1), or {keys.device}=cpu")
    return kind, float(gpus)


def size(cluster, kind, count, cpus, gpus, threads, keys, default_count, spare=0.0, check=True):
    """The Placement for these settings on `cluster` (None: choose). `default_count` is the count to
    use when `count` is None; `spare` the CPUs that must stay free somewhere for read tasks.
    check=False (an autoscaling Serve app, whose replicas Ray adds later) skips the fit check."""
    count = default_count if count is None else count
    if not check:
        cpus = 1.0 if cpus is None else cpus
        per_process = [cpus]
    else:
        cpus_set = cpus is not None
        if cpus is None:  # GPU processes: one CPU each, the rest left to the read tasks that feed them
            cpus = 1.0 if gpus else _even_share(cluster, count, gpus, spare)
        placed = cluster.spread(count, cpus, gpus, spare)
        if placed is None:
            raise ValueError(_does_not_fit(cluster, count, cpus, gpus, spare, keys, cpus_set))
        per_process = [c / n for (c, _), n in zip(cluster.nodes, placed) if n]  # each node's CPUs over its processes
    if threads is None:
        threads = max(math.floor(min(per_process) + 1e-9), 1)  # the most crowded node decides
    return Placement(count, float(cpus), gpus, int(threads), kind)


def _even_share(cluster, count, gpus, spare):
    """The largest reservation (1/STEP steps, MIN_AUTO_CPUS at least) at which `count` processes fit."""
    biggest = max((c for c, _ in cluster.nodes), default=0)
    share = min(biggest, (cluster.cpus - spare) / count)
    steps = math.floor(share * STEP + 1e-9)
    while steps / STEP >= MIN_AUTO_CPUS:
        if cluster.spread(count, steps / STEP, gpus, spare) is not None:
            return steps / STEP
        steps -= 1
    return MIN_AUTO_CPUS  # does not fit: size() says so with the largest count that would


def _does_not_fit(cluster, count, cpus, gpus, spare, keys, cpus_set):
    each = f"{cpus:g} CPUs ({keys.cpus})" + (f" and {gpus:g} GPUs ({keys.gpus})" if gpus else "")
    left = f" with {spare:g} CPU left for reading and decoding" if spare else ""
    if cluster.spread(1, cpus, gpus, spare) is None:
        return (f"one process of {each} fits on no node of this cluster ({cluster}){left}; "
                f"lower {keys.cpus}" + (f" or {keys.gpus}" if gpus else ""))
    most = cluster.most(cpus, gpus, spare)
    return (f"{keys.count}={count} processes of {each} each do not fit this cluster ({cluster}){left}; "
            f"at most {most} fit: set {keys.count} to {most} or less" + (f", or lower {keys.cpus}" if cpus_set else ""))


def _whole_cpus(cluster):
    return max(sum(math.floor(c) for c, _ in cluster.nodes), 1)


def _gpu_count(cluster, gpus):
    return max(math.floor(cluster.gpus / gpus + 1e-9), 1)


PREDICT_KEYS = Keys("Ray.predict_concurrency", "Ray.cpus_per_actor", "Ray.gpus_per_actor", "Global.device")
SERVE_KEYS = Keys("num_replicas", "cpus_per_replica", "gpus_per_replica", "device")
TRAIN_KEYS = Keys("Ray.num_workers", "Ray.cpus_per_worker", "GPU per worker", "Global.device")


def predict_actors(cfg, cluster):
    """Predictor actors of the bulk job and of evaluation, from Global.device and the Ray section.
    CPU actors decode their own images, so they may take every CPU; reads in front of GPU actors
    run in CPU tasks and keep READ_CPUS."""
    r = cfg.Ray
    _, listed = parse_device(cfg.Global.device)
    kind, gpus = device_and_gpus(cfg.Global.device, r.gpus_per_actor, PREDICT_KEYS)
    count = listed or r.predict_concurrency  # gpu:0,1,2,3 means four GPU actors, as it means four workers in training
    default = _gpu_count(cluster, gpus) if kind == "gpu" else _whole_cpus(cluster)
    threads = r.threads_per_actor or cfg.Predict.cpu_threads  # config.py refuses the two together
    return size(cluster, kind, count, r.cpus_per_actor, gpus, threads, PREDICT_KEYS, default,
                spare=READ_CPUS if kind == "gpu" else 0.0)


def serve_replicas(opts, cluster):
    """Serve replicas from ServeOptions (device None: gpu when gpus_per_replica > 0). With
    `autoscaling`, Serve adds replicas as load needs, so nothing is checked against today's nodes."""
    kind, gpus = device_and_gpus(opts.device, opts.gpus_per_replica, SERVE_KEYS)
    default = _gpu_count(cluster, gpus) if kind == "gpu" else _whole_cpus(cluster)
    threads = opts.threads_per_replica or opts.cpu_threads  # ServeOptions.check refuses the two together
    return size(cluster, kind, opts.num_replicas, opts.cpus_per_replica, gpus, threads, SERVE_KEYS, default,
                check=not opts.autoscaling)


def train_device(cfg):
    """('cpu' | 'gpu', GPUs per worker) of training; a contradiction is refused by name."""
    if parse_device(cfg.Global.device)[0] == "cpu" and cfg.Ray.use_gpu:
        raise ValueError("Global.device is cpu but Ray.use_gpu is true; set one of them to match the other")
    return device_and_gpus(cfg.Global.device, None, TRAIN_KEYS)


def train_workers(cfg, cluster):
    """Ray Train workers, as PaddleX users expect: Global.device gpu:0,1,2,3 means four GPU
    workers; cpu means Ray.num_workers CPU workers (null: one per node). Ray.num_workers=0 trains
    in this process (no cluster needed: pass None)."""
    r = cfg.Ray
    kind, gpus = train_device(cfg)
    if r.num_workers == 0:
        return Placement(0, 0.0, gpus, 0, kind)
    count = parse_device(cfg.Global.device)[1] or r.num_workers
    if kind == "gpu":
        default = _gpu_count(cluster, gpus)
    else:  # one per node with a CPU, as many as fit beside the data pipeline's CPU
        nodes = max(sum(c >= 1 for c, _ in cluster.nodes), 1)
        default = next((n for n in range(nodes, 0, -1) if cluster.spread(n, MIN_AUTO_CPUS, 0.0, TRAIN_DATA_CPUS) is not None), 1)
    return size(cluster, kind, count, r.cpus_per_worker, gpus, None, TRAIN_KEYS, default, spare=TRAIN_DATA_CPUS)


def tune_trials(cfg, cluster, trials, max_concurrent=None):
    """(each trial's training Placement, the Ray resources of a trial's own process, trials run at
    once) for a Tune experiment of `trials` training runs.

    Ray.num_workers=0: each trial trains in its own process, reserving Ray.cpus_per_worker (null:
    1 CPU; with a GPU, 1 CPU and the GPU). Otherwise each trial is a Ray Train run of
    Ray.num_workers workers (null: 1; gpu:0,1 lists them) of Ray.cpus_per_worker each (null: 1),
    with TRAIN_DATA_CPUS for its data pipeline, driven by a trial process that reserves nothing.
    As many trials run at once as fit the cluster, at most `max_concurrent` (None: no cap)."""
    r = cfg.Ray
    kind, gpus = train_device(cfg)
    cpus = r.cpus_per_worker or 1.0
    threads = max(math.floor(cpus + 1e-9), 1)
    in_process = r.num_workers == 0
    workers = 1 if in_process else (parse_device(cfg.Global.device)[1] or r.num_workers or 1)
    spare = 0.0 if in_process else TRAIN_DATA_CPUS

    def fits(n):
        return cluster.spread(n * workers, cpus, gpus) is not None and cluster.cpus - n * workers * cpus >= n * spare - 1e-9

    if not fits(1):
        raise ValueError(f"one trial ({workers} x {cpus:g} CPUs (Ray.cpus_per_worker)" + (f" and {gpus:g} GPUs" if gpus else "")
                         + (f", plus {spare:g} CPU for its data pipeline" if spare else "")
                         + f") does not fit this cluster ({cluster}); lower Ray.cpus_per_worker or Ray.num_workers")
    limit = min(trials, max_concurrent or trials)
    concurrent = next(n for n in range(limit, 0, -1) if fits(n))
    placement = Placement(0 if in_process else workers, cpus, gpus, threads, kind)
    # a Ray Train trial's own process only waits; Tune refuses an empty request, so it asks for 1 MiB of memory
    trial_resources = {"cpu": cpus, "gpu": gpus} if in_process else {"cpu": 0, "memory": 1 << 20}
    return placement, trial_resources, concurrent


def init_ray(address=None, worker_logs=True, **local):
    """Connect to `address` (or RAY_ADDRESS, or a cluster `ray start` began on this machine), else
    start a local Ray; a no-op when already connected. A local Ray starts without the dashboard:
    its head process and ten module processes held ~1 GB (RSS; 280 MB PSS) of a 300-image bulk
    job's 3.6 GB on a laptop. To watch a job in the dashboard, `ray start --head` first; jobs then
    connect to it. worker_logs: what the workers print (training's progress lines) reaches this
    driver's output, and so `ray job logs`; the service turns it off (its replicas' access logs).
    local: ray.init's resource arguments (num_cpus, num_gpus) for a local Ray this call starts; a
    dry run on a machine without GPUs declares some (jobs/gpu_check.py --dry-run)."""
    import logging

    import ray

    if not ray.is_initialized():
        # said on every local start with token auth on (Ray 2.60's default); nothing to do about it here
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        address = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=worker_logs, **({} if address else local))
        if _filter_stderr:
            _drop_known_noise()
    return ray


# Lines Ray's C++ core writes straight to the driver's stderr that no user can act on. Ray Data hands
# every actor pool its map function as an object-store argument, and the core warns about that for
# each pool it starts (ray-project/ray#57733, open in 2.60).
KNOWN_NOISE = (b"has constructor arguments in the object store and max_restarts > 0",)
_filter_stderr = False


def filter_stderr():
    """Ask init_ray to drop KNOWN_NOISE from this process's stderr once Ray is up (the job entry points
    do; a library user's process is left alone)."""
    global _filter_stderr
    _filter_stderr = True


def _drop_known_noise():
    """Pass file descriptor 2, where the C++ core writes, through a thread that drops KNOWN_NOISE
    lines. Installed after ray.init, so no process Ray started holds the pipe; at exit fd 2 is
    restored and the thread writes out what is left before the process ends. A partial line that is
    not the start of a core log line ('[' + time) goes out at once: progress bars end in '\r'."""
    import atexit
    import threading

    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        pending = b""
        with os.fdopen(original, "wb", buffering=0, closefd=False) as out:
            while chunk := os.read(read_end, 1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not any(noise in line for noise in KNOWN_NOISE))
                if not pending.startswith(b"["):
                    kept, pending = kept + pending, b""
                if kept:
                    out.write(kept)
            out.write(pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore():
        import sys

        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the thread reads to its end and stops
        thread.join(timeout=10)

    atexit.register(restore)
