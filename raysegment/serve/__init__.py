"""Ray Serve app: HTTP <-> the shared Predictor, in PaddleX's serving protocol.

    serve run configs/serve.yaml                                   # import_path: raysegment.serve:build_app
    python jobs/serve.py --model-dir MODEL [--host 127.0.0.1] [--port 8000]

    protocol.py   requests and answers (PaddleX's envelope), apart from Serve
    app.py        the deployment: one Predictor per replica, dynamic batching, model multiplexing
    run.py        starting it: Serve config files, deploy, serve until Ctrl-C or SIGTERM
"""

from .app import build_app, check_folders
from .run import load_serve_config, serve_forever, start

__all__ = ["build_app", "check_folders", "load_serve_config", "serve_forever", "start"]
