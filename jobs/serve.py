"""Serve a model over HTTP on Ray Serve (PaddleX's serving protocol) until Ctrl-C or SIGTERM.

    python jobs/serve.py --model-dir raysegment/data/models/PP-LiteSeg-T_camvid
    python jobs/serve.py --model-dir MODEL --host 0.0.0.0 --port 8000 -o max_batch_size=16 -o num_replicas=4 -o gpus_per_replica=1
    python jobs/serve.py -c configs/serve.yaml -o allow_url_inputs=true -o "url_allowlist=[images.example.com]"
    serve run configs/serve.yaml                      # the same app through Serve's own CLI
    python jobs/serve.py --model-dir MODEL -o device=gpu --dry-run   # where the replicas go, and what each would run

    curl -s -X POST localhost:8000/predict --data-binary @image.jpg -H 'Content-Type: image/jpeg'
    curl -s -X POST localhost:8000/semantic-segmentation -H 'Content-Type: application/json' \
        -d "{\"image\": \"$(base64 -w0 image.jpg)\"}"

-c reads the `args` and `http_options` of a Serve config file (configs/serve.yaml); -o sets one
of its args (see ServeOptions in raysegment/config.py). Binds 127.0.0.1 unless --host says otherwise.
Connects to --address (or RAY_ADDRESS) when set, else starts a local Ray.
"""

import argparse
import json

from raysegment.cli import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", help="a Serve config file, e.g. configs/serve.yaml")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="key=value", help="set one app arg; repeatable")
    parser.add_argument("--model-dir", help="exported inference folder or checkpoint (model_dir)")
    parser.add_argument("--host", help="address to bind (host); default 127.0.0.1")
    parser.add_argument("--port", type=int, help="port (port); default 8000")
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or a local Ray")
    parser.add_argument("--dry-run", action="store_true", help="deploy the replicas as the service would, print what each "
                        "gets (its GPU, device, engines and their options), then remove them; serve nothing")
    args = parser.parse_args(argv)

    from raysegment.serve import load_serve_config, serve_forever
    from raysegment.serve.run import plan

    opts = load_serve_config(args.config, args.override, model_dir=args.model_dir, host=args.host, port=args.port)
    if args.dry_run:
        print(json.dumps(plan(opts, ray_address=args.address), indent=2))
        return
    serve_forever(opts, ray_address=args.address)


if __name__ == "__main__":
    run(main)
