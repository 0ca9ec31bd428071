"""Experiments on Ray Tune: a search over config keys, each trial a normal training run (`fit`).

    searches = [Search.parse("grid", "Train.learning_rate=0.01,0.005,0.0025")]
    result = run_experiment(cfg, searches, scheduler="fifo")

Every trial trains into Global.output/trials/<trial id>/ (train.log, curves, checkpoints,
best_model, train_result.json) and reports each evaluation's val mIoU to Tune; ASHA stops the
weak ones early. The experiment's state is kept in Global.output/tune/: run the same command after
a kill and finished trials stay finished, unfinished ones continue from their own last checkpoint.
The result is Global.output/tune_result.json (one row per trial) and tune_result.png (best val
mIoU against each searched value).
"""

import json
import math
import os
from dataclasses import dataclass

import yaml

from ..config import ConfigError, config_from_dict
from ..ray_env import Cluster, init_ray, tune_trials
from .loop import STATE_FILE
from .ray_train import fit, newest_local_checkpoint, validate, with_absolute_paths

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")  # grid and choice take values; the rest lo,hi
METRIC = "mIoU"
EXPERIMENT = "tune"


@dataclass(frozen=True)
class Search:
    """One searched config key: `kind` and its values (grid, choice) or [lo, hi] (the ranges)."""

    key: str
    kind: str
    values: tuple

    @classmethod
    def parse(cls, kind, text):
        """'Section.key=v1,v2,...' or 'Section.key=[v1, v2]' (a YAML list; lists of lists for list
        keys) -> Search. Values are YAML, as in -o."""
        key, sep, rest = text.partition("=")
        if kind not in KINDS:
            raise ConfigError(f"search kind {kind!r} is not one of {', '.join(KINDS)}")
        if not sep or not key.strip() or not rest.strip():
            raise ConfigError(f"--{kind} {text!r} is not of the form Section.key=value,value,...")
        parsed = yaml.safe_load(rest)
        values = parsed if isinstance(parsed, list) else [yaml.safe_load(v) for v in rest.split(",")]
        if kind in ("grid", "choice") and not values:
            raise ConfigError(f"--{kind} {key}: give at least one value")
        if kind not in ("grid", "choice"):
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or values[0] >= values[1]:
                raise ConfigError(f"--{kind} {key}: expected two numbers lo,hi with lo < hi, got {rest!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"--{kind} {key}: lo must be above 0")
        return cls(key.strip(), kind, tuple(values))

    def domain(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](lo, hi)

    def check(self, base):
        """Refuse, by name, a key the config does not have or a value it would not take."""
        for value in self.values:  # every value, or both ends of a range
            config_from_dict(base, [override(self.key, value)])


def override(key, value):
    return f"{key}={json.dumps(value)}"  # JSON is YAML: numbers, strings and lists parse back as they were


def _trial(params, base, placement):
    """One Tune trial: the base config with this trial's values, trained into its own folder."""
    from ray import tune

    out = os.path.join(base["Global"]["output"], "trials", tune.get_context().get_trial_id())
    cfg = config_from_dict(base, [override(k, v) for k, v in params.items()] + [override("Global.output", out)])
    if os.path.isfile(os.path.join(out, "train_result.json")):
        _replay(out)  # finished before a kill that Tune's saved state had not caught up with
    else:
        fit(cfg, workers=placement)


def _replay(out):
    """Report a finished run's evaluations to Tune again, from its last checkpoint's curve points."""
    from ray import tune

    with open(os.path.join(newest_local_checkpoint(out), STATE_FILE)) as f:
        points = json.load(f)["curves"]["mIoU"]
    best, best_iter = -1.0, None
    for iteration, miou in points:
        if miou > best:
            best, best_iter = miou, iteration
        tune.report({"iter": iteration, "mIoU": miou, "best_mIoU": best, "best_iter": best_iter})


def run_experiment(cfg, searches, num_samples=1, scheduler="fifo", grace_iters=None, max_concurrent=None):
    """Run (or resume) the search; writes and returns Global.output/tune_result.json's content."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not searches:
        raise ConfigError("nothing to search: pass --grid, --choice, --uniform, --loguniform or --randint")
    cfg = with_absolute_paths(cfg)
    validate(cfg)
    base = cfg.to_dict()
    keys = [s.key for s in searches]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a key is searched twice: {', '.join(keys)}")
    for s in searches:
        s.check(base)
    grid = math.prod(len(s.values) for s in searches if s.kind == "grid")
    trials = grid * num_samples
    placement, resources, concurrent = tune_trials(cfg, Cluster.of(init_ray(cfg.Ray.address)), trials, max_concurrent)
    iters = cfg.Train.epochs_iters
    if scheduler == "asha":
        grace = grace_iters or cfg.Train.eval_interval
        if grace > iters:
            raise ConfigError(f"--grace-iters {grace} is above Train.epochs_iters {iters}; ASHA would never stop a trial")
        chosen = ASHAScheduler(time_attr="iter", max_t=iters, grace_period=grace, reduction_factor=2)
    elif scheduler == "fifo":
        chosen = FIFOScheduler()
    else:
        raise ConfigError(f"scheduler {scheduler!r} is not one of fifo, asha")

    out = cfg.Global.output
    os.makedirs(out, exist_ok=True)
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, placement=placement), resources)
    path = os.path.join(out, EXPERIMENT)
    if tune.Tuner.can_restore(path):  # a rerun after a kill: finished trials stay, the others resume
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={s.key: s.domain() for s in searches},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=chosen, num_samples=num_samples,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=out, verbose=1),
        )
    grid_result = tuner.fit()
    rows = sorted((_row(r, keys, iters, out) for r in grid_result), key=lambda row: [str(row["config"][k]) for k in keys])
    finished = [r for r in rows if r["best_mIoU"] is not None]
    result = {
        "metric": f"best val {METRIC}", "searched": [{"key": s.key, "kind": s.kind, "values": list(s.values)} for s in searches],
        "scheduler": scheduler, "trials_at_once": concurrent,
        "trial_resources": {"workers": placement.count, "cpus_per_worker": placement.cpus, "threads": placement.threads},
        "best": max(finished, key=lambda r: r["best_mIoU"]) if finished else None, "trials": rows,
    }
    with open(os.path.join(out, "tune_result.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(out, "tune_result.png"))
    return result


def plan_trials(cfg, trials, max_concurrent=None):
    """A dry run of run_experiment (raysegment/dry_run.py): `trials` trials started with the
    resources and concurrency it would give them, each reporting its own process (Ray.num_workers=0:
    the trial trains in it) or the plan of its Ray Train workers; nothing trains."""
    import tempfile

    from ray import tune

    from ..dry_run import collect, placement_fields, reports_queue

    cfg = with_absolute_paths(cfg)
    validate(cfg)
    placement, resources, concurrent = tune_trials(cfg, Cluster.of(init_ray(cfg.Ray.address)), trials, max_concurrent)
    queue = reports_queue()
    trainable = tune.with_resources(tune.with_parameters(_plan_trial, cfg=cfg, placement=placement, reports=queue), resources)
    with tempfile.TemporaryDirectory(prefix="raysegment-dry-run-") as storage:
        tune.Tuner(trainable, param_space={"trial": tune.grid_search(list(range(trials)))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
                   run_config=tune.RunConfig(name="dry_run", storage_path=storage, verbose=0)).fit()
        processes = collect(queue, trials, "Tune trials")
    return {"placement": placement_fields(placement), "trial_resources": resources, "trials_at_once": concurrent,
            "processes": processes}


def _plan_trial(config, cfg, placement, reports):
    from ray import tune

    from ..dry_run import process_view
    from .ray_train import plan

    report = {"trial": config["trial"], **process_view(), "device": placement.compute_device}
    if placement.count:  # each trial is a Ray Train run of its own workers
        report["workers"] = plan(cfg, placement)["processes"]
    reports.put(report)
    tune.report({"planned": 1})


def _number(value):
    """A reported value as a float, or None where it is missing (None, or NaN in Tune's table)."""
    return None if value is None or math.isnan(value) else float(value)


def _row(result, keys, iters, out):
    """One trial's line: its values, best val mIoU (carried across a resume in each report's
    best_mIoU), the iterations it reached, its time and how it ended."""
    df = result.metrics_dataframe
    reports = df.to_dict("records") if df is not None else []
    last = reports[-1] if reports else {}
    best = _number(last.get("best_mIoU"))
    best = None if best is None or best < 0 else round(best, 4)  # -1: no evaluation had a val split
    reached = int(max(_number(r.get("iter")) or 0 for r in reports)) if reports else 0
    return {
        "config": {k: result.config.get(k) for k in keys},
        "best_mIoU": best,
        "best_iter": int(_number(last.get("best_iter"))) if best is not None else None,
        "mIoU_by_iter": {int(r["iter"]): round(_number(r["mIoU"]), 4) for r in reports if _number(r.get("mIoU")) is not None},
        "iters": reached,
        "time_s": round(max(_number(r.get("time_total_s")) or 0 for r in reports), 1) if reports else None,
        "status": "error" if result.error else ("done" if reached >= iters else "stopped early"),
        "error": str(result.error).splitlines()[0] if result.error else None,
        "output": os.path.join(out, "trials", last["trial_id"]) if last.get("trial_id") else None,
    }


def plot(result, path):
    """Best val mIoU against each searched value, one panel per key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [s["key"] for s in result["searched"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, search in zip(axes[0], result["searched"]):
        key = search["key"]
        points = sorted((r["config"][key], r["best_mIoU"]) for r in result["trials"]
                        if r["best_mIoU"] is not None and isinstance(r["config"][key], (int, float)))
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-" if search["kind"] == "grid" and len(keys) == 1 else "o")
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
            for x, y in points:
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(result["metric"])
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{len(result['trials'])} trials ({result['scheduler']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(result):
    """The trials as a text table, best first."""
    keys = [s["key"] for s in result["searched"]]
    head = [*keys, "best val mIoU", "at iter", "iters", "time (s)", "status"]
    rows = [[*(str(r["config"][k]) for k in keys), "-" if r["best_mIoU"] is None else f"{r['best_mIoU']:.4f}",
             str(r["best_iter"] or "-"), str(r["iters"]), str(r["time_s"] or "-"), r["status"]]
            for r in sorted(result["trials"], key=lambda r: -(r["best_mIoU"] if r["best_mIoU"] is not None else -1))]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
