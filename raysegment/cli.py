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
