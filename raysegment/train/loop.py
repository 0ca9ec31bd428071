"""`train(cfg)`: the training loop. It runs in one process as it is, and on every Ray Train
worker through raysegment.train.ray_train, which only supplies the data shard, the rank and a
`report` hook.

Outputs in Global.output (rank 0): train.log, config.yaml, iter_<N>/ checkpoints (last
Train.keep_checkpoints), best_model/ (model.pdparams, model.pdopt, inference.yml, inference/),
train_result.json, and the curves (curves.py): TensorBoard event files and training_curves.png.
On a terminal, rank 0 also shows a progress bar (iterations, rate, ETA, loss); elsewhere (a Ray
Train worker, a log file) the log line every Train.log_interval iterations says the same.
"""

import dataclasses
import json
import logging
import os
import shutil
import sys
import time

import paddle

from ..config import MEDIAN_FREQUENCY
from ..data.augment import AugmentSpec
from ..data.dataset import read_class_names
from ..data.labels import default_class_names
from ..data.metrics import ConfusionMatrix
from ..downloads import fetch_file
from ..infer import DEFAULT_TRANSFORMS, Predictor, export_model, folder_weights, save_checkpoint
from ..models import WeightsError, build_model, load_weights
from ..models.weights import read_state_dict
from ..ray_env import process_cpus
from ..storage import is_url
from .curves import Curves
from .data import local_batches, median_frequency_weights, split_rows
from .losses import training_loss

log = logging.getLogger("raysegment.train")
STATE_FILE = "train_state.json"


