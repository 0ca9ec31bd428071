"""Export a checkpoint to a PaddleX-format inference folder (inference.json, .pdiparams, .yml).

    python jobs/export.py -c configs/PP-LiteSeg-T.yaml -o Export.weight_path=output/best_model \
        -o Global.output=output/inference
    # a bare .pdparams file: the model comes from Global.model, the class count from Train.num_classes
    python jobs/export.py -c configs/PP-LiteSeg-T.yaml -o Export.weight_path=model.pdparams \
        -o Train.num_classes=11 -o Global.output=output/inference
    # random weights, for pipeline checks and benchmarks only (the masks mean nothing)
    python jobs/export.py -c configs/PP-LiteSeg-T.yaml --untrained -o Train.num_classes=11 \
        -o Global.output=output/untrained_model

The folder loads in raysegment.create_model(model_dir=...) and in PaddleX's create_model.
"""

import argparse
import os


from raysegment.cli import add_config_arguments, config_from_args, run


def main(argv=None):
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), required=True)
    parser.add_argument("--untrained", action="store_true", help="export randomly initialised weights (pipeline checks only)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser, "export")
    if args.untrained == (cfg.Export.weight_path is not None):
        parser.error("pass exactly one of -o Export.weight_path=... or --untrained")

    from raysegment.infer.export import export_from_config

    out = export_from_config(cfg, untrained=args.untrained)
    print(f"exported {'UNTRAINED ' if args.untrained else ''}{cfg.Global.model or 'model'} to {os.path.abspath(out)}")


if __name__ == "__main__":
    run(main)
