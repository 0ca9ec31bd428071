"""What every job in jobs/ shares: `-c CONFIG -o Section.key=value` and one-line errors."""

import json
import os
import sys
import time

from .config import ConfigError, load_config

# Errors a user can cause: bad config, path, image, weights, device. All are ValueError or OSError
# subclasses raised with a message that names the thing; a job prints that line, not a traceback.
USER_ERRORS = (ValueError, OSError)


def add_config_arguments(parser, required=False):
    parser.add_argument("-c", "--config", required=required, help="model YAML, e.g. configs/PP-LiteSeg-T.yaml")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value",
                        help="override a config value; repeatable")
    return parser


def config_from_args(args, parser, mode=None):
    """Load the config named by parsed args for the job `mode` (None: Global.mode); a ConfigError
    becomes argparse's usage error (exit 2)."""
    try:
        cfg = load_config(args.config, args.override)
        refuse_outputs_lost_with_the_job(cfg, mode or cfg.Global.mode)
        return cfg
    except ConfigError as e:
        parser.error(str(e))


# what each mode writes; the others keep their defaults unused
OUTPUT_KEYS = {"predict": ("Predict.output",), "train": ("Global.output", "Ray.storage_path")}


def refuse_outputs_lost_with_the_job(cfg, mode):
    """Under `ray job submit --working-dir DIR`, a job runs in Ray's temporary copy of DIR, deleted
    with the cluster's session: a relative output path there is lost, so it is refused by name."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if not (job.get("runtime_env") or {}).get("working_dir"):
        return
    for key in OUTPUT_KEYS.get(mode, ("Global.output",)):
        section, name = key.split(".")
        path = getattr(getattr(cfg, section), name)
        if path and "://" not in path and not os.path.isabs(path):
            raise ConfigError(f"{key} {path!r} is relative, and this job runs in Ray's temporary copy of --working-dir, "
                              "which is deleted with the cluster's session; give an absolute path (on a filesystem every "
                              "node shares, for a cluster) or an s3:// prefix")


def run(main):
    """Run a job's main(); a user error prints `error: <message>` and exits 1, or 2 for a bad config
    key or value (as argparse exits on a bad flag), whichever front door read it."""
    from .ray_env import filter_stderr

    filter_stderr()
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)


def print_progress(what, every_s=10.0):
    """A progress(done, total, seconds) callback for a Ray Data job. On a terminal, Ray Data's own
    progress bars show the job (rows, rate and ETA of every step) and this prints nothing. Elsewhere
    (a log file, `ray job logs`) Ray Data's bars are turned off and this prints one plain line at
    most every `every_s` seconds, and at the end: done/total, rate, ETA."""
    import logging

    import ray.data

    on_terminal = sys.stdout.isatty()
    ray.data.DataContext.get_current().enable_progress_bars = on_terminal
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # its note that bars are off
    last = [float("-inf")]

    def show(done, total, seconds):
        if on_terminal or (seconds - last[0] < every_s and done < total):
            return
        last[0] = seconds
        rate = done / max(seconds, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime((total - done) / rate)) if rate else "-"
        print(f"{done}/{total} {what} ({100 * done / max(total, 1):.1f}%), {rate:.2f}/s, ETA {eta}", flush=True)

    return show


def report_check(result, output):
    """Print a check result's summary; returns the exit code (0 pass, 1 fail)."""
    a = result["attributes"]
    print(f"dataset {result['dataset_path']}: {a['num_classes']} classes, {a['train_samples']} train and "
          f"{a['val_samples']} val samples")
    for step in ("convert", "split"):
        if step in result:
            print(f"{step}: {', '.join(f'{k}={v}' for k, v in result[step].items() if k != 'errors')}"
                  + (f"; {len(result[step]['errors'])} file(s) failed" if result[step].get("errors") else ""))
    for e in result["errors"][:20]:
        print(f"  {e['file']}{':' + str(e['line']) if e['line'] else ''}: {e['message']}")
    if len(result["errors"]) > 20:
        print(f"  ... and {len(result['errors']) - 20} more in check_dataset_result.json")
    print(f"check {'passed' if result['check_pass'] else 'FAILED'}; results in {output}/check_dataset_result.json")
    return 0 if result["check_pass"] else 1


def report_evaluation(result, output):
    m = result["metrics"]
    print(f"evaluated {result['evaluated_samples']} of {result['listed_samples']} val samples: "
          f"mIoU {m['mIoU']:.4f}, pixel accuracy {m['pixel_accuracy']:.4f}, kappa {m['kappa']:.4f}, mDice {m['mDice']:.4f}")
    for name, iou in zip(m["class_names"], m["class_IoU"]):
        print(f"  {name:20s} IoU {'-' if iou is None else f'{iou:.4f}'}")
    if result["errors"]:
        print(f"{len(result['errors'])} sample(s) skipped; see errors in {output}/evaluate_result.json")
    print(f"results in {output}/evaluate_result.json")


def report_bulk(summary):
    """Print a bulk job's summary; returns the exit code (0 all done, 3 some inputs are errors)."""
    before = f"{summary['skipped_already_done']} done before"
    if summary["skipped_errors"]:
        before += f", {summary['skipped_errors']} errors before, not retried"
    print(f"\n{summary['inputs']} inputs: {summary['done']} done, {summary['errors']} errors "
          f"({summary['processed_this_run']} processed now at {summary['images_per_s']} images/s, "
          f"{before}); results in {summary['output']}")
    if summary["errors"]:
        print(f"see {summary['output'].rstrip('/')}/_errors.jsonl; after fixing those inputs, rerun with --retry-errors "
              "(Predict.retry_errors=true) to run them again")
    return 3 if summary["errors"] else 0
