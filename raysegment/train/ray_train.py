"""Ray Train (V2) adapter around `train(cfg)`: a Backend that sets up Paddle's collective
environment on every worker, the worker function, and `fit(cfg)`.

Paddle's `init_parallel_env()` reads its world from environment variables that a launcher
(`paddle.distributed.launch`) would set; the backend sets the same ones per rank before the
training function runs: PADDLE_TRAINER_ID / _TRAINERS_NUM / _TRAINER_ENDPOINTS /
_CURRENT_ENDPOINT, MASTER_ADDR / MASTER_PORT (its TCP store) and PADDLE_DISTRI_BACKEND
(gloo on CPU, nccl on GPU). Backend hooks run in Ray Train's controller, so this module must be
importable on every node (it is: it is part of the package).
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig

from ..ray_env import Cluster, init_ray, train_device, train_workers
from .data import ray_dataset, shard_batches
from .loop import STATE_FILE, train, with_class_weights


@dataclass
class PaddleConfig(BackendConfig):
    use_gpu: bool = False

    @property
    def backend_cls(self):
        return _PaddleBackend


def _set_env(env):
    os.environ.update(env)


class _PaddleBackend(Backend):
    def on_start(self, worker_group, backend_config):
        import ray
        from ray.train._internal.utils import get_address_and_port

        n = len(worker_group)
        if n < 2:
            return
        addresses = worker_group.execute(get_address_and_port)  # [(ip, free port)] per rank
        endpoints = [f"{ip}:{port}" for ip, port in addresses]
        master_ip, master_port = worker_group.execute_single(0, get_address_and_port)
        common = {
            "PADDLE_TRAINERS_NUM": str(n),
            "PADDLE_TRAINER_ENDPOINTS": ",".join(endpoints),
            "MASTER_ADDR": master_ip,
            "MASTER_PORT": str(master_port),
            "PADDLE_DISTRI_BACKEND": "nccl" if backend_config.use_gpu else "gloo",
        }
        if backend_config.use_gpu:
            common["FLAGS_selected_gpus"] = "0"  # Ray gives each worker its GPU as CUDA_VISIBLE_DEVICES
        ray.get([
            worker_group.execute_single_async(rank, _set_env, {**common, "PADDLE_TRAINER_ID": str(rank), "PADDLE_CURRENT_ENDPOINT": endpoints[rank]})
            for rank in range(n)
        ])


def _worker(config):
    """Runs on every Ray Train worker: Paddle collectives, the data shard, then train(cfg)."""
    import paddle
    import ray.train

    cfg, placement = config["cfg"], config["placement"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world > 1:
        paddle.distributed.init_parallel_env()
    checkpoint = latest_checkpoint()  # after a worker failure, or when rerun into the same output
    batches = shard_batches(ray.train.get_dataset_shard("train"), cfg.Train.batch_size)
    # as_directory: a local checkpoint is read where it lies; a remote one is downloaded to a
    # temporary folder that is removed afterwards (to_directory() would leave a copy in /tmp).
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_dir:
        train(cfg, batches, rank, world, _report, resume_dir, device=placement.compute_device, cpu_threads=placement.threads)


# Ray Train registers a reported checkpoint only when its controller next polls the workers (every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default). A group that dies in that window restarts from
# the checkpoint before (or from scratch), although the new one was already uploaded whole: report()
# returns only after the upload. So rank 0 marks each upload as whole once report() returns, and a
# restarted group takes the newest marked checkpoint in the run's storage when Ray's is older.
WHOLE_MARKER = ".uploaded"
CHECKPOINT_DIR = re.compile(r"iter_(\d+)")  # train() saves iter_<N>; Ray Train uploads under the same name


def _report(metrics, checkpoint_dir):
    """train()'s report hook: every rank calls it at every evaluation (a barrier); rank 0 passes
    its iter_<N> folder, uploaded under the same name."""
    import ray.train

    name = f"iter_{metrics['iter']}"
    ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report({k: v for k, v in metrics.items() if v is not None}, checkpoint=ckpt, checkpoint_dir_name=name)
    if ckpt:
        storage = ray.train.get_context().get_storage()
        with storage.storage_filesystem.open_output_stream(f"{storage.experiment_fs_path}/{name}/{WHOLE_MARKER}"):
            pass
        _keep_one_copy(checkpoint_dir, storage, name)


def _keep_one_copy(checkpoint_dir, storage, name):
    """Ray Train has just copied iter_<N> into its storage. When that storage is on this machine's
    disk (the default, Global.output/ray_results), iter_<N> becomes a link to Ray's copy, so each
    checkpoint is on disk once (a 10-iteration PP-LiteSeg-T run kept 343 MB as two copies). At each
    step either the folder or the link is there."""
    import pyarrow.fs

    uploaded = os.path.join(storage.experiment_fs_path, name)
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem) or not os.path.isdir(uploaded):
        return
    out = os.path.dirname(checkpoint_dir)
    inside = os.path.commonpath([os.path.abspath(uploaded), os.path.abspath(out)]) == os.path.abspath(out)
    aside = os.path.join(out, f".{name}.replaced")  # not iter_<N>: never taken for a checkpoint
    os.replace(checkpoint_dir, aside)
    os.symlink(os.path.relpath(uploaded, out) if inside else os.path.abspath(uploaded), checkpoint_dir)
    shutil.rmtree(aside)


def _iteration(checkpoint):
    match = CHECKPOINT_DIR.fullmatch(os.path.basename(checkpoint.path.rstrip("/"))) if checkpoint else None
    return int(match.group(1)) if match else -1


def latest_checkpoint():
    """The checkpoint to resume from: Ray's registered one, or a newer whole one in storage."""
    import pyarrow.fs
    import ray.train

    best = ray.train.get_checkpoint()
    storage = ray.train.get_context().get_storage()
    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        candidate = ray.train.Checkpoint(info.path, filesystem=fs)
        if _iteration(candidate) > _iteration(best) and fs.get_file_info(f"{info.path}/{WHOLE_MARKER}").type == pyarrow.fs.FileType.File:
            best = candidate
    return best


