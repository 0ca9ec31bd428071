"""Same weights, same scores: each of our models against PaddleSeg's published source.

    python jobs/parity.py --paddleseg-src DIR [--paddleseg-python PY] [--models NAME ...] [--size 128]

DIR is a PaddleSeg checkout (its `paddleseg/` package and `configs/`); PY a Python that can import
it (PaddleSeg's requirements in a virtualenv of their own; default: this Python). For each model:
ours is built with seeded random weights and random BatchNorm statistics and run in eval mode on a
seeded random input; its state_dict, input and output go to a temporary folder. A second process
(PY, with DIR on its path) builds PaddleSeg's model from the config that
tests/reference_keys/SUMMARY.tsv names (backbone and model `pretrained` off, the same num_classes),
loads that state_dict (every key must match), runs eval on the same input and prints the relative
max error |ours - theirs|max / |theirs|max and the share of pixels whose argmax differs.
Exit status 1 when a model's error is above --tolerance.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = os.path.join(HERE, "..", "tests", "reference_keys", "SUMMARY.tsv")


def paddleseg_configs():
    """Model name -> PaddleSeg config file name (tests/reference_keys/SUMMARY.tsv)."""
    with open(SUMMARY) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return {row[0]: row[1] for row in rows}


def run_ours(names, size, num_classes, folder):
    import paddle

    from raysegment.models import build_model

    for name in names:
        paddle.seed(0)
        layer = build_model(name, num_classes=num_classes)
        state = layer.state_dict()
        rng = np.random.default_rng(0)
        for key, value in state.items():  # BatchNorm statistics away from 0/1, so they matter
            if key.endswith("._mean"):
                value.set_value(rng.normal(0, 0.1, value.shape).astype("float32"))
            elif key.endswith("._variance"):
                value.set_value(rng.uniform(0.5, 1.5, value.shape).astype("float32"))
        layer.eval()
        x = paddle.to_tensor(rng.normal(0, 1, (1, 3, size, size)).astype("float32"))
        with paddle.no_grad():
            out = layer(x)[0].numpy()
        paddle.save(layer.state_dict(), os.path.join(folder, f"{name}.pdparams"))
        np.save(os.path.join(folder, f"{name}.input.npy"), x.numpy())
        np.save(os.path.join(folder, f"{name}.ours.npy"), out)


def _load_config(path):
    """A PaddleSeg config with its `_base_` chain merged (later files win, dicts merged key by key)."""
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f)
    base = cfg.pop("_base_", None)
    if not base:
        return cfg
    merged = _load_config(os.path.join(os.path.dirname(path), base))

    def merge(into, new):  # `_inherited_: False` in a section: it replaces the base's
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict) and value.get("_inherited_", True):
                merge(into[key], value)
            elif isinstance(value, dict):
                into[key] = {k: v for k, v in value.items() if k != "_inherited_"}
            else:
                into[key] = value
        return into

    return merge(merged, cfg)


def _build(spec):
    """{'type': Name, **args} -> PaddleSeg component (nested specs built first); no pretrained weights."""
    from paddleseg.cvlibs import manager

    spec = dict(spec)
    kind = spec.pop("type")
    if "pretrained" in spec:
        spec["pretrained"] = None
    args = {k: _build(v) if isinstance(v, dict) and "type" in v else v for k, v in spec.items()}
    for registry in (manager.MODELS, manager.BACKBONES):
        if kind in registry.components_dict:
            return registry.components_dict[kind](**args)
    raise KeyError(f"PaddleSeg has no component {kind!r}")


def run_theirs(names, src, num_classes, folder):
    import paddle

    configs = {os.path.basename(p): p for p in glob.glob(os.path.join(src, "configs", "**", "*.yml"), recursive=True)}
    wanted = paddleseg_configs()
    report = {}
    for name in names:
        model_cfg = dict(_load_config(configs[wanted[name]])["model"], num_classes=num_classes)
        layer = _build(model_cfg)
        state = paddle.load(os.path.join(folder, f"{name}.pdparams"))
        theirs_keys, ours_keys = set(layer.state_dict()), set(state)
        if theirs_keys != ours_keys:
            raise SystemExit(f"{name}: state_dict keys differ: only PaddleSeg's {sorted(theirs_keys - ours_keys)[:5]}, "
                             f"only ours {sorted(ours_keys - theirs_keys)[:5]}")
        layer.set_state_dict(state)
        layer.eval()
        with paddle.no_grad():
            out = layer(paddle.to_tensor(np.load(os.path.join(folder, f"{name}.input.npy"))))[0].numpy()
        ours = np.load(os.path.join(folder, f"{name}.ours.npy"))
        if ours.shape != out.shape:
            raise SystemExit(f"{name}: output shapes differ: ours {ours.shape}, PaddleSeg's {out.shape}")
        report[name] = {
            "relative_max_error": float(np.abs(ours - out).max() / np.abs(out).max()),
            "argmax_differs": float((ours.argmax(1) != out.argmax(1)).mean()),
            "shape": list(out.shape),
        }
    print(json.dumps(report))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paddleseg-src", required=True, help="a PaddleSeg checkout (paddleseg/ and configs/)")
    parser.add_argument("--paddleseg-python", default=sys.executable, help="a Python that can import PaddleSeg")
    parser.add_argument("--models", nargs="+", default=None, help="model names (default: all 20)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--theirs", metavar="FOLDER", help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args(argv)
    known = paddleseg_configs()
    names = args.models or list(known)
    if args.theirs:
        return run_theirs(names, args.paddleseg_src, args.num_classes, args.theirs)
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; valid: {', '.join(known)}")
    if not all(os.path.isdir(os.path.join(args.paddleseg_src, d)) for d in ("paddleseg", "configs")):
        parser.error(f"--paddleseg-src {args.paddleseg_src!r} is not a PaddleSeg checkout (no paddleseg/ and configs/ in it); "
                     "git clone https://github.com/PaddlePaddle/PaddleSeg")
    with tempfile.TemporaryDirectory() as folder:
        run_ours(names, args.size, args.num_classes, folder)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.paddleseg_src))
        done = subprocess.run([args.paddleseg_python, os.path.abspath(__file__), "--theirs", folder,
                               "--paddleseg-src", args.paddleseg_src, "--num-classes", str(args.num_classes),
                               "--models", *names], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"PaddleSeg's side failed:\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
    worst = 0.0
    print(f"{'model':22} {'relative max error':>19} {'argmax differs':>15}")
    for name, r in report.items():
        worst = max(worst, r["relative_max_error"])
        print(f"{name:22} {r['relative_max_error']:19.2e} {r['argmax_differs']:15.4%}")
    return 1 if worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