def lr_at(step, base_lr, total, warmup=0, power=0.9):
    """Linear warmup from 0 over `warmup` steps, then polynomial decay to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base_lr * (1 - min(progress, 1.0)) ** power


def make_optimizer(t, net):
    """Train.optimizer: momentum SGD (CNN recipes) or AdamW (transformer recipes); the learning rate
    is set every step by lr_at."""
    clip = paddle.nn.ClipGradByNorm(t.grad_clip_norm) if t.grad_clip_norm else None
    if t.optimizer == "adamw":
        return paddle.optimizer.AdamW(learning_rate=t.learning_rate, parameters=net.parameters(), weight_decay=t.weight_decay,
                                      grad_clip=clip)
    return paddle.optimizer.Momentum(learning_rate=t.learning_rate, momentum=t.momentum, parameters=net.parameters(),
                                     weight_decay=t.weight_decay, grad_clip=clip)


def set_train_mode(net, freeze_bn):
    net.train()
    if freeze_bn:
        for layer in net.sublayers():
            if isinstance(layer, (paddle.nn.BatchNorm2D, paddle.nn.SyncBatchNorm)):
                layer.eval()


def load_pretrained(net, path, head_prefixes):
    """Full-model weights (a classifier head for another class count is replaced, and said so) or
    backbone-only weights (keys without 'backbone.'). Strict otherwise. An http(s) URL is
    downloaded once into PaddleX's cache, as PaddleX does with its configs' weight URLs. A folder is
    a checkpoint or an exported inference folder such as the bundled model (_pretrained_state)."""
    if is_url(path):
        path = fetch_file(path)
    state, kept = _pretrained_state(net, path)
    where = repr(path)
    try:
        skipped = load_weights(net, state, where=where)
    except WeightsError:
        try:
            skipped = load_weights(net, state, skip_prefixes=head_prefixes, where=where)
        except WeightsError:
            load_weights(net.backbone, state, where=f"{where} (as backbone weights)")
            return "backbone"
    said = "full model"
    if skipped:
        said += f", classifier replaced: {', '.join(skipped)}"
    if kept:
        layers = sorted({".".join(key.split(".")[:2]) for key in kept})
        said += f", {len(kept)} train-only weights not in the exported folder left as initialised: {', '.join(layers)}"
    return said


def _pretrained_state(net, path):
    """(state_dict, the keys left as `net` initialised them) of a .pdparams path or a folder, read
    once for load_pretrained's tries: a checkpoint folder is its model.pdparams; an export traces
    only what prediction runs, so the layers only training uses (PP-LiteSeg's auxiliary heads) keep
    `net`'s values."""
    if not os.path.isdir(path):
        return read_state_dict(path), []
    state, kept = folder_weights(path)
    own = net.state_dict()
    state.update({key: own[key].numpy() for key in kept if key in own})
    return state, kept


def eval_transforms(t):
    """The inference transforms training evaluates and saves with: Train.eval_target_size as a Resize
    (aspect ratio kept, no rounding), then the default Normalize; None (the defaults) without one."""
    if t.eval_target_size is None:
        return None
    resize = {"type": "Resize", "target_size": list(t.eval_target_size), "keep_ratio": True, "size_divisor": None, "interp": "LINEAR"}
    return [resize, *DEFAULT_TRANSFORMS]


def evaluate_layer(net, rows, class_names, device="cpu", cpu_threads=None, batch_size=4, transforms=None):
    """Confusion-matrix metrics of an in-memory model on decoded val pairs (one process); the
    masks come back at each label's size whatever `transforms` resizes the input to."""
    from ..data.dataset import read_pair

    predictor = Predictor.from_layer(net, "model", class_names, transforms, device=device, cpu_threads=cpu_threads)
    cm = ConfusionMatrix(len(class_names))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images, labels = zip(*(read_pair(r["image"], r["label"]) for r in chunk))
        for mask, label in zip(predictor.predict(list(images)), labels):
            cm.update(mask, label)
    return cm.metrics(class_names)


def optimizer_state_by_structure(opt_state, net, to_structure=True):
    """Rename optimizer state keys between Paddle's generated parameter names
    ('conv2d_51.w_0_velocity_0') and state_dict names ('backbone.features.0.conv.weight_velocity_0').
    Generated names depend on how many layers the process built before, so a checkpoint keyed by
    them cannot be loaded into a model built elsewhere."""
    pairs = [(p.name, k) for k, p in net.named_parameters()]
    if not to_structure:
        pairs = [(k, n) for n, k in pairs]
    pairs.sort(key=lambda pair: -len(pair[0]))  # longest first: 'w_10' must not match as 'w_1'
    renamed = {}
    for key, value in opt_state.items():
        new = key
        for old_prefix, new_prefix in pairs:
            if key.startswith(old_prefix + "_"):
                new = new_prefix + key[len(old_prefix):]
                break
        renamed[new] = value
    return renamed


def save_state(folder, net, opt, model_name, class_names, state, transforms=None):
    save_checkpoint(net, folder, model_name, class_names, transforms)
    paddle.save(optimizer_state_by_structure(opt.state_dict(), net), os.path.join(folder, "model.pdopt"))
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(state, f, indent=2)


def load_state(folder, net, opt):
    """Restore model, optimizer (momentum buffers) and loop state from a checkpoint folder."""
    load_weights(net, os.path.join(folder, "model.pdparams"))
    opt.set_state_dict(optimizer_state_by_structure(paddle.load(os.path.join(folder, "model.pdopt")), net, to_structure=False))
    with open(os.path.join(folder, STATE_FILE)) as f:
        return json.load(f)


def class_names_for(cfg):
    names = read_class_names(cfg.Global.dataset_dir)
    return names if names else default_class_names(cfg.Train.num_classes)


def with_class_weights(cfg, rows=None):
    """The config with Train.class_weights "median_frequency" replaced by the weights computed from
    the train split's labels (`rows`, else read from Global.dataset_dir); otherwise unchanged."""
    if cfg.Train.class_weights != MEDIAN_FREQUENCY:
        return cfg
    rows = split_rows(cfg.Global.dataset_dir, "train") if rows is None else rows
    weights = median_frequency_weights(rows, cfg.Train.num_classes)
    return dataclasses.replace(cfg, Train=dataclasses.replace(cfg.Train, class_weights=weights))


def train(cfg, batches=None, rank=0, world_size=1, report=None, resume_dir=None, device="cpu", cpu_threads=None):
    """Train Global.model on Global.dataset_dir for Train.epochs_iters iterations.

    batches: an iterator of (x (N, 3, h, w) float32, y (N, h, w) int64); default: this process
    reads and augments Global.dataset_dir itself. report(metrics, checkpoint_dir or None) is called
    by every rank at every evaluation (Ray Train's report is a barrier). resume_dir: a checkpoint
    folder to continue from (Train.resume_path is used when it is None). cpu_threads: Paddle's
    CPU threads (default: every core this process may use; paddle's import pins it to 1).
    """
    cfg = with_class_weights(cfg)  # already done by fit() for Ray Train workers
    t = cfg.Train
    out = cfg.Global.output
    is_main = rank == 0
    if is_main:
        _setup_logging(out)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())
    paddle.set_device(device)
    if device == "cpu":
        paddle.base.core.set_num_threads(cpu_threads or process_cpus())
    paddle.seed(t.seed + rank)
    class_names = class_names_for(cfg)
    if t.class_weights is not None and is_main:
        log.info("class weights: %s", ", ".join(f"{n} {w:g}" for n, w in zip(class_names, t.class_weights)))
    net, model, opt, state = _build(cfg, world_size, resume_dir or t.resume_path, device)
    step = TrainingStep(t, net, model, opt, amp=uses_amp(t, device))
    if batches is None:
        batches = local_batches(split_rows(cfg.Global.dataset_dir, "train"), AugmentSpec.from_train(t), t.batch_size, seed=t.seed)
    val_rows = split_rows(cfg.Global.dataset_dir, "val") if is_main else []

    curves = Curves(out, state.setdefault("curves", {}), state["iter"]) if is_main else None
    bar = _progress_bar(t.epochs_iters, state["iter"]) if is_main else None
    set_train_mode(net, t.freeze_bn)
    # images/s counts training steps only: the clock starts after the first step (data pipeline
    # and kernel warm-up) and stops while evaluating and saving
    start_iter, tic, seen, paused = state["iter"], None, 0, 0.0
    for it in range(start_iter, t.epochs_iters):
        lr = lr_at(it, t.learning_rate, t.epochs_iters, t.warmup_steps, t.lr_power)
        opt.set_lr(lr)
        x, y = next(batches)
        loss = step(x, y)
        done = it + 1
        if tic is None:
            tic = time.perf_counter()
        else:
            seen += len(x)
        if bar:
            bar.update(1)
        if is_main and (done % t.log_interval == 0 or done == t.epochs_iters):
            elapsed = max(time.perf_counter() - tic - paused, 1e-9)
            ips = seen * world_size / elapsed
            eta = (t.epochs_iters - done) * elapsed / max(done - start_iter - 1, 1)
            loss_value = loss.item()  # a host-device sync point; only paid every log_interval
            log.info("iter %d/%d loss %.4f lr %.6f images/s %.2f eta %s", done, t.epochs_iters, loss_value, lr, ips,
                     time.strftime("%H:%M:%S", time.gmtime(eta)))
            curves.add(done, loss=loss_value, lr=lr, images_per_s=ips if seen else None)
            if bar:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        if done % t.eval_interval == 0 or done == t.epochs_iters:
            pause_start = time.perf_counter()
            metrics, ckpt = {"iter": done}, None
            if is_main:
                metrics.update(_evaluate_and_save(cfg, net, opt, class_names, val_rows, state, done, device, cpu_threads, curves))
                ckpt = os.path.join(out, f"iter_{done}")
                set_train_mode(net, t.freeze_bn)
            if report:
                report(metrics, ckpt)
            paused += time.perf_counter() - pause_start
    in_sync = workers_in_sync(net, world_size)
    if not is_main:
        return None
    if bar:
        bar.close()
    curves.close()
    elapsed = max(time.perf_counter() - (tic or time.perf_counter()) - paused, 1e-9)
    return _write_result(cfg, state, elapsed, seen * world_size / elapsed, world_size, in_sync)


