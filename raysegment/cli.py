"""What every job in jobs/ shares: `-c CONFIG -o Section.key=value` and one-line errors."""

import sys

from .config import ConfigError, load_config

# Errors a user can cause: bad config, path, image, weights, device. All are ValueError or OSError
# subclasses raised with a message that names the thing; a job prints that line, not a traceback.
USER_ERRORS = (ValueError, OSError)


def add_config_arguments(parser, required=False):
    parser.add_argument("-c", "--config", required=required, help="model YAML, e.g. configs/PP-LiteSeg-T.yaml")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value",
                        help="override a config value; repeatable")
    return parser


def config_from_args(args, parser):
    """Load the config named by parsed args; a ConfigError becomes argparse's usage error (exit 2)."""
    try:
        return load_config(args.config, args.override)
    except ConfigError as e:
        parser.error(str(e))


def run(main):
    """Run a job's main(); a user error prints `error: <message>` and exits 1."""
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def print_progress(what, newline=False):
    """A progress(done, total, seconds) callback printing `done/total <what>, rate/s`: in place
    (carriage return) or a line each call."""

    def show(done, total, seconds):
        line = f"{done}/{total} {what}, {done / max(seconds, 1e-9):.2f}/s"
        print(line if newline else f"\r{line}", end="\n" if newline else "", flush=True)

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
    print(f"\n{summary['inputs']} inputs: {summary['done']} done, {summary['errors']} errors "
          f"({summary['processed_this_run']} processed now at {summary['images_per_s']} images/s, "
          f"{summary['skipped_already_done']} done before); results in {summary['output']}")
    if summary["errors"]:
        print(f"see {summary['output'].rstrip('/')}/_errors.jsonl")
    return 3 if summary["errors"] else 0