def validate(cfg):
    """Config and dataset problems, found before Ray starts; returns the train split's rows."""
    from ..data.dataset import read_class_names
    from ..models import OWN_LOSS
    from .data import split_rows

    t, g = cfg.Train, cfg.Global
    train_device(cfg)
    if not g.model:
        raise ValueError("set Global.model (the config file usually does)")
    if not g.dataset_dir:
        raise ValueError("set Global.dataset_dir to a SegDataset folder or s3:// prefix")
    if not t.num_classes:
        raise ValueError("set Train.num_classes to the number of classes in the dataset")
    names = read_class_names(g.dataset_dir)
    if names and len(names) != t.num_classes:
        raise ValueError(f"Train.num_classes is {t.num_classes} but {g.dataset_dir}/labels.txt names {len(names)} classes")
    rows = split_rows(g.dataset_dir, "train")
    check_global_batch(rows, t.batch_size, 1)
    weights = t.class_weights
    per_pixel_keys = [key for key, value in (("class_weights", weights), ("lovasz_weight", t.lovasz_weight)) if value]
    if per_pixel_keys and g.model in OWN_LOSS:
        raise ValueError(f"Train.{per_pixel_keys[0]}: {g.model} trains with its own set-prediction loss, which takes no "
                         f"{per_pixel_keys[0]}; leave it unset")
    if isinstance(weights, list) and len(weights) != t.num_classes:
        raise ValueError(f"Train.class_weights has {len(weights)} values but Train.num_classes is {t.num_classes}; give one per class")
    if t.resume_path and not os.path.isfile(os.path.join(t.resume_path, STATE_FILE)):
        raise ValueError(f"Train.resume_path {t.resume_path!r} is not a training checkpoint (no {STATE_FILE})")
    return rows


def check_global_batch(rows, batch_size, workers):
    if len(rows) < batch_size * workers:
        raise ValueError(f"the train split has {len(rows)} pairs, fewer than one global batch "
                         f"(Train.batch_size {batch_size} x {workers} workers)")


def with_absolute_paths(cfg):
    """The config with its relative local paths made absolute against this (the driver's) working
    directory: Ray Train workers run elsewhere, and `Global.dataset_dir=../data` must mean what the
    user typed. s3:// and http(s) URIs stay as they are."""
    from ..storage import is_s3, is_url

    def fix(path):
        return path if not path or is_s3(path) or is_url(path) else os.path.abspath(path)

    return dataclasses.replace(
        cfg,
        Global=dataclasses.replace(cfg.Global, dataset_dir=fix(cfg.Global.dataset_dir), output=fix(cfg.Global.output)),
        Train=dataclasses.replace(cfg.Train, pretrain_weight_path=fix(cfg.Train.pretrain_weight_path),
                                  resume_path=fix(cfg.Train.resume_path)),
    )