class TrainingStep:
    """One optimisation step of the Train section's recipe: the forward in one precision context,
    the model's training loss (its coefficients, class weights, Lovász share), backward and the
    optimizer step. train() runs it every iteration; `jobs/benchmark.py train` times it alone."""

    def __init__(self, t, net, model, opt, amp=False):
        self.t, self.net, self.model, self.opt, self.amp = t, net, model, opt, amp
        self.scaler = paddle.amp.GradScaler(enable=amp, init_loss_scaling=1024)
        # a tensor made once, used every step
        self.class_weights = None if t.class_weights is None else paddle.to_tensor(t.class_weights, dtype="float32")

    def __call__(self, x, y):
        """x (N, 3, h, w) float32, y (N, h, w) int64 -> the loss tensor (reading it is a host-device sync)."""
        t = self.t
        with paddle.amp.auto_cast(enable=self.amp, level="O1"):
            outputs = self.model(paddle.to_tensor(x))
            loss = training_loss(self.net, outputs, paddle.to_tensor(y), t.loss, t.ohem_min_kept, t.loss_coefs, self.class_weights,
                                 t.lovasz_weight)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.clear_grad()
        return loss


def uses_amp(t, device):
    """Mixed precision (Train.amp) runs on GPUs only: CPU kernels have no fp16 speed-up to give."""
    return bool(t.amp) and device.startswith("gpu")


def uses_sync_batch_norm(device, world_size):
    """BatchNorm statistics over the global batch (SyncBatchNorm, all-reduced in every layer) on
    multi-GPU runs; Paddle's SyncBatchNorm has GPU kernels only, so CPU workers keep their own."""
    return device.startswith("gpu") and world_size > 1


