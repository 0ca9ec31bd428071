"""The `raysegment` command: PaddleX's CLI (pipelines, serving) and its main.py (configs by Global.mode).

    raysegment --pipeline semantic_segmentation --input IMG|DIR|URL|PDF [--device cpu] [--save_path DIR]
    raysegment --pipeline my_pipeline.yaml --input ... [--target_size 512] [--engine onnxruntime]
    raysegment --get_pipeline_config semantic_segmentation [--save_path DIR|FILE.yaml]
    raysegment --serve --pipeline my_pipeline.yaml [--host 127.0.0.1] [--port 8000]   # Ray Serve, PaddleX's protocol

    raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=check_dataset -o Global.dataset_dir=...
    raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=train -o Global.dataset_dir=... -o Train.num_classes=11
    raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=evaluate -o Evaluate.weight_path=...
    raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=predict -o Predict.input=...
    raysegment -c configs/PP-LiteSeg-T.yaml -o Global.mode=export -o Export.weight_path=...

`python -m raysegment` is the same command.
"""

import argparse
import ast
import json
import os
import sys

from .cli import add_config_arguments, config_from_args, print_progress, report_bulk, report_check, report_evaluation, run


def _literal(text):
    """PaddleX's literal flags (--target_size 512, --target_size "(512, 256)", --hpi_config "{...}")."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python literal (e.g. 512, -1, (512, 256) or {{'backend': 'openvino'}})") from None


def parser():
    p = argparse.ArgumentParser(prog="raysegment", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    add_config_arguments(p)
    g = p.add_argument_group("pipeline (PaddleX's flags)")
    g.add_argument("--pipeline", help="a pipeline name (semantic_segmentation) or a pipeline YAML file")
    g.add_argument("--input", help="an image, PDF, folder, URL, s3:// URI or list file")
    g.add_argument("--save_path", help="where results (or, with --get_pipeline_config, the YAML) go")
    g.add_argument("--device", help="cpu, gpu or gpu:N")
    g.add_argument("--engine", help="paddle, paddle_static, onnxruntime, openvino or hpi (default: the fastest that agrees with Paddle)")
    g.add_argument("--use_hpip", action="store_true", help="PaddleX's high-performance inference switch")
    g.add_argument("--hpi_config", type=_literal, help="PaddleX's hpi_config, a dict literal")
    g.add_argument("--target_size", type=_literal, help="-1, N or (width, height)")
    g.add_argument("--get_pipeline_config", metavar="NAME", help="write the named pipeline's YAML to --save_path (default .)")
    s = p.add_argument_group("serving")
    s.add_argument("--serve", action="store_true", help="serve --pipeline on Ray Serve until Ctrl-C or SIGTERM")
    s.add_argument("--host", help="address to bind (default 127.0.0.1, as jobs/serve.py; PaddleX binds 0.0.0.0)")
    s.add_argument("--port", type=int, help="port (default 8000, as jobs/serve.py; PaddleX's is 8080)")
    s.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or a local Ray")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.config and (args.pipeline or args.get_pipeline_config or args.serve):
        p.error("-c (a model config run by Global.mode) and the pipeline flags are two commands; pass one")
    if args.get_pipeline_config:
        print(f"pipeline config written to {write_pipeline_config(args.get_pipeline_config, args.save_path)}")
    elif args.serve:
        if not args.pipeline:
            p.error("--serve needs --pipeline (a pipeline name or YAML file)")
        serve_pipeline(args)
    elif args.pipeline:
        if not args.input:
            p.error("--pipeline needs --input (an image, PDF, folder, URL or s3:// URI)")
        predict_pipeline(args)
    elif args.config:
        run_config(config_from_args(args, p))
    else:
        p.error("pass --pipeline with --input, --get_pipeline_config NAME, --serve --pipeline FILE, or -c CONFIG")


def write_pipeline_config(name, save_path=None):
    """PaddleX's --get_pipeline_config: a folder gets <name>.yaml; a .yaml/.yml path is the file."""
    from .pipeline import default_pipeline_yaml

    text = default_pipeline_yaml(name)
    path = save_path or "."
    if not path.endswith((".yaml", ".yml")):
        path = os.path.join(path, f"{name}.yaml")
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; remove it or pass another --save_path")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def predict_pipeline(args):
    from .pipeline import create_pipeline

    pipeline = create_pipeline(args.pipeline, device=args.device, engine=args.engine, use_hpip=args.use_hpip or None,
                               hpi_config=args.hpi_config)
    for res in pipeline.predict(args.input, target_size=args.target_size):
        res.print()
        if args.save_path:  # PaddleX's save_all: the coloured map and the JSON
            res.save_to_img(args.save_path)
            res.save_to_json(args.save_path)


def serve_pipeline(args):
    """The pipeline's model on our Ray Serve app (PaddleX's protocol, plus /predict)."""
    import dataclasses

    from .downloads import fetch_official_model
    from .infer.model_files import read_model_folder
    from .infer.options import InferenceOptions
    from .pipeline import load_pipeline_config, module_options
    from .serve import load_serve_config, serve_forever

    cfg = load_pipeline_config(args.pipeline)
    m = module_options(cfg, args.engine, None, args.use_hpip or None, args.hpi_config)
    inference = {f.name: dataclasses.asdict(m)[f.name] for f in dataclasses.fields(InferenceOptions)}
    opts = load_serve_config(model_dir=m.model_dir or fetch_official_model(m.model_name, check=read_model_folder),
                             host=args.host, port=args.port, device=args.device or cfg.device, **inference)
    serve_forever(opts, ray_address=args.address, what=f"pipeline {args.pipeline} ({opts.model_dir})")


def run_config(cfg):
    mode = cfg.Global.mode
    if mode == "check_dataset":
        from .batch import pair_checker
        from .data.check import check_from_config

        sys.exit(report_check(check_from_config(cfg, pair_checker(cfg)), cfg.Global.output))
    elif mode == "evaluate":
        from .batch import evaluate

        report_evaluation(evaluate(cfg, progress=print_progress("val samples evaluated", every_s=0)), cfg.Global.output)
    elif mode == "predict":
        from .batch import predict_bulk

        sys.exit(report_bulk(predict_bulk(cfg, progress=print_progress("images"))))
    elif mode == "train":
        from .train.ray_train import fit

        print(json.dumps(fit(cfg), indent=2))
    elif mode == "export":
        from .infer.export import export_from_config

        print(f"exported to {export_from_config(cfg)}")


def entry():
    """The `raysegment` console script."""
    run(main)


if __name__ == "__main__":
    entry()