def fit(cfg, workers=None):
    """Train as the config says: on Ray Train workers, or in this process when Ray.num_workers is 0.
    workers: a Placement chosen by the caller (Tune sizes its trials), else sized to the cluster.
    Inside a Ray Tune trial, every evaluation's metrics (rank 0's) are reported to Tune. A rerun
    into the same Global.output resumes from its newest checkpoint."""
    cfg = with_absolute_paths(cfg)
    rows = validate(cfg)
    cfg = with_class_weights(cfg, rows)  # once here, not on every worker
    if workers is None:
        workers = train_workers(cfg, None if cfg.Ray.num_workers == 0 else Cluster.of(init_ray(cfg.Ray.address)))
    if workers.count == 0:
        resume = None if cfg.Train.resume_path else newest_local_checkpoint(cfg.Global.output)
        return train(cfg, report=_tune_report() if _in_tune() else None, resume_dir=resume,
                     device=workers.compute_device, cpu_threads=workers.threads or None)
    check_global_batch(rows, cfg.Train.batch_size, workers.count)

    import ray.train

    from ..data.augment import AugmentSpec

    out = cfg.Global.output  # absolute: with_absolute_paths
    os.makedirs(out, exist_ok=True)
    # a fixed name under the output folder: rerunning the same command resumes from the last checkpoint
    run_config = ray.train.RunConfig(name="ray_train", storage_path=cfg.Ray.storage_path or os.path.join(out, "ray_results"),
                                     failure_config=ray.train.FailureConfig(max_failures=cfg.Ray.max_failures),
                                     checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.Train.keep_checkpoints),
                                     callbacks=_tune_callbacks() if _in_tune() else [])
    _trainer(_worker, {"cfg": cfg, "placement": workers}, workers, run_config,
             datasets={"train": ray_dataset(rows, AugmentSpec.from_train(cfg.Train))}).fit()
    with open(os.path.join(out, "train_result.json")) as f:
        return json.load(f)


def _trainer(loop, loop_config, workers, run_config, datasets=None):
    """The DataParallelTrainer for `workers` (a Placement): one Ray Train worker per process, each
    reserving its CPUs and GPUs, Paddle's collective environment set by the backend."""
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    use_gpu = workers.device == "gpu"
    return DataParallelTrainer(
        loop, train_loop_config=loop_config, backend_config=PaddleConfig(use_gpu=use_gpu),
        scaling_config=ray.train.ScalingConfig(num_workers=workers.count, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": workers.cpus, **({"GPU": workers.gpus} if use_gpu else {})}),
        run_config=run_config, datasets=datasets)


def plan(cfg, workers=None):
    """A dry run of fit(cfg) (raysegment/dry_run.py): the Ray Train workers placed as fit places
    them, each reporting its rank, the GPUs it sees, the device train() would get, the collective
    backend, SyncBatchNorm and AMP; nothing is read or trained. Ray.num_workers=0 reports this process."""
    import tempfile

    import ray.train

    from ..dry_run import collect, placement_fields, reports_queue

    cfg = with_absolute_paths(cfg)
    validate(cfg)
    if workers is None:
        workers = train_workers(cfg, None if cfg.Ray.num_workers == 0 else Cluster.of(init_ray(cfg.Ray.address)))
    if workers.count == 0:
        return {"placement": placement_fields(workers), "processes": [_worker_plan(cfg, workers, 0, 1, in_ray=False)]}
    queue = reports_queue()
    with tempfile.TemporaryDirectory(prefix="raysegment-dry-run-") as storage:
        run_config = ray.train.RunConfig(name="dry_run", storage_path=storage)
        _trainer(_plan_worker, {"cfg": cfg, "placement": workers, "reports": queue}, workers, run_config).fit()
        processes = collect(queue, workers.count, "training workers")
    return {"placement": placement_fields(workers), "processes": processes}


def _plan_worker(config):
    """plan()'s Ray Train worker: its report, after the backend has set Paddle's collective
    environment, in place of init_parallel_env() and train()."""
    import ray.train

    ctx = ray.train.get_context()
    config["reports"].put(_worker_plan(config["cfg"], config["placement"], ctx.get_world_rank(), ctx.get_world_size()))


def _worker_plan(cfg, placement, rank, world, in_ray=True):
    from ..dry_run import process_view
    from .loop import uses_amp, uses_sync_batch_norm

    device = placement.compute_device
    seen = process_view() if in_ray else {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return {"rank": rank, "world": world, **seen, "device": device, "threads": placement.threads,
            "backend": os.environ.get("PADDLE_DISTRI_BACKEND") if world > 1 else None,
            "sync_batch_norm": uses_sync_batch_norm(device, world), "amp": uses_amp(cfg.Train, device)}


def _in_tune():
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return _in_tune_session()


def _tune_report():
    """train()'s report hook in an in-process Tune trial: the metrics go to Tune."""
    import ray.tune

    return lambda metrics, _: ray.tune.report({k: v for k, v in metrics.items() if v is not None})


def _tune_callbacks():
    """Ray Train callbacks in a Tune trial: Ray's TuneReportCallback hands rank 0's reports to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def newest_local_checkpoint(out):
    """The newest whole iter_<N> folder train() saved in `out` (its train_state.json, written
    last, parses), or None."""
    found = []
    for name in os.listdir(out) if os.path.isdir(out) else []:
        match = CHECKPOINT_DIR.fullmatch(name)
        if match:
            try:
                with open(os.path.join(out, name, STATE_FILE)) as f:
                    json.load(f)
                found.append((int(match.group(1)), os.path.join(out, name)))
            except (OSError, ValueError):
                pass  # cut short by a kill: not a checkpoint
    return max(found)[1] if found else None