def _build(cfg, world_size, resume_dir, device):
    """(net, the model to call: net or its DataParallel wrapper, optimizer, loop state), with
    pretrained weights or a checkpoint loaded."""
    t = cfg.Train
    net = build_model(cfg.Global.model, t.num_classes)
    if t.pretrain_weight_path and not resume_dir:
        loaded = load_pretrained(net, t.pretrain_weight_path, getattr(net, "classifier_prefixes", ()))
        log.info("pretrained weights %s loaded: %s", t.pretrain_weight_path, loaded)
    model = net
    if world_size > 1:
        if uses_sync_batch_norm(device, world_size):
            net = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = paddle.DataParallel(net)
    opt = make_optimizer(t, net)
    state = {"iter": 0, "best_mIoU": -1.0, "best_iter": None}
    if resume_dir:
        state = load_state(resume_dir, net, opt)
        log.info("resumed from %s at iteration %d", resume_dir, state["iter"])
    return net, model, opt, state


def _write_result(cfg, state, train_seconds, images_per_s, world_size, in_sync):
    out = cfg.Global.output
    result = {
        "done_flag": True,
        "iters": cfg.Train.epochs_iters,
        "best_iter": state["best_iter"],
        "best_metrics": state.get("best_metrics"),
        "train_time_s": round(train_seconds, 1),  # training steps only
        "images_per_s": round(images_per_s, 3),
        "workers": world_size,
        "workers_in_sync": in_sync,
        "paths": {"best_model": os.path.join(out, "best_model"), "inference": os.path.join(out, "best_model", "inference"),
                  "train_log": os.path.join(out, "train.log"), "config": os.path.join(out, "config.yaml")},
    }
    with open(os.path.join(out, "train_result.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def workers_in_sync(net, world_size):
    """True when every rank holds the same trainable parameters (compared by checksum): a cheap
    end-of-run check that data parallelism kept the replicas identical."""
    if world_size < 2:
        return True
    import paddle.distributed as dist

    checksum = paddle.to_tensor([float(sum(float(p.astype("float64").abs().sum()) for p in net.parameters() if p.trainable))], dtype="float64")
    lo, hi = checksum.clone(), checksum.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return hi.item() == lo.item()


def _evaluate_and_save(cfg, net, opt, class_names, val_rows, state, done, device, cpu_threads, curves):
    out, t = cfg.Global.output, cfg.Train
    net.eval()
    transforms = eval_transforms(t)
    metrics = evaluate_layer(net, val_rows, class_names, device, cpu_threads, transforms=transforms) if val_rows else {"mIoU": None}
    log.info("iter %d val mIoU %s pixel accuracy %s", done, _fmt(metrics["mIoU"]), _fmt(metrics.get("pixel_accuracy")))
    if "class_IoU" in metrics:  # PaddleSeg's "[EVAL] Class IoU", with the names
        log.info("iter %d class IoU %s", done, ", ".join(f"{n} {_fmt(v)}" for n, v in zip(class_names, metrics["class_IoU"])))
    curves.add(done, mIoU=metrics["mIoU"], pixel_accuracy=metrics.get("pixel_accuracy"))
    curves.plot()
    state["iter"] = done
    miou = metrics["mIoU"] if metrics["mIoU"] is not None else -1.0
    is_best = miou > state["best_mIoU"]
    if is_best:
        state.update(best_mIoU=miou, best_iter=done, best_metrics={k: v for k, v in metrics.items() if not k.startswith("class_")})
    folder = os.path.join(out, f"iter_{done}")
    save_state(folder, net, opt, cfg.Global.model, class_names, state, transforms)
    if is_best:
        best = os.path.join(out, "best_model")
        shutil.rmtree(best, ignore_errors=True)
        shutil.copytree(folder, best)
        export_model(net, os.path.join(best, "inference"), cfg.Global.model, class_names, transforms)
        log.info("new best model (mIoU %s) at iteration %d", _fmt(miou), done)
    old = sorted((int(d.split("_")[1]) for d in os.listdir(out) if d.startswith("iter_")), reverse=True)[t.keep_checkpoints:]
    for n in old:
        folder = os.path.join(out, f"iter_{n}")
        if os.path.islink(folder):  # Ray Train's copy is the checkpoint (ray_train._keep_one_copy); Ray prunes it
            os.unlink(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return {"mIoU": metrics["mIoU"], "pixel_accuracy": metrics.get("pixel_accuracy"), "best_mIoU": state["best_mIoU"],
            "best_iter": state["best_iter"]}


def _fmt(v):
    return "-" if v is None else f"{v:.4f}"


def _progress_bar(total, start):
    """A progress bar (iterations, rate, ETA) when stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="iter", dynamic_ncols=True, desc="train")


class _Console(logging.Handler):
    """Console lines written around a progress bar rather than through it."""

    def emit(self, record):
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(out):
    """This run's log goes to out/train.log and the console (replacing an earlier run's handlers)."""
    os.makedirs(out, exist_ok=True)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s")
    for handler in (logging.FileHandler(os.path.join(out, "train.log")), _Console()):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


__all__ = ["train", "lr_at", "evaluate_layer"]
