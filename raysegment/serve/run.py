"""Starting the Serve app from Python or a job: read a Serve config file's options, deploy, and
keep it up until Ctrl-C or SIGTERM.
"""

import logging
import re

from ray import serve

from ..config import ServeOptions, parse_options
from ..ray_env import init_ray
from .app import APP_IMPORT_PATH, PlannedReplica, app_for, check_folders, deployment, replicas


def load_serve_config(path=None, overrides=(), **flags):
    """ServeOptions from a Serve config file (its one application's `args`, plus host, port and
    request_timeout_s from `http_options`), then `key=value` overrides, then flags not None."""
    import yaml

    args = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise ValueError(f"Serve config {path!r} cannot be read: {e.strerror or e}") from None
        apps = [a for a in raw.get("applications") or [] if a.get("import_path") == APP_IMPORT_PATH]
        if len(apps) != 1:
            raise ValueError(f"Serve config {path!r} must hold one application with import_path {APP_IMPORT_PATH}")
        args = dict(apps[0].get("args") or {})
        http = raw.get("http_options") or {}
        args.update({k: http[k] for k in ("host", "port", "request_timeout_s") if k in http})
    args.update({k: v for k, v in flags.items() if v is not None})
    return parse_options(ServeOptions, args, "args", overrides)


def serve_forever(opts, ray_address=None, what=None, name="segmentation"):
    """Deploy the app for `opts` and keep it up until Ctrl-C or SIGTERM, then delete it (a local Ray
    this process started goes with the process)."""
    import signal
    import time

    check_folders(opts)  # before Ray starts
    init_ray(ray_address, worker_logs=False)  # replicas' access logs stay in Ray's log files
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's start-up chatter; our own line says where
    stop = []
    # after ray.init, whose own SIGTERM handler would replace an earlier one; before deploying, so a
    # SIGTERM that comes as soon as the service answers is ours
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    url = start(opts, ray_address=ray_address, name=name)
    print(f"serving {what or opts.model_dir} at {url} (POST /semantic-segmentation, POST /predict, GET /ready); "
          "Ctrl-C stops", flush=True)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop.append("Ctrl-C")
    finally:
        # the app only: serve.shutdown() would also stop Serve itself, which on a shared cluster serves
        # other apps, and on a local Ray makes its controller's last call fail loudly as it exits
        serve.delete(name)
    print(f"{stop[0] if stop else 'stopped'}: service shut down", flush=True)


def start(opts, ray_address=None, name="segmentation", route_prefix="/", app=None):
    """Deploy the app for `opts` (ServeOptions; `app`: one app_for made from them) on Ray
    (connecting or starting a local one) with its HTTP proxy on opts.host:opts.port; returns the
    base URL. `serve.delete(name)` stops it. A replica that fails to start is a ValueError with the
    replica's own message."""
    init_ray(ray_address)
    serve.start(http_options={"host": opts.host, "port": opts.port, "request_timeout_s": opts.request_timeout_s})
    try:
        serve.run(app or app_for(opts), name=name, route_prefix=route_prefix)
    except RuntimeError as e:  # "Deploying application ... failed": the reason is in the app's status
        raise ValueError(_deploy_failure(name) or str(e)) from None
    return f"http://{opts.host}:{opts.port}"


def _deploy_failure(name):
    """The last line of the failing replica's traceback, as Serve's status keeps it, or None."""
    app = serve.status().applications.get(name)
    if app is None:
        return None
    messages = [d.message for d in app.deployments.values() if d.message] + [app.message]
    lines = [line.strip() for m in messages for line in m.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return f"the service did not start: {errors[-1] if errors else lines[-1] if lines else 'no reason given'}"


def plan(opts, ray_address=None, name="dry-run"):
    """A dry run of the service (raysegment/dry_run.py): its replicas deployed as start() deploys
    them (count, CPUs, GPUs, limits), each reporting its GPUs, device and engines (PlannedReplica),
    then the app deleted. No model loads and no route is exposed."""
    from ..dry_run import collect, placement_fields, reports_queue

    check_folders(opts)
    init_ray(ray_address)
    placement, queue = replicas(opts), reports_queue()
    start(opts, ray_address, name, route_prefix=None, app=deployment(opts, placement, PlannedReplica, queue))
    try:
        states = serve.status().applications[name].deployments["PlannedReplica"].replica_states
        processes = collect(queue, states.get("RUNNING", 0), "Serve replicas")
    finally:
        serve.delete(name)
    return {"placement": placement_fields(placement), "processes": processes}
